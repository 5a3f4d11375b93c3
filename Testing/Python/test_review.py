"""review.py: review scores from an uncertainty map, on synthetic arrays whose answer is known.

The main case simulates a model's softmax for two structures: one with a blurred, hesitant edge and one with
a crisp edge. The uncertainty is the normalised entropy of that softmax (what the engine outputs); the
hesitant structure must come first for review.
"""
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "UXNetSegment") not in sys.path:
    sys.path.insert(0, str(REPO / "UXNetSegment"))

from UXNetSegmentLib.errors import UXNetError  # noqa: E402
from UXNetSegmentLib.review import (rank_for_review, review_mask, review_scores, review_stats,  # noqa: E402
                                    segment_boundary)


def brute_boundary(labels: np.ndarray, value: int) -> np.ndarray:
    """Voxels of ``value`` with a differently labelled voxel among their 26 neighbours inside the image."""
    out = np.zeros(labels.shape, bool)
    for k, j, i in zip(*np.nonzero(labels == value)):
        for dk, dj, di in itertools.product((-1, 0, 1), repeat=3):
            kk, jj, ii = k + dk, j + dj, i + di
            if 0 <= kk < labels.shape[0] and 0 <= jj < labels.shape[1] and 0 <= ii < labels.shape[2]:
                if labels[kk, jj, ii] != value:
                    out[k, j, i] = True
                    break
    return out


def softmax_uncertainty(logits: np.ndarray) -> np.ndarray:
    """Normalised entropy (0..1) of softmax over axis 0 of (C, k, j, i) logits."""
    z = logits - logits.max(axis=0, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=0, keepdims=True)
    h = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=0)
    return h / np.log(logits.shape[0])


def two_organ_scene():
    """A sphere whose logits change slowly across its surface (the model hesitates there) and a cube whose
    logits flip sharply (the model is sure). Returns labels (argmax) and normalised-entropy uncertainty."""
    shape = (40, 40, 48)
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    sphere_sd = 9.0 - np.sqrt((k - 20) ** 2 + (j - 20) ** 2 + (i - 13) ** 2)  # > 0 inside, voxels
    cube_sd = 7.0 - np.maximum.reduce([abs(k - 20), abs(j - 20), abs(i - 35)])
    logits = np.stack([np.zeros(shape), 0.6 * sphere_sd, 6.0 * cube_sd])
    return np.argmax(logits, axis=0).astype(np.uint8), softmax_uncertainty(logits)


def test_hesitant_edge_scores_higher_than_crisp_edge():
    labels, unc = two_organ_scene()
    assert set(np.unique(labels)) == {0, 1, 2}
    stats = review_stats(labels, unc, [1, 2], threshold=0.3)
    assert stats[1].boundary_mean > 2 * stats[2].boundary_mean
    assert stats[1].share_above > stats[2].share_above
    assert rank_for_review(review_scores(labels, unc)) == [1, 2]
    # the boundary is where the doubt is: its mean is higher than the segment's interior mean
    for v in (1, 2):
        inner = (labels == v) & ~segment_boundary(labels, v)
        assert stats[v].boundary_mean > unc[inner].mean()


def test_boundary_matches_brute_force_on_random_labels():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(6, 7, 8)).astype(np.uint8)
    labels[1:5, 1:6, 1:7] = np.where(rng.random((4, 5, 6)) < 0.8, 1, labels[1:5, 1:6, 1:7])
    unc = rng.random(labels.shape)
    stats = review_stats(labels, unc, threshold=0.7)
    for v in (1, 2):
        edge = brute_boundary(labels, v)
        assert np.array_equal(segment_boundary(labels, v), edge)
        assert stats[v].boundary_voxels == edge.sum()
        assert stats[v].boundary_mean == pytest.approx(unc[edge].mean(), rel=1e-12)
        assert stats[v].voxels == (labels == v).sum()
        assert stats[v].share_above == pytest.approx((unc[labels == v] > 0.7).mean(), rel=1e-12)


def test_cube_shell_by_hand():
    """A 3x3x3 cube in a 5x5x5 volume: the 26 shell voxels are the boundary, the centre voxel is not."""
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1:4, 1:4, 1:4] = 4
    unc = np.full(labels.shape, 0.2)
    unc[2, 2, 2] = 1.0  # the centre: not on the boundary, but above the threshold
    stats = review_stats(labels, unc, [4], threshold=0.5)[4]
    assert (stats.voxels, stats.boundary_voxels) == (27, 26)
    assert stats.boundary_mean == pytest.approx(0.2)
    assert stats.share_above == pytest.approx(1 / 27)


def test_image_edge_is_not_a_boundary_and_full_volume_falls_back():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:, :, :2] = 1  # half the volume; its only real boundary is the i == 1 plane
    unc = np.zeros(labels.shape)
    unc[:, :, 1] = 0.9
    s = review_stats(labels, unc, [1])[1]
    assert s.boundary_voxels == 16 and s.boundary_mean == pytest.approx(0.9)
    full = np.ones((3, 3, 3), np.uint8)
    f = review_stats(full, np.full(full.shape, 0.25), [1])[1]
    assert f.boundary_voxels == 0 and f.boundary_mean == pytest.approx(0.25)


def test_absent_values_are_left_out_and_bad_input_is_refused():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    assert set(review_scores(labels, np.zeros(labels.shape), [1, 2, 3])) == {1}
    with pytest.raises(UXNetError, match="same shape|one shape"):
        review_scores(labels, np.zeros((4, 4, 5)))
    with pytest.raises(UXNetError, match="integer"):
        review_scores(labels.astype(float), np.zeros(labels.shape))
    bad = np.zeros(labels.shape)
    bad[1, 1, 1] = np.nan
    with pytest.raises(UXNetError, match="NaN"):
        review_scores(labels, bad)


def test_review_mask_thresholds_and_restricts():
    labels, unc = two_organ_scene()
    mask = review_mask(unc, 0.5)
    assert mask.dtype == bool and mask.sum() == (unc > 0.5).sum() > 0
    near_sphere = labels == 1
    inside = review_mask(unc, 0.5, within=near_sphere)
    assert inside.sum() == ((unc > 0.5) & near_sphere).sum() and inside.sum() < mask.sum()
    assert review_mask(unc, 1.0).sum() == 0
    with pytest.raises(UXNetError):
        review_mask(unc, 0.5, within=np.ones((2, 2, 2), bool))
