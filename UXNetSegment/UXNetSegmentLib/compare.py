"""Compare a predicted segmentation with a reference: Dice, HD95, mean surface distance and volumes.

Inputs are Slicer segmentations (``.seg.nrrd``, read with slicerio: names, label values, layers and
terminology) or labelmaps (``.nii.gz``/``.nii``/``.nrrd``/``.mha``) with an optional
``<file>.labels.json`` sidecar (``{"1": "liver"}`` or ``{"1": {"name": "liver", "terminology": ...}}``).

* **Geometry.** All metrics live on the prediction's grid. When the reference is on another grid it is
  resampled onto the prediction's grid with nearest neighbour in physical space (identity transform).
* **Matching.** Segments are paired by terminology code (SNOMED type + modifier) when both sides carry a
  specific one, then by normalised name, then by label value. Each row says which rule paired it
  (``"terminology"``, ``"name"``, ``"value"``) or ``"unmatched"`` when the other side has no such segment.
* **Metrics** (all in mm / ml, honouring anisotropic spacing):

  - Dice ``2|P∩R| / (|P| + |R|)``;
  - surfaces are the boundary voxels of each mask (voxels with a face neighbour outside the mask; the
    image border counts as outside), distances go from voxel centre to voxel centre;
  - HD95 is ``max(p95(d(P→R)), p95(d(R→P)))``, MSD the mean of both directed distance sets together
    (the symmetric average surface distance);
  - volumes are ``voxel count × voxel volume / 1000`` (ml), relative volume difference ``(Vp − Vr) / Vr``.

  These definitions are those of MONAI's ``compute_dice``, ``compute_hausdorff_distance(percentile=95)``
  and ``compute_average_surface_distance(symmetric=True)``; the distances here come from SimpleITK's exact
  Maurer distance transform on a per-segment bounding box, so memory stays proportional to the segment.
* **Empty segments are explicit.** Both empty: Dice 1, distances 0, status ``"both empty"``. One empty:
  Dice 0, distances ``inf``, status ``"missing in prediction"`` or ``"missing in reference"`` (an unmatched
  segment is compared with an empty mask). No metric is ever NaN.
"""
import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import UXNetError

# Slicer gives every new segment this generic "Tissue" type; it says nothing about which structure it is.
GENERIC_TISSUE_CODE = "85756007"
# The engine's private scheme for labels without a SNOMED code ("label-<value>"): the value in disguise.
PRIVATE_SCHEMES = ("99UXNET",)

LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

Box = Tuple[slice, slice, slice]


# ----------------------------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class SegmentInfo:
    """One segment: where its voxels are (``layer``, ``value``) and what it is (name, terminology codes).

    ``type_code``/``modifier_code`` are ``(scheme, code)`` pairs, e.g. ``("SCT", "10200004")`` for liver.
    ``named`` is False when the name was made up from the label value (labelmap without sidecar).
    ``color`` is (r, g, b) 0-255 when the file gives one. ``label_value`` is the segment's own label value
    when ``value`` is only its value in an exported array (Slicer's export numbers segments 1..N).
    """

    name: str
    value: int
    layer: int = 0
    type_code: Optional[Tuple[str, str]] = None
    modifier_code: Optional[Tuple[str, str]] = None
    named: bool = True
    segment_id: str = ""
    color: Optional[Tuple[int, int, int]] = None
    label_value: Optional[int] = None

    @property
    def match_value(self) -> int:
        """The value used to match by value and shown in reports: ``label_value`` when the arrays were
        renumbered on export (Slicer), else ``value``."""
        return self.value if self.label_value is None else self.label_value

    def terminology_key(self) -> Optional[Tuple[Tuple[str, str], Optional[Tuple[str, str]]]]:
        """``(type, modifier)`` codes, or None when absent, Slicer's generic "Tissue" placeholder or the
        engine's private per-value code."""
        if not self.type_code or not self.type_code[1] or self.type_code[1] == GENERIC_TISSUE_CODE \
                or self.type_code[0] in PRIVATE_SCHEMES:
            return None
        return (self.type_code, self.modifier_code)


