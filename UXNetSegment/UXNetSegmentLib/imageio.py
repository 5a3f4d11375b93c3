"""Read and validate input volumes; write segmentations atomically on the input's own grid."""
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import SimpleITK as sitk

from .catalogue import ModelSpec
from .errors import UXNetError

LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEG_SUFFIX = ".seg.nrrd"
SLICER_CONTEXT = "UXNetSegment"  # the context of Resources/Terminology/UXNetSegment.term.json
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def _read_any(path: Path) -> sitk.Image:
    if path.is_dir():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
        if not files:
            raise UXNetError(f"folder {path} holds no DICOM series; give a volume file or a DICOM series folder")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute()
    return sitk.ReadImage(str(path))


def read_image(path) -> sitk.Image:
    """A validated 3D scalar float32 volume; non-finite voxels replaced by the lowest finite value."""
    path = Path(path)
    if not path.exists():
        raise UXNetError(f"input {path} does not exist; check the path")
    try:
        image = _read_any(path)
    except RuntimeError:
        raise UXNetError(f"input {path.name} is not an image that SimpleITK can read; "
                         f"give a NRRD, NIfTI, MHA or DICOM volume") from None
    return validate_image(image, path.name)


def validate_image(image: sitk.Image, name: str = "input") -> sitk.Image:
    size = image.GetSize()
    comps = image.GetNumberOfComponentsPerPixel()
    if comps > 1:
        raise UXNetError(f"{name} is an RGB/vector image ({comps} components per voxel); "
                         f"convert it to a single grey-scale 3D volume first")
    if image.GetDimension() == 4:
        raise UXNetError(f"{name} is a 4D series ({size[3]} frames of {size[0]}x{size[1]}x{size[2]}); "
                         f"only one 3D volume is supported: extract one frame (e.g. frame 0) and segment that")
    if image.GetDimension() != 3 or min(size) < 2:
        raise UXNetError(f"{name} is {'x'.join(map(str, size))}: not a 3D volume; "
                         f"3D UX-Net needs a 3D scan with at least 2 voxels along every axis")
    image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.any():
        raise UXNetError(f"{name} holds no finite values (all NaN/inf); re-export the volume from its source")
    if not finite.all():
        fixed = np.where(finite, array, array[finite].min()).astype(np.float32)
        clean = sitk.GetImageFromArray(fixed)
        clean.CopyInformation(image)
        image = clean
    return image


def output_kind(path) -> str:
    """``"seg"`` for ``.seg.nrrd``, ``"labelmap"`` for the other supported suffixes."""
    name = str(path).lower()
    if name.endswith(SEG_SUFFIX):
        return "seg"
    if name.endswith(LABELMAP_SUFFIXES):
        return "labelmap"
    raise UXNetError(f"output {Path(path).name} has an unknown type; use .seg.nrrd, "
                     f"or a labelmap {', '.join(LABELMAP_SUFFIXES)}")


def sidecar_path(path) -> Path:
    """``out.nii.gz`` -> ``out.labels.json``: the label-name sidecar written beside a labelmap."""
    path = Path(path)
    name = path.name
    for suffix in (SEG_SUFFIX,) + LABELMAP_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".labels.json")


def check_writable(path) -> Path:
    """Fail early (before any long computation) if ``path`` cannot be written."""
    path = Path(path)
    output_kind(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UXNetError(f"output folder {folder} does not exist; create it or choose another -o path")
    if path.is_dir():
        raise UXNetError(f"output {path} is a folder; give a file name such as {path / 'result.seg.nrrd'}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".uxnet-probe-"):
            pass
    except OSError:
        raise UXNetError(f"output folder {folder} is not writable; choose another -o path") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UXNetError(f"output {path} exists and is read-only; choose another -o path") from None
    return path


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename onto ``path`` only on success."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".part" + suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def terminology(label) -> dict:
    """slicerio's terminology dict for a catalogue :class:`Label`."""
    term = {"contextName": SLICER_CONTEXT, "category": list(label.category),
            "type": list(label.type or ("99UXNET", f"label-{label.value}", label.name))}
    if label.modifier:
        term["typeModifier"] = list(label.modifier)
    term["anatomicContextName"] = ANATOMIC_CONTEXT
    return term


def _ijk_to_lps(image: sitk.Image) -> np.ndarray:
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = direction * np.array(image.GetSpacing())[None, :]
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def write_seg_nrrd(labels: sitk.Image, spec: ModelSpec, path) -> None:
    """A Slicer ``.seg.nrrd``: one shared layer, every model label a segment (empty ones too)."""
    import slicerio

    voxels = np.ascontiguousarray(sitk.GetArrayFromImage(labels).transpose(2, 1, 0).astype(np.uint8))
    segments = []
    for value, label in sorted(spec.labels.items()):
        segments.append({
            "id": f"Segment_{value}", "labelValue": value, "layer": 0, "name": label.name,
            "nameAutoGenerated": False, "color": [c / 255.0 for c in label.color], "colorAutoGenerated": False,
            "terminology": terminology(label), "status": "notstarted",
            "extent": [0, voxels.shape[0] - 1, 0, voxels.shape[1] - 1, 0, voxels.shape[2] - 1],
        })
    segmentation = {"voxels": voxels, "ijkToLPS": _ijk_to_lps(labels), "segments": segments,
                    "encoding": "gzip", "masterRepresentation": "Binary labelmap",
                    "containedRepresentationNames": ["Binary labelmap"], "referenceImageExtentOffset": [0, 0, 0]}
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)


def label_names(spec: ModelSpec) -> Dict[str, str]:
    return {str(v): lab.name for v, lab in sorted(spec.labels.items())}


def write_labelmap(labels: sitk.Image, spec: ModelSpec, path) -> None:
    """A labelmap on the input grid plus ``<name>.labels.json`` (value -> name, colour, codes)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(labels, str(tmp), True)
        meta = {"model": spec.name, "labels": label_names(spec),
                "segments": [{"value": v, "name": lab.name, "color": list(lab.color), **terminology(lab)}
                             for v, lab in sorted(spec.labels.items())]}
        with atomic_path(sidecar_path(path)) as side:
            side.write_text(json.dumps(meta, indent=1))


def write_output(labels: sitk.Image, spec: ModelSpec, path) -> Path:
    path = check_writable(path)
    if output_kind(path) == "seg":
        write_seg_nrrd(labels, spec, path)
    else:
        write_labelmap(labels, spec, path)
    return path


def write_volume(image: sitk.Image, path) -> Path:
    """Write any float volume (e.g. the uncertainty map) atomically."""
    path = Path(path)
    if not str(path).lower().endswith(LABELMAP_SUFFIXES) or output_kind(path) == "seg":
        raise UXNetError(f"{path.name}: use .nrrd, .nii.gz, .nii or .mha for volumes")
    check_writable(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return path
