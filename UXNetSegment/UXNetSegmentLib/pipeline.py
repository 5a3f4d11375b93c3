"""The official 3D UX-Net test recipe, streamed: preprocess with MONAI, infer slab by slab, invert.

Steps (per model spec): resample to ``spacing`` (bilinear; a slab of planes at a time) -> reorient to RAS
-> intensity window (or percentiles) to [0, 1], clipped -> crop to foreground (> 0) -> sliding window ->
softmax -> back onto the input grid (trilinear, every class) -> argmax; the last three run slab by slab.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch
from monai import transforms as T
from monai.data import MetaTensor

from .catalogue import ModelSpec
from .inference import count_windows, sliding_window_stream
from .progress import CancelToken, ProgressCallback, report
from .inverse_separable import SeparableInverse
from .inverse_stream import StreamingInverse
from .resample import GridMap, LPS_TO_RAS, gather_labels, ijk_to_ras, to_image
from .slabs import SlabStore
from .spacing import spacing_in_slabs


@dataclass
class Preprocessed:
    image: torch.Tensor          # (1, X, Y, Z) float32, cropped processed grid
    grid_affine: np.ndarray      # RAS affine of the uncropped processed grid
    grid_shape: tuple            # (X, Y, Z) before the crop
    crop_start: tuple            # crop box start inside the uncropped grid


def to_metatensor(image: sitk.Image) -> MetaTensor:
    """``(1, I, J, K)`` MetaTensor with a RAS affine, as MONAI's ITK reader builds it."""
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)[None]
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)),
                      affine=torch.as_tensor(ijk_to_ras(image)))


def intensity_transform(spec: ModelSpec):
    if spec.intensity_percentiles:
        lo, hi = spec.intensity_percentiles
        return T.ScaleIntensityRangePercentiles(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)
    lo, hi = spec.intensity_window
    return T.ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)


def preprocess(image: sitk.Image, spec: ModelSpec) -> Preprocessed:
    data = to_metatensor(image)
    if spec.spacing:
        data = spacing_in_slabs(data, spec.spacing)
    data = T.Orientation(axcodes="RAS", labels=None)(data)
    affine = np.asarray(data.affine, dtype=np.float64)
    shape = tuple(data.shape[1:])
    data = intensity_transform(spec)(data)
    array = torch.as_tensor(data.as_tensor() if isinstance(data, MetaTensor) else data, dtype=torch.float32)
    start = (0, 0, 0)
    if spec.crop_foreground:
        lo, hi = T.CropForeground(allow_smaller=True).compute_bounding_box(array)
        lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
        if np.all(hi > lo):
            start = tuple(int(v) for v in lo)
            array = array[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return Preprocessed(array.contiguous(), affine, shape, start)


@dataclass
class RawResult:
    labels: np.ndarray                 # (K, J, I) uint8 on the input grid
    uncertainty: Optional[np.ndarray]  # (K, J, I) float32 or None


def run_recipe(image: sitk.Image, spec: ModelSpec, predictor: Callable[[torch.Tensor], torch.Tensor],
               overlap: Optional[float] = None, uncertainty: Optional[str] = None, batch_size: int = 1,
               progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> RawResult:
    overlap = spec.overlap if overlap is None else overlap
    report(progress, "preprocess", 0.0, "resample, reorient, normalise")
    pre = preprocess(image, spec)
    n = count_windows(pre.image.shape[1:], spec.roi_size, overlap)
    report(progress, "preprocess", 1.0, f"grid {'x'.join(map(str, pre.image.shape[1:]))}, {n} windows")
    grid = GridMap(image, pre.grid_affine, pre.grid_shape, pre.crop_start, pre.image.shape[1:])
    # Where the input's voxels are the processed voxels (no resampling), a slab leaves only its labels;
    # otherwise each slab is interpolated back onto the input grid, with every class, as it finishes:
    # axis by axis where the grids share their axes (always after Spacing + Orientation), else by corners.
    aligned = grid.voxel_aligned()
    if aligned:
        sink = SlabStore(pre.image.shape[1:], spec.num_classes, uncertainty)
    elif grid.axis_map() is not None:
        sink = SeparableInverse(grid, spec.num_classes, uncertainty)
    else:
        sink = StreamingInverse(grid, spec.num_classes, uncertainty)
    with torch.no_grad():
        sliding_window_stream(pre.image, spec.roi_size, overlap, predictor, spec.num_classes, sink,
                              batch_size=batch_size, progress=progress, cancel=cancel)
    if cancel is not None:
        cancel.check()
    report(progress, "postprocess", 0.0, "back to the input grid")
    if aligned:
        labels, unc = gather_labels(grid, sink.index, sink.uncertainty)
    else:
        labels, unc = sink.result()
    report(progress, "postprocess", 1.0, "done")
    return RawResult(labels, unc)


def labels_image(raw: RawResult, like: sitk.Image) -> sitk.Image:
    return to_image(raw.labels, like)


__all__ = ["preprocess", "run_recipe", "Preprocessed", "RawResult", "to_metatensor", "LPS_TO_RAS", "labels_image"]
