"""PNG overlay montages of a volume and its segmentation, for review without Slicer.

:func:`render_montage` draws three axial, three coronal and three sagittal slices through the
labelled region. The volume is first resampled onto an axis-aligned grid with isotropic display
spacing (so oblique or anisotropic scans look anatomically right), then shown in the radiological
convention: patient right on the image left (axial, coronal), anterior on the left (sagittal),
superior at the top. Labels are drawn as 1-pixel coloured outlines; when ``outline_labels`` is also
given, ``labels`` is drawn as a semi-transparent fill and ``outline_labels`` as outlines (prediction
vs. reference). A ``heat`` volume in [0, 1] (the uncertainty map) is drawn under the outlines in the
inferno colour map, transparent where it is near 0. Uses matplotlib's Agg canvas directly, so it never touches pyplot or a GUI backend.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import UXNetError

LabelInfo = Dict[int, Tuple[str, Tuple[int, int, int]]]

FILL_ALPHA = 0.45
HEAT_FLOOR = 0.05      # heat values at or below this are not drawn
HEAT_OPAQUE = 0.5      # from this value on, the heat is drawn at HEAT_MAX_ALPHA
HEAT_MAX_ALPHA = 0.9
HEAT_COLORMAP = "inferno"
HEAT_COLOURS = (0.45, 1.0)  # the part of the colour map used: dark red (low) ... bright yellow (1)
MAX_DISPLAY_VOXELS = 320  # longest side of the display grid, in voxels
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def default_label_info(values: Sequence[int]) -> LabelInfo:
    """``{value: ("label <value>", palette colour)}`` for labels that come without names."""
    return {int(v): (f"label {int(v)}", _PALETTE[(int(v) - 1) % len(_PALETTE)]) for v in values if int(v) != 0}


def _display_grid(volume: sitk.Image) -> sitk.Image:
    """An empty LPS-aligned grid covering ``volume`` with isotropic spacing (mm)."""
    size = np.array(volume.GetSize())
    corners = [volume.TransformContinuousIndexToPhysicalPoint([float(c) for c in idx])
               for idx in np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in size])).reshape(3, -1).T]
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    extent = hi - lo
    spacing = max(min(volume.GetSpacing()), float(extent.max()) / MAX_DISPLAY_VOXELS)
    dims = np.maximum(np.round(extent / spacing).astype(int), 1)
    grid = sitk.Image([int(d) for d in dims], sitk.sitkUInt8)
    grid.SetSpacing([spacing] * 3)
    grid.SetOrigin([float(v) for v in lo + spacing / 2])
    return grid


def _resample(image: sitk.Image, grid: sitk.Image, nearest: bool) -> np.ndarray:
    """``image`` on ``grid`` as a ``(z, y, x)`` array (x to patient left, y to posterior, z to superior)."""
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    pixel = sitk.sitkUInt16 if nearest else sitk.sitkFloat32
    return sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(image, pixel), grid, sitk.Transform(), interp, 0, pixel))


def _check_same_space(volume: sitk.Image, other: Optional[sitk.Image], what: str) -> None:
    if other is None:
        return
    if other.GetDimension() != 3 or other.GetNumberOfComponentsPerPixel() != 1:
        raise UXNetError(f"snapshot: {what} must be a 3D single-component label image; pass a labelmap")
    # Labels are resampled by physical position, so only a wildly different region is an error.
    far = np.linalg.norm(np.array(other.TransformContinuousIndexToPhysicalPoint(
        [(s - 1) / 2.0 for s in other.GetSize()])) - np.array(volume.TransformContinuousIndexToPhysicalPoint(
            [(s - 1) / 2.0 for s in volume.GetSize()])))
    extent = np.linalg.norm(np.array(volume.GetSize()) * np.array(volume.GetSpacing()))
    if far > extent:
        raise UXNetError(f"snapshot: the {what} lie {far:.0f} mm away from the volume; "
                         f"pass the segmentation computed for this volume")


def _slice_positions(mask: np.ndarray, axis: int, count: int) -> List[int]:
    """``count`` slice indices along ``axis`` at the quantiles of the labelled voxels (or of the volume)."""
    coords = np.nonzero(mask)[axis] if mask.any() else np.arange(mask.shape[axis])
    qs = np.linspace(0, 1, count + 2)[1:-1]
    return [int(round(np.quantile(coords, q))) for q in qs]


def _crop_box(mask: np.ndarray, shape: Tuple[int, ...], margin: float = 0.15) -> List[slice]:
    """Bounding box of ``mask`` grown by ``margin`` of its extent (+4 voxels), clamped to ``shape``."""
    if not mask.any():
        return [slice(0, s) for s in shape]
    box = []
    for ax, s in enumerate(shape):
        idx = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        pad = int((idx[-1] - idx[0] + 1) * margin) + 4
        box.append(slice(max(0, idx[0] - pad), min(s, idx[-1] + pad + 1)))
    return box


def _outline(mask2d: np.ndarray) -> np.ndarray:
    """Pixels of ``mask2d`` with at least one 4-neighbour outside it."""
    padded = np.pad(mask2d, 1, mode="constant")
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask2d & ~inner


def _grey_to_rgb(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    grey = np.clip((plane - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=2)


def heat_rgba(values: np.ndarray) -> np.ndarray:
    """``(..., 4)`` colours: red to yellow (inferno's bright part), opacity from 0 at ``HEAT_FLOOR`` up to
    ``HEAT_MAX_ALPHA`` at ``HEAT_OPAQUE`` and above."""
    from matplotlib import colormaps

    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    lo, hi = HEAT_COLOURS
    rgba = colormaps[HEAT_COLORMAP](lo + (hi - lo) * v)
    rgba[..., 3] = np.clip((v - HEAT_FLOOR) / (HEAT_OPAQUE - HEAT_FLOOR), 0.0, 1.0) * HEAT_MAX_ALPHA
    return rgba


def _compose(grey: np.ndarray, lo: float, hi: float, labels: Optional[np.ndarray],
             outlines: Optional[np.ndarray], info: LabelInfo, fill: bool,
             heat: Optional[np.ndarray] = None) -> np.ndarray:
    """RGB float image ``(rows, cols, 3)`` of one slice with the heat map, fills and outlines."""
    rgb = _grey_to_rgb(grey, lo, hi)
    if heat is not None:
        rgba = heat_rgba(heat)
        alpha = rgba[..., 3:]
        rgb = (1 - alpha) * rgb + alpha * rgba[..., :3]
    for value, (_, colour) in info.items():
        c = np.array(colour, dtype=float) / 255.0
        if labels is not None and fill:
            m = labels == value
            rgb[m] = (1 - FILL_ALPHA) * rgb[m] + FILL_ALPHA * c
        drawn = outlines if fill else labels
        if drawn is not None:
            rgb[_outline(drawn == value)] = c
    return rgb


def _views(arr: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D display plane from a ``(z, y, x)`` LPS-aligned array: rows top-to-bottom, cols left-to-right."""
    if axis == 0:  # axial: rows anterior->posterior, cols right->left (radiological)
        return arr[index, :, :]
    if axis == 1:  # coronal: rows superior->inferior, cols right->left
        return arr[::-1, index, :]
    return arr[::-1, :, index]  # sagittal: rows superior->inferior, cols anterior->posterior


@dataclass
class Panel:
    view: str            # "axial", "coronal" or "sagittal"
    index: int           # slice index along that axis of the display grid
    count: int           # number of slices along that axis
    rgb: np.ndarray      # (rows, cols, 3) float in [0, 1], display orientation


@dataclass
class Montage:
    panels: List[List[Panel]]     # rows: axial, coronal, sagittal
    info: LabelInfo               # the labels drawn: {value: (name, colour)}
    present: List[int]            # label values found in the images
    spacing_mm: float             # display pixel size


def compose_panels(volume: sitk.Image, labels: Optional[sitk.Image] = None,
                   label_info: Optional[LabelInfo] = None, outline_labels: Optional[sitk.Image] = None,
                   slices_per_view: int = 3, heat: Optional[sitk.Image] = None) -> Montage:
    """The montage's slices as RGB arrays (see :func:`render_montage` for the arguments)."""
    if volume.GetDimension() != 3:
        raise UXNetError(f"snapshot: the volume is {volume.GetDimension()}D; give a 3D volume")
    if volume.GetNumberOfComponentsPerPixel() != 1:
        volume = sitk.VectorMagnitude(volume)
    _check_same_space(volume, labels, "labels")
    _check_same_space(volume, outline_labels, "outline labels")
    _check_same_space(volume, heat, "uncertainty map")

    grid = _display_grid(volume)
    grey = _resample(volume, grid, nearest=False)
    lab = _resample(labels, grid, nearest=True) if labels is not None else None
    out = _resample(outline_labels, grid, nearest=True) if outline_labels is not None else None
    hot = _resample(heat, grid, nearest=False) if heat is not None else None
    present = set()
    for a in (lab, out):
        if a is not None:
            present |= set(int(v) for v in np.unique(a)) - {0}
    info = dict(label_info) if label_info is not None else default_label_info(sorted(present))
    info = {int(k): (str(v[0]), tuple(int(c) for c in v[1])) for k, v in info.items() if int(k) != 0}

    focus = np.zeros(grey.shape, dtype=bool)
    for a in (lab, out):
        if a is not None:
            focus |= a > 0
    if hot is not None and lab is None and out is None:
        focus |= hot > HEAT_OPAQUE  # a heat-only montage cuts through the least certain parts
    if not focus.any():
        focus = grey > np.percentile(grey, 50) if np.ptp(grey) > 0 else np.ones(grey.shape, dtype=bool)
    box = _crop_box(focus, grey.shape)
    inside = grey[tuple(box)]
    nonzero = inside[inside != 0]
    lo, hi = np.percentile(nonzero if nonzero.size else inside, [1, 99.5])

    names = ("axial", "coronal", "sagittal")
    rows = []
    for axis in range(3):
        row = []
        for index in _slice_positions(focus, axis, slices_per_view):
            crop = list(box)
            crop[axis] = slice(index, index + 1)
            sub = tuple(crop)
            planes = [_views(a[sub], axis, 0) if a is not None else None for a in (grey, lab, out, hot)]
            rgb = _compose(planes[0], lo, hi, planes[1], planes[2], info, fill=out is not None, heat=planes[3])
            row.append(Panel(names[axis], index, grey.shape[axis], rgb))
        rows.append(row)
    return Montage(rows, info, sorted(present), float(grid.GetSpacing()[0]))


def render_montage(volume: sitk.Image, path, labels: Optional[sitk.Image] = None,
                   label_info: Optional[LabelInfo] = None, outline_labels: Optional[sitk.Image] = None,
                   title: str = "", slices_per_view: int = 3, heat: Optional[sitk.Image] = None) -> Path:
    """Write a PNG montage of ``volume`` with ``labels`` overlaid and return its path.

    Args:
        volume: 3D scalar image (any orientation/spacing; mm).
        path: output ``.png``; written atomically (temp file, then rename).
        labels: label image in the same physical space (any grid); drawn as outlines, or as a
            semi-transparent fill when ``outline_labels`` is given.
        label_info: ``{value: (name, (r, g, b) 0-255)}`` for the legend and colours; default: the
            values present, named ``label N``, with a fixed palette.
        outline_labels: a second label image drawn as outlines over the fill (e.g. the reference).
        title: figure title.
        slices_per_view: slices per anatomical view (rows: axial, coronal, sagittal).
        heat: a scalar image in [0, 1] in the same physical space (the uncertainty map), drawn under the
            labels in the inferno colour map, with a colour bar.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UXNetError(f"snapshot: folder {path.parent} does not exist; create it or choose another path")
    montage = compose_panels(volume, labels, label_info, outline_labels, slices_per_view, heat)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    panel_in = 3.2
    height = panel_in * 3 + 0.9
    fig = Figure(figsize=(panel_in * slices_per_view, height), dpi=110, facecolor="black")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(3, slices_per_view, left=0.01, right=0.99, top=1.0 - (0.55 if title else 0.2) / height,
                          bottom=0.7 / height, wspace=0.03, hspace=0.08)
    for r, row in enumerate(montage.panels):
        for c, panel in enumerate(row):
            ax = fig.add_subplot(gs[r, c])
            ax.imshow(panel.rgb, interpolation="nearest", aspect="equal")
            ax.set_facecolor("black")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_title(f"{panel.view} {panel.index + 1}/{panel.count}", color="white", fontsize=8, pad=2)
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    info = montage.info
    shown = [v for v in sorted(info) if v in montage.present] or sorted(info)
    handles = [Patch(facecolor=np.array(info[v][1]) / 255.0, edgecolor="white", label=info[v][0]) for v in shown]
    if outline_labels is not None:
        handles.append(Patch(facecolor="none", edgecolor="none", label="fill: labels, outline: reference"))
    if heat is not None:
        for value, text in ((0.15, "uncertainty 0.15"), (0.5, "0.5"), (1.0, "1 (undecided)")):
            handles.append(Patch(facecolor=heat_rgba(np.array([value]))[0, :3], edgecolor="none", label=text))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False,
                   labelcolor="white", bbox_to_anchor=(0.5, 0.0))

    from .imageio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", facecolor=fig.get_facecolor())
    return path