@dataclass
class LabelSet:
    """A segmentation as integer label layers on one grid plus the segments they hold.

    Most segmentations have one layer; overlapping Slicer segments need several. Each layer is a
    3D SimpleITK image of an integer pixel type, all on the same grid.
    """

    layers: List[sitk.Image]
    segments: List[SegmentInfo]
    source: str = ""


@dataclass
class ComparisonRow:
    """Metrics of one matched segment pair. Distances in mm, volumes in ml, ``rel_volume_diff`` a fraction."""

    segment: str
    reference_segment: str
    matched_by: str
    status: str
    dice: float
    hd95_mm: float
    msd_mm: float
    volume_pred_ml: float
    volume_ref_ml: float
    rel_volume_diff: float
    pred_value: Optional[int] = None
    ref_value: Optional[int] = None


CSV_COLUMNS = ["segment", "reference_segment", "matched_by", "status", "dice", "hd95_mm", "msd_mm",
               "volume_pred_ml", "volume_ref_ml", "rel_volume_diff", "pred_value", "ref_value"]


@dataclass
class ComparisonReport:
    """All rows of one comparison, in prediction order (unmatched reference segments last)."""

    rows: List[ComparisonRow] = field(default_factory=list)
    prediction: str = ""
    reference: str = ""
    resampled: bool = False

    def row(self, name: str) -> ComparisonRow:
        """The row whose prediction or reference segment has this (normalised) name."""
        key = normalise_name(name)
        for r in self.rows:
            if normalise_name(r.segment) == key or normalise_name(r.reference_segment) == key:
                return r
        raise KeyError(name)

    def to_csv(self, path=None) -> str:
        """The rows as CSV text (floats at full precision, ``inf`` where a segment is missing);
        written atomically to ``path`` when given."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in self.rows:
            writer.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in CSV_COLUMNS])
        text = buf.getvalue()
        if path is not None:
            write_text_atomic(Path(path), text)
        return text

    def to_table(self) -> str:
        """A fixed-width text table for the terminal."""
        head = ["segment", "matched by", "Dice", "HD95 mm", "MSD mm", "pred ml", "ref ml", "vol diff", "status"]
        lines = []
        for r in self.rows:
            name = r.segment if r.segment == r.reference_segment or not r.reference_segment else \
                (f"{r.segment} / {r.reference_segment}" if r.segment else r.reference_segment)
            lines.append([name, r.matched_by, f"{r.dice:.3f}", _fmt(r.hd95_mm), _fmt(r.msd_mm),
                          f"{r.volume_pred_ml:.2f}", f"{r.volume_ref_ml:.2f}", _fmt_pct(r.rel_volume_diff),
                          r.status])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
        out = []
        for i, cells in enumerate([head] + lines):
            out.append("  ".join(c.ljust(w) if j in (0, 1, 8) else c.rjust(w)
                                 for j, (c, w) in enumerate(zip(cells, widths))).rstrip())
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _fmt_pct(value: float) -> str:
    return ("+inf" if value > 0 else "-inf") if math.isinf(value) else f"{100.0 * value:+.1f}%"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from .imageio import atomic_path
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            fh.write(text)


# ----------------------------------------------------------------------------------------------------------------
# Metric core (numpy arrays in (k, j, i) order; spacing in SimpleITK's (i, j, k) = (x, y, z) order, mm)


def label_boxes(labels: np.ndarray) -> Tuple[Dict[int, Box], Dict[int, int]]:
    """Bounding box (as slices) and voxel count of every non-zero value of a (k, j, i) integer array.

    Works slice by slice along each axis, so the extra memory is one slice plus a (values x slices) table.
    """
    if labels.ndim != 3:
        raise UXNetError(f"a label volume must be 3D, got shape {labels.shape}; give a 3D segmentation")
    if labels.size and labels.min() < 0:
        raise UXNetError("label values must be non-negative integers; fix the segmentation's values")
    top = int(labels.max()) + 1 if labels.size else 1
    presence = []
    counts = np.zeros(top, dtype=np.int64)
    for axis in range(3):
        table = np.zeros((top, labels.shape[axis]), dtype=bool)
        for idx in range(labels.shape[axis]):
            plane = np.take(labels, idx, axis=axis)
            hist = np.bincount(plane.ravel().astype(np.int64, copy=False), minlength=top)
            table[:, idx] = hist > 0
            if axis == 0:
                counts += hist
        presence.append(table)
    boxes: Dict[int, Box] = {}
    voxels: Dict[int, int] = {}
    for value in np.nonzero(counts)[0]:
        if value == 0:
            continue
        spans = []
        for axis in range(3):
            where = np.nonzero(presence[axis][value])[0]
            spans.append(slice(int(where[0]), int(where[-1]) + 1))
        boxes[int(value)] = (spans[0], spans[1], spans[2])
        voxels[int(value)] = int(counts[value])
    return boxes, voxels


def union_box(a: Optional[Box], b: Optional[Box]) -> Optional[Box]:
    """Smallest box holding both (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore


def boundary_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of a boolean (k, j, i) mask with at least one face neighbour outside it (outside the array
    counts as outside): ``mask & ~erode(mask)`` with the 6-connected cross."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    n0, n1, n2 = mask.shape
    inner &= padded[:-2, 1:-1, 1:-1]
    inner &= padded[2:, 1:-1, 1:-1]
    inner &= padded[1:-1, :-2, 1:-1]
    inner &= padded[1:-1, 2:, 1:-1]
    inner &= padded[1:-1, 1:-1, :-2]
    inner &= padded[1:-1, 1:-1, 2:]
    return mask & ~inner


def distance_to(target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) from every voxel centre of a (k, j, i) grid to the nearest ``True`` voxel
    centre of ``target`` (exact Maurer transform; ``spacing`` in (i, j, k) order). Zero on ``target``."""
    image = sitk.GetImageFromArray(target.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing])
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True, backgroundValue=0.0)
    out = np.abs(sitk.GetArrayFromImage(dist)).astype(np.float64)
    out[target] = 0.0
    return out


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Tuple[float, float]:
    """HD95 and symmetric mean surface distance (mm) between two non-empty boolean (k, j, i) masks."""
    edge_p = boundary_voxels(pred)
    edge_r = boundary_voxels(ref)
    d_pr = distance_to(edge_r, spacing)[edge_p]
    d_rp = distance_to(edge_p, spacing)[edge_r]
    hd95 = max(float(np.percentile(d_pr, 95)), float(np.percentile(d_rp, 95)))
    msd = float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size))
    return hd95, msd


def status_of(n_pred: int, n_ref: int) -> str:
    if n_pred == 0 and n_ref == 0:
        return "both empty"
    if n_pred == 0:
        return "missing in prediction"
    if n_ref == 0:
        return "missing in reference"
    return "ok"


def mask_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """Dice, HD95, MSD (mm), volumes (ml) and relative volume difference of two boolean (k, j, i) masks on
    one grid (``spacing`` in (i, j, k) order, mm). See the module docstring for empty masks."""
    if pred.shape != ref.shape:
        raise UXNetError(f"masks differ in shape {pred.shape} vs {ref.shape}; resample onto one grid first")
    n_p, n_r = int(pred.sum()), int(ref.sum())
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    status = status_of(n_p, n_r)
    out = {"status": status, "volume_pred_ml": n_p * voxel_ml, "volume_ref_ml": n_r * voxel_ml}
    if status == "both empty":
        out.update(dice=1.0, hd95_mm=0.0, msd_mm=0.0, rel_volume_diff=0.0)
    elif status != "ok":
        out.update(dice=0.0, hd95_mm=math.inf, msd_mm=math.inf,
                   rel_volume_diff=-1.0 if n_p == 0 else math.inf)
    else:
        inter = int(np.count_nonzero(pred & ref))
        hd95, msd = surface_distances(pred, ref, spacing)
        out.update(dice=2.0 * inter / (n_p + n_r), hd95_mm=hd95, msd_mm=msd,
                   rel_volume_diff=(n_p - n_r) / n_r)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Matching


def normalise_name(name: str) -> str:
    """Lower case, with ``_``/``-``/runs of spaces folded into one space: "Left_Kidney" == "left kidney"."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower()).strip()


def match_segments(pred: Sequence[SegmentInfo], ref: Sequence[SegmentInfo]
                   ) -> List[Tuple[Optional[SegmentInfo], Optional[SegmentInfo], str]]:
    """Pair segments: terminology code, then name, then label value; a key that is not unique on either side
    is not used. Returns ``(pred, ref, matched_by)`` in prediction order, unmatched reference segments last
    (``None`` on the missing side, ``matched_by == "unmatched"``)."""
    pairs: Dict[int, Tuple[int, str]] = {}
    used_ref = set()
    rules = [("terminology", lambda s: s.terminology_key()),
             ("name", lambda s: normalise_name(s.name) if s.named else None),
             ("value", lambda s: s.match_value)]
    for rule, key in rules:
        free_p = [i for i in range(len(pred)) if i not in pairs]
        free_r = [i for i in range(len(ref)) if i not in used_ref]
        index_p = _unique_index(free_p, [key(pred[i]) for i in free_p])
        index_r = _unique_index(free_r, [key(ref[i]) for i in free_r])
        for k, i in index_p.items():
            if k in index_r:
                pairs[i] = (index_r[k], rule)
                used_ref.add(index_r[k])
    out: List[Tuple[Optional[SegmentInfo], Optional[SegmentInfo], str]] = []
    for i, seg in enumerate(pred):
        if i in pairs:
            out.append((seg, ref[pairs[i][0]], pairs[i][1]))
        else:
            out.append((seg, None, "unmatched"))
    out += [(None, ref[j], "unmatched") for j in range(len(ref)) if j not in used_ref]
    return out


def _unique_index(indices: List[int], keys: list) -> dict:
    seen: Dict[object, Optional[int]] = {}
    for i, k in zip(indices, keys):
        if k is None:
            continue
        seen[k] = None if k in seen else i
    return {k: i for k, i in seen.items() if i is not None}


# ----------------------------------------------------------------------------------------------------------------
# Comparing label layers


def compare_label_arrays(pred_layers: Sequence[np.ndarray], pred_segments: Sequence[SegmentInfo],
                         ref_layers: Sequence[np.ndarray], ref_segments: Sequence[SegmentInfo],
                         spacing: Sequence[float]) -> ComparisonReport:
    """Compare two segmentations given as integer label layers (each (k, j, i), all on ONE grid).

    ``spacing`` is the grid's voxel size in (i, j, k) order (mm). Work is done per segment pair on the
    bounding box of the pair, so peak memory is a few copies of the largest segment's box.
    """
    shapes = {a.shape for a in list(pred_layers) + list(ref_layers)}
    if len(shapes) > 1:
        raise UXNetError(f"label layers differ in shape {sorted(shapes)}; resample the reference onto the "
                         f"prediction's grid first")
    pred_info = [label_boxes(a) for a in pred_layers]
    ref_info = [label_boxes(a) for a in ref_layers]
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    report = ComparisonReport()
    for p, r, rule in match_segments(pred_segments, ref_segments):
        box_p = pred_info[p.layer][0].get(p.value) if p is not None else None
        box_r = ref_info[r.layer][0].get(r.value) if r is not None else None
        box = union_box(box_p, box_r)
        if box is None:
            metrics = mask_metrics(np.zeros((1, 1, 1), bool), np.zeros((1, 1, 1), bool), spacing)
        else:
            pm = pred_layers[p.layer][box] == p.value if box_p is not None else np.zeros(_box_shape(box), bool)
            rm = ref_layers[r.layer][box] == r.value if box_r is not None else np.zeros(_box_shape(box), bool)
            metrics = mask_metrics(pm, rm, spacing)
        metrics["volume_pred_ml"] = (pred_info[p.layer][1].get(p.value, 0) if p is not None else 0) * voxel_ml
        metrics["volume_ref_ml"] = (ref_info[r.layer][1].get(r.value, 0) if r is not None else 0) * voxel_ml
        report.rows.append(ComparisonRow(
            segment=p.name if p is not None else "", reference_segment=r.name if r is not None else "",
            matched_by=rule, pred_value=p.match_value if p is not None else None,
            ref_value=r.match_value if r is not None else None, **metrics))
    return report


def _box_shape(box: Box) -> Tuple[int, int, int]:
    return tuple(s.stop - s.start for s in box)  # type: ignore


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when both images have the same size, and origin/spacing/direction within ``tol`` (mm or cosine)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def resample_nearest(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """``image`` on ``grid``'s voxels by nearest neighbour in physical space (outside -> 0)."""
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())


def compare_label_sets(pred: LabelSet, ref: LabelSet) -> ComparisonReport:
    """Compare two :class:`LabelSet`; the reference is resampled onto the prediction's grid when needed."""
    grid = pred.layers[0]
    resampled = False
    ref_layers = list(ref.layers)
    if not same_grid(grid, ref_layers[0]):
        had_labels = any(_any_nonzero(layer) for layer in ref_layers)
        ref_layers = [resample_nearest(layer, grid) for layer in ref_layers]
        resampled = True
        if had_labels and not any(_any_nonzero(layer) for layer in ref_layers):
            raise UXNetError(f"the reference {ref.source or ''} does not overlap the prediction in physical "
                             f"space; check that both segment the same scan".replace("  ", " "))
    report = compare_label_arrays([sitk.GetArrayViewFromImage(x) for x in pred.layers], pred.segments,
                                  [sitk.GetArrayViewFromImage(x) for x in ref_layers], ref.segments,
                                  grid.GetSpacing())
    report.prediction, report.reference, report.resampled = pred.source, ref.source, resampled
    return report


def _any_nonzero(image: sitk.Image) -> bool:
    return bool(np.any(sitk.GetArrayViewFromImage(image)))


# ----------------------------------------------------------------------------------------------------------------
# Reading files


def parse_terminology(term) -> Tuple[Optional[Tuple[str, str]], Optional[Tuple[str, str]]]:
    """``(type, modifier)`` code pairs from a slicerio terminology dict, a catalogue-style dict
    (``type``/``modifier`` triplets) or a Slicer terminology entry string (``ctx~cat~type~modifier~...``)."""
    if not term:
        return None, None
    if isinstance(term, str):
        parts = term.split("~")
        if len(parts) < 3:
            return None, None
        typ = parts[2].split("^")
        mod = parts[3].split("^") if len(parts) > 3 else []
        term = {"type": typ, "typeModifier": mod}
    typ = term.get("type")
    mod = term.get("typeModifier", term.get("modifier"))
    t = (str(typ[0]), str(typ[1])) if typ and len(typ) >= 2 and typ[1] else None
    m = (str(mod[0]), str(mod[1])) if mod and len(mod) >= 2 and mod[1] else None
    return t, m


def _is_segmentation_file(path: Path) -> bool:
    return path.name.lower().endswith(".seg.nrrd")


def read_label_set(path) -> LabelSet:
    """Read a ``.seg.nrrd`` or a labelmap (+ optional ``.labels.json`` sidecar) as a :class:`LabelSet`."""
    path = Path(path)
    if not path.is_file():
        raise UXNetError(f"segmentation {path} does not exist; give a .seg.nrrd or labelmap file")
    if _is_segmentation_file(path):
        return _read_seg_nrrd(path)
    if not path.name.lower().endswith(LABELMAP_SUFFIXES):
        raise UXNetError(f"{path.name} is not a segmentation file; give a .seg.nrrd or a labelmap "
                         f"({', '.join(LABELMAP_SUFFIXES)})")
    return _read_labelmap(path)


def _read_seg_nrrd(path: Path) -> LabelSet:
    import slicerio
    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as exc:  # noqa: BLE001 - slicerio raises many types for a bad file
        raise UXNetError(f"cannot read segmentation {path} ({exc}); save it again from Slicer") from None
    voxels = np.asarray(seg["voxels"])
    stack = voxels[None] if voxels.ndim == 3 else voxels
    if stack.ndim != 4:
        raise UXNetError(f"segmentation {path} has {voxels.ndim} dimensions; only 3D segmentations are supported")
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing
    layers = []
    for layer in stack:
        data = layer.transpose(2, 1, 0)
        if not np.issubdtype(data.dtype, np.integer):
            data = data.astype(np.int32)
        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        image.SetSpacing(spacing.tolist())
        image.SetOrigin(ijk_to_lps[:3, 3].tolist())
        image.SetDirection(direction.flatten().tolist())
        layers.append(image)
    segments = []
    for s in seg["segments"]:
        t, m = parse_terminology(s.get("terminology"))
        colour = s.get("color")
        segments.append(SegmentInfo(name=str(s.get("name", s.get("id", ""))), value=int(s.get("labelValue", 1)),
                                    layer=int(s.get("layer", 0)), type_code=t, modifier_code=m,
                                    segment_id=str(s.get("id", "")),
                                    color=tuple(int(round(255 * float(c))) for c in colour[:3]) if colour else None))
    return LabelSet(layers=layers, segments=segments, source=str(path))


def sidecar_candidates(path: Path) -> List[Path]:
    """Where a labelmap's label table may be: ``out.labels.json`` (what the engine writes for ``out.nii.gz``)
    or ``out.nii.gz.labels.json``."""
    name = path.name
    for suffix in LABELMAP_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return [path.with_name(name + ".labels.json"), Path(str(path) + ".labels.json")]


def read_sidecar(sidecar: Path) -> List[SegmentInfo]:
    """Segments from a label table. Accepted forms: ``{"1": "liver"}``, ``{"1": {"name": ..., "terminology":
    ...}}`` or the engine's ``{"labels": {...}, "segments": [{"value", "name", "color", "type", ...}]}``."""
    try:
        table = json.loads(sidecar.read_text())
    except ValueError as exc:
        raise UXNetError(f"label table {sidecar} is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(table, dict):
        raise UXNetError(f"label table {sidecar} must be a JSON object like {{\"1\": \"liver\"}}; fix or delete it")
    entries: List[Tuple[int, dict]] = []
    if isinstance(table.get("segments"), list):
        for seg in table["segments"]:
            entries.append((int(seg["value"]), dict(seg)))
    else:
        names = table.get("labels", table)
        for key, raw in names.items():
            if str(key).isdigit():
                entries.append((int(key), {"name": raw} if isinstance(raw, str) else dict(raw)))
    segments = []
    for value, entry in sorted(entries, key=lambda e: e[0]):
        if value == 0:
            continue
        t, m = parse_terminology(entry.get("terminology", entry if "type" in entry else None))
        colour = entry.get("color")
        segments.append(SegmentInfo(name=str(entry.get("name", f"label {value}")), value=value, type_code=t,
                                    modifier_code=m, named="name" in entry,
                                    color=tuple(int(c) for c in colour[:3]) if colour else None))
    return segments


def _read_labelmap(path: Path) -> LabelSet:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise UXNetError(f"cannot read labelmap {path} ({str(exc).strip().splitlines()[-1]}); "
                         f"give a .nii.gz/.nrrd/.mha labelmap") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise UXNetError(f"labelmap {path} must be a 3D single-component image; export one label volume")
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise UXNetError(f"labelmap {path} has non-integer values; give a label image, not an intensity image")
        image = sitk.Cast(image, sitk.sitkInt32)
    _, counts = label_boxes(sitk.GetArrayViewFromImage(image))
    sidecar = next((p for p in sidecar_candidates(path) if p.is_file()), None)
    segments = read_sidecar(sidecar) if sidecar is not None else []
    known = {s.value for s in segments}
    for value in sorted(counts):
        if value not in known:
            segments.append(SegmentInfo(name=f"label {value}", value=value, named=False))
    return LabelSet(layers=[image], segments=segments, source=str(path))


def compare_files(prediction, reference) -> ComparisonReport:
    """Compare a predicted segmentation file with a reference file (see module docstring)."""
    return compare_label_sets(read_label_set(prediction), read_label_set(reference))


# ----------------------------------------------------------------------------------------------------------------
# CLI (``uxnet-segment compare``; the parser lives in cli.py)


def run_compare_command(args) -> None:
    """Body of ``uxnet-segment compare``: print the table, then write the requested CSV/plot/overlay."""
    if args.overlay and not args.volume:
        raise UXNetError("--overlay needs the image to draw on; add --volume VOLUME")
    report = compare_files(args.prediction, args.reference)
    print(report.to_table())
    if report.resampled:
        print("(reference resampled onto the prediction's grid, nearest neighbour)")
    if args.csv:
        report.to_csv(args.csv)
    if args.plot:
        from .compare_plot import plot_report
        plot_report(report, args.plot)
    if args.overlay:
        render_overlay(args.prediction, args.reference, args.volume, args.overlay)


def render_overlay(prediction, reference, volume, path) -> Path:
    """Montage PNG of ``volume`` with the prediction filled and the reference outlined (snapshot renderer).

    Each reference segment is drawn in a lighter shade of its matched prediction segment's colour, so the
    outline of a structure stands out on its own fill. Only the first layer of each segmentation is drawn.
    """
    try:
        from .snapshot import render_montage
    except ImportError:
        raise UXNetError("overlay pictures need the snapshot renderer (UXNetSegmentLib/snapshot.py), "
                         "which this install lacks; drop --overlay") from None
    pred, ref = read_label_set(prediction), read_label_set(reference)
    try:
        image = sitk.ReadImage(str(volume))
    except RuntimeError:
        raise UXNetError(f"cannot read the volume {volume}; give the image both segmentations belong to") from None
    grid = pred.layers[0]
    ref_layer = ref.layers[0] if same_grid(ref.layers[0], grid) else resample_nearest(ref.layers[0], grid)
    ref_array = sitk.GetArrayViewFromImage(ref_layer)
    outline = np.zeros(ref_array.shape, dtype=np.uint16)
    label_info = {}
    offset = 1 + max([s.value for s in pred.segments] + [0])
    for index, (p, r, _) in enumerate(match_segments(pred.segments, ref.segments)):
        colour = (p or r).color or _PALETTE[index % len(_PALETTE)]
        if p is not None:
            label_info[p.value] = (p.name, colour)
        if r is not None and r.layer == 0:
            value = offset + index
            label_info[value] = (f"{r.name} (reference)", tuple(int(c + 0.6 * (255 - c)) for c in colour))
            outline[ref_array == r.value] = value
    outline_image = sitk.GetImageFromArray(outline)
    outline_image.CopyInformation(grid)
    return render_montage(image, path, labels=pred.layers[0], label_info=label_info, outline_labels=outline_image,
                          title="prediction (fill) vs reference (outline)")


_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]
