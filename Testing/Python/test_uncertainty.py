"""Uncertainty tells a radiologist where to look: it is higher where the input was corrupted.

Uses the bundled demo model on the bundled Colin27 sample. Two mirror-image boxes inside the brain
(left and right hemisphere) are compared: one is corrupted with strong noise, the other left clean.
"""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from UXNetSegmentLib.api import segment_image
from UXNetSegmentLib.catalogue import get_model, resources_dir
from UXNetSegmentLib.imageio import read_image
from UXNetSegmentLib.review import review_scores

SAMPLE = "SampleData/colin27_t1_2mm.nrrd"


@pytest.fixture(scope="module")
def demo():
    spec = get_model("demo_brain")
    if spec.weights_path() is None:
        pytest.fail("bundled demo weights are missing from Resources/Weights")
    return spec, read_image(resources_dir() / SAMPLE)


def corrupt(image: sitk.Image, box, seed: int = 0) -> sitk.Image:
    arr = sitk.GetArrayFromImage(image)
    rng = np.random.default_rng(seed)
    region = arr[box]
    arr[box] = rng.uniform(0, np.percentile(arr, 99.5), region.shape).astype(arr.dtype)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def test_uncertainty_higher_on_corrupted_region(demo):
    spec, image = demo
    arr = sitk.GetArrayFromImage(image)
    brain = np.argwhere(arr > np.percentile(arr[arr > 0], 30))
    center = brain.mean(0).astype(int)
    k, j, i = center
    half = np.array([5, 7, 6])
    mid = arr.shape[2] // 2
    offset = max(8, int(0.25 * (brain[:, 2].max() - brain[:, 2].min())))
    left = (slice(k - half[0], k + half[0]), slice(j - half[1], j + half[1]), slice(mid - offset - half[2], mid - offset + half[2]))
    right = (slice(k - half[0], k + half[0]), slice(j - half[1], j + half[1]), slice(mid + offset - half[2], mid + offset + half[2]))
    noisy = corrupt(image, left)
    result = segment_image(noisy, spec, device="cpu", uncertainty=True)
    unc = sitk.GetArrayFromImage(result.uncertainty)
    corrupted_mean, clean_mean = float(unc[left].mean()), float(unc[right].mean())
    assert corrupted_mean > 1.5 * clean_mean, (corrupted_mean, clean_mean)
    # The clean run itself is confident on the same box.
    clean = segment_image(image, spec, device="cpu", uncertainty=True)
    assert float(sitk.GetArrayFromImage(clean.uncertainty)[left].mean()) < corrupted_mean
    # Review scores rank segments and stay in [0, 1].
    labels = sitk.GetArrayFromImage(result.labels)
    scores = review_scores(labels, unc, sorted(spec.labels))
    assert set(scores) == set(spec.labels)
    assert all(0.0 <= s <= 1.0 for s in scores.values())
