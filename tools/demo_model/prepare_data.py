"""Training data for the demo brain-tissue model, read from the installed ``nilearn`` package.

Source: the MNI ICBM152 2009a (symmetric, non-linear) T1 template and its grey- and white-matter
probability maps, as shipped in ``nilearn/datasets/data/`` (197x233x189 voxels, 1 mm, RAS). The
shipped T1 is brain-extracted: voxels outside the template's brain mask are exactly 0.

Labels (0 background, 1 cerebrospinal fluid, 2 grey matter, 3 white matter) come from the
probability maps by argmax:

* ``p_gm``, ``p_wm``: the package's maps scaled from 0..255 to 0..1;
* ``p_csf = clip(1 - p_gm - p_wm, 0, 1)`` inside the brain mask (``T1 > 0``): the ICBM152 CSF map
  itself is not in the package, and inside the intracranial mask every voxel that is neither GM
  nor WM is CSF (ventricles, sulci, the subarachnoid space the mask keeps);
* ``p_background = 1`` outside the mask, 0 inside.

The maps are resampled to the model's 2 mm grid with the same MONAI ``Spacing`` (bilinear) the
engine applies at inference, and the labels are the argmax of the resampled probabilities.

Run ``python tools/demo_model/prepare_data.py --out DIR`` to write the 2 mm image and labels as
NIfTI for inspection (training calls :func:`load_training_pair` directly; nothing is cached).
"""
import argparse
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

SPACING_MM = (2.0, 2.0, 2.0)
LABEL_NAMES: Dict[int, str] = {1: "cerebrospinal fluid", 2: "grey matter", 3: "white matter"}
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def nilearn_data_dir() -> Path:
    """``nilearn/datasets/data`` of the installed package (where the ICBM152 files live)."""
    import nilearn.datasets

    folder = Path(nilearn.datasets.__file__).resolve().parent / "data"
    missing = [TEMPLATE.format(k) for k in ("t1", "gm", "wm") if not (folder / TEMPLATE.format(k)).is_file()]
    if missing:
        raise SystemExit(f"nilearn at {folder} lacks {', '.join(missing)}; install nilearn==0.14.1")
    return folder


def load_template_1mm() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t1, probs, affine)`` at 1 mm: t1 ``(X, Y, Z)`` float32 0..255, probs ``(4, X, Y, Z)``
    float32 (background, CSF, GM, WM; sums to 1), affine 4x4 voxel->RAS mm."""
    import nibabel as nib

    folder = nilearn_data_dir()
    imgs = {k: nib.load(str(folder / TEMPLATE.format(k))) for k in ("t1", "gm", "wm")}
    affine = imgs["t1"].affine
    for k, img in imgs.items():
        if not np.allclose(img.affine, affine) or img.shape != imgs["t1"].shape:
            raise SystemExit(f"nilearn template '{k}' is not on the T1 grid; the package files are inconsistent")
    t1 = np.asarray(imgs["t1"].dataobj, dtype=np.float32)
    gm = np.asarray(imgs["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(imgs["wm"].dataobj, dtype=np.float32) / 255.0
    brain = t1 > 0
    gm, wm = gm * brain, wm * brain
    total = gm + wm
    over = total > 1.0  # rounding of the 8-bit maps can push the sum a little over 1
    gm[over], wm[over] = gm[over] / total[over], wm[over] / total[over]
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    background = (~brain).astype(np.float32)
    probs = np.stack([background, csf, gm, wm]).astype(np.float32)
    return t1, probs, affine


def load_training_pair(spacing=SPACING_MM) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image, probs, labels, affine)`` on the model grid (RAS, ``spacing`` mm).

    image ``(X, Y, Z)`` float32 in the template's raw 0..255 units (intensity scaling is left to
    training so it sees the same percentile normalisation as inference); probs ``(4, X, Y, Z)``
    float32 (background, CSF, GM, WM); labels ``(X, Y, Z)`` uint8 0..3 = argmax of probs;
    affine 4x4 voxel->RAS mm.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    t1, probs, affine = load_template_1mm()
    aff = torch.as_tensor(affine, dtype=torch.float64)
    stacked = MetaTensor(torch.from_numpy(np.concatenate([t1[None], probs])), affine=aff)
    stacked = Orientation(axcodes="RAS", labels=None)(Spacing(pixdim=spacing, mode="bilinear")(stacked))
    arr = stacked.numpy()
    image = np.clip(arr[0], 0, None).astype(np.float32)
    probs = np.clip(arr[1:], 0, 1).astype(np.float32)
    labels = np.argmax(probs, axis=0).astype(np.uint8)
    return image, probs, labels, np.asarray(stacked.affine, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for template_2mm.nii.gz and labels_2mm.nii.gz")
    args = parser.parse_args()
    import nibabel as nib

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image, _, labels, affine = load_training_pair()
    nib.save(nib.Nifti1Image(image, affine), str(out / "template_2mm.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(out / "labels_2mm.nii.gz"))
    vox_ml = float(np.prod(SPACING_MM)) / 1000.0
    print(f"grid {image.shape} at {SPACING_MM} mm; " + ", ".join(
        f"{name}: {(labels == v).sum() * vox_ml:.0f} ml" for v, name in LABEL_NAMES.items()))


if __name__ == "__main__":
    main()
