#!/usr/bin/env python
"""Peak RSS of each preprocessing step of the resampled recipe on a large volume (a diagnosis tool).

    python tools/memory_preprocess.py --size 512 512 300

Builds an empty float32 CT of ``--size`` at 0.7 x 0.7 x 2.5 mm, then runs the recipe's spatial steps
(MONAI Spacing to a 1 % coarser grid, then Orientation) and prints the process's peak RSS after each.
"""
import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UXNetSegment"))

import SimpleITK as sitk  # noqa: E402

from UXNetSegmentLib.catalogue import load_spec  # noqa: E402
from UXNetSegmentLib.pipeline import spatial_transforms, to_metatensor  # noqa: E402


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=3, default=[512, 512, 300])
    args = p.parse_args()
    spacing = (0.7, 0.7, 2.5)
    image = sitk.Image(args.size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps({"name": "memory", "modality": "CT", "labels": {"1": "liver"},
                                    "spacing": [s * 1.01 for s in spacing], "intensity_window": [-175, 250],
                                    "roi_size": [96, 96, 96], "overlap": 0.5}))
        spec = load_spec(path)
    print(f"input {'x'.join(map(str, args.size))} float32: peak RSS {peak_gib():.2f} GiB")
    start = time.perf_counter()
    data = to_metatensor(image)
    print(f"as a MetaTensor: peak RSS {peak_gib():.2f} GiB")
    for step in spatial_transforms(spec):
        data = step(data)
        print(f"after {type(step).__name__}: peak RSS {peak_gib():.2f} GiB "
              f"({time.perf_counter() - start:.1f} s so far)")


if __name__ == "__main__":
    main()
