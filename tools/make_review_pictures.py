"""Regenerate the README's uncertainty pictures from the bundled demo model and sample.

    .venv/bin/python tools/make_review_pictures.py

Writes ``docs/uncertainty-overlay.png``: the demo model's uncertainty map (heat, as ``--snapshot`` draws
it beside the label montage when ``--uncertainty`` is asked) on the Colin27 sample, after a box in the left hemisphere was replaced with noise (the kind of
damage a radiologist must find), and ``docs/review-scores.json``: the review list of that run (segment
name, review score, share above 0.5), which the panel screenshot test draws into the review table.
"""
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from UXNetSegmentLib.api import segment_image
from UXNetSegmentLib.catalogue import get_model, resources_dir
from UXNetSegmentLib.imageio import read_image
from UXNetSegmentLib.review import DEFAULT_THRESHOLD, rank_for_review, review_stats
from UXNetSegmentLib.snapshot import render_montage

REPO = Path(__file__).resolve().parents[1]


def left_hemisphere_box(image: sitk.Image):
    """(k, j, i) slices of a 12x16x12-voxel box around the brain's centre row, 20-44 mm into the patient's left."""
    arr = sitk.GetArrayFromImage(image)
    k, j, _ = np.argwhere(arr > np.percentile(arr[arr > 0], 30)).mean(0).astype(int)
    xs = np.array([image.TransformIndexToPhysicalPoint([i, int(j), int(k)])[0] for i in range(arr.shape[2])])
    left = np.nonzero((xs > 20) & (xs < 44))[0]  # LPS: x grows towards the patient's left
    return slice(k - 6, k + 6), slice(j - 8, j + 8), slice(int(left.min()), int(left.max()) + 1)


def main() -> None:
    spec = get_model("demo_brain")
    image = read_image(resources_dir() / "SampleData" / "colin27_t1_2mm.nrrd")
    arr = sitk.GetArrayFromImage(image)
    box = left_hemisphere_box(image)
    rng = np.random.default_rng(0)
    arr[box] = rng.uniform(0, np.percentile(arr, 99.5), arr[box].shape).astype(arr.dtype)
    noisy = sitk.GetImageFromArray(arr)
    noisy.CopyInformation(image)
    result = segment_image(noisy, spec, device="cpu", uncertainty=True)
    render_montage(noisy, REPO / "docs" / "uncertainty-overlay.png", heat=result.uncertainty,
                   title="demo_brain uncertainty: a noise-filled box in the left hemisphere")
    labels = sitk.GetArrayFromImage(result.labels)
    unc = sitk.GetArrayFromImage(result.uncertainty)
    stats = review_stats(labels, unc, sorted(spec.labels), DEFAULT_THRESHOLD)
    rows = [{"name": spec.labels[v].name, "score": round(stats[v].score, 4), "share": round(stats[v].share_above, 4)}
            for v in rank_for_review({v: s.score for v, s in stats.items()})]
    (REPO / "docs" / "review-scores.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"box mean uncertainty {unc[box].mean():.3f}, elsewhere in the brain {unc[labels > 0].mean():.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
