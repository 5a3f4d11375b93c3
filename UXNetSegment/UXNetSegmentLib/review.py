"""Review scores: which segments should a radiologist check first, from a per-voxel uncertainty map.

A model is least sure where one structure meets another, so the score of a segment looks at its boundary:

* **boundary** of segment ``v``: the voxels labelled ``v`` that have, within one voxel (the 26-neighbourhood),
  a voxel with another label, background included. Voxels on the edge of the image count only if they touch
  another label; a segment that touches nothing else (it fills the image) uses all its voxels instead;
* **review score** (:func:`review_scores`): the mean uncertainty over the boundary, in the uncertainty's own
  units (normalised entropy or ``1 - margin``, both 0 = certain ... 1 = undecided);
* **share above threshold** (:class:`ReviewStats.share_above`): the fraction of the segment's voxels whose
  uncertainty is above ``threshold`` — how much of the structure is in doubt, not only its outline.

:func:`review_mask` thresholds the map into a boolean "review" mask for editing.

Arrays are in (k, j, i) order, as SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` give
them. Work is done per segment on its bounding box (plus one voxel), so memory follows the segment's size.
"""
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .compare import label_boxes
from .errors import UXNetError

DEFAULT_THRESHOLD = 0.5


@dataclass
class ReviewStats:
    """Review numbers of one segment (uncertainty units: 0 certain ... 1 undecided)."""

    value: int
    voxels: int
    boundary_voxels: int
    boundary_mean: float
    share_above: float
    threshold: float

    @property
    def score(self) -> float:
        """The review score: mean uncertainty on the boundary."""
        return self.boundary_mean


def _check(labels: np.ndarray, uncertainty: np.ndarray) -> None:
    if labels.ndim != 3 or uncertainty.shape != labels.shape:
        raise UXNetError(f"labels {labels.shape} and uncertainty {uncertainty.shape} must be 3D arrays of one "
                         f"shape; compute the uncertainty on the segmentation's grid")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UXNetError(f"labels must be an integer array, got {labels.dtype}; pass the label volume")


def _dilate_cube(mask: np.ndarray) -> np.ndarray:
    """Dilation by the 3x3x3 cube (outside the array counts as False), done one axis at a time."""
    out = mask.copy()
    for axis in range(3):
        grown = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        grown[tuple(lo)] |= out[tuple(hi)]
        grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def _padded_box(box: Tuple[slice, slice, slice], shape: Tuple[int, ...]) -> Tuple[slice, slice, slice]:
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, shape))  # type: ignore


def segment_boundary(labels: np.ndarray, value: int) -> np.ndarray:
    """Boolean (k, j, i) mask of the boundary of ``value`` (see module docstring), full size; for inspection."""
    mask = labels == value
    return mask & _dilate_cube(~mask)


def review_stats(labels: np.ndarray, uncertainty: np.ndarray, values: Optional[Iterable[int]] = None,
                 threshold: float = DEFAULT_THRESHOLD) -> Dict[int, ReviewStats]:
    """Per segment value: voxel counts, mean boundary uncertainty and share of voxels above ``threshold``.

    ``labels``: integer (k, j, i); ``uncertainty``: float, same shape; ``values``: the segment values to score
    (default: every non-zero value present). Values with no voxels are left out of the result.
    """
    _check(labels, uncertainty)
    boxes, counts = label_boxes(labels)
    wanted = sorted(boxes) if values is None else [int(v) for v in values]
    out: Dict[int, ReviewStats] = {}
    for value in wanted:
        if value not in boxes:
            continue
        box = _padded_box(boxes[value], labels.shape)
        crop = labels[box]
        unc = np.asarray(uncertainty[box], dtype=np.float64)
        mask = crop == value
        boundary = mask & _dilate_cube(~mask)
        n_boundary = int(np.count_nonzero(boundary))
        inside = unc[mask]
        edge = unc[boundary] if n_boundary else inside
        if not np.all(np.isfinite(inside)):
            raise UXNetError(f"the uncertainty map has NaN/inf inside segment {value}; recompute it")
        out[value] = ReviewStats(value=value, voxels=int(counts[value]), boundary_voxels=n_boundary,
                                 boundary_mean=float(edge.mean()),
                                 share_above=float(np.count_nonzero(inside > threshold)) / inside.size,
                                 threshold=float(threshold))
    return out


def review_scores(labels: np.ndarray, uncertainty: np.ndarray, values: Optional[Iterable[int]] = None,
                  threshold: float = DEFAULT_THRESHOLD) -> Dict[int, float]:
    """``{value: mean uncertainty on the segment's boundary}`` (higher = review first).

    Same inputs as :func:`review_stats`; values with no voxels are left out.
    """
    return {v: s.score for v, s in review_stats(labels, uncertainty, values, threshold).items()}


def rank_for_review(scores: Dict[int, float]) -> List[int]:
    """Segment values ordered least certain first (ties by value)."""
    return sorted(scores, key=lambda v: (-scores[v], v))


def review_mask(uncertainty: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                within: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean mask of voxels whose uncertainty is above ``threshold`` (optionally only inside ``within``,
    e.g. the dilated foreground); the "review" segment a radiologist edits from."""
    if within is not None and within.shape != uncertainty.shape:
        raise UXNetError(f"review area {within.shape} and uncertainty {uncertainty.shape} differ in shape; "
                         f"use masks on one grid")
    mask = np.asarray(uncertainty) > threshold
    if within is not None:
        mask &= within.astype(bool, copy=False)
    return mask
