#!/usr/bin/env python
"""Peak RSS and time of the recipe's resampling step on a large volume: MONAI Spacing on the whole volume
against the engine's slab-by-slab Spacing, each in its own child process (a diagnosis tool).

    python tools/memory_preprocess.py --size 512 512 300

Builds a random float32 CT of ``--size`` at 0.7 x 0.7 x 2.5 mm and resamples it to a 1 % coarser grid.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UXNetSegment"))

SPACING = (0.7, 0.7, 2.5)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def child(way: str, size) -> dict:
    import numpy as np
    import SimpleITK as sitk
    from monai import transforms as T

    from UXNetSegmentLib.pipeline import to_metatensor
    from UXNetSegmentLib.spacing import spacing_in_slabs

    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 300, size[::-1]).astype(np.float32))
    image.SetSpacing(SPACING)
    data = to_metatensor(image)
    del image
    before = peak_gib()
    pixdim = [s * 1.01 for s in SPACING]
    start = time.perf_counter()
    out = T.Spacing(pixdim=pixdim, mode="bilinear")(data) if way == "whole" else spacing_in_slabs(data, pixdim)
    seconds = time.perf_counter() - start
    return {"way": way, "before_gib": before, "peak_gib": peak_gib(), "seconds": seconds,
            "output": "x".join(map(str, out.shape[1:])), "checksum": float(out.double().sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=3, default=[512, 512, 300])
    p.add_argument("--child", choices=["whole", "slabs"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size)))
        return
    rows = []
    for way in ("whole", "slabs"):
        out = subprocess.run([sys.executable, __file__, "--child", way, "--size", *map(str, args.size)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"input {'x'.join(map(str, args.size))} float32 -> {rows[0]['output']}")
    for r in rows:
        print(f"  {r['way']:6s} Spacing: peak RSS {r['before_gib']:.2f} -> {r['peak_gib']:.2f} GiB, "
              f"{r['seconds']:.1f} s, checksum {r['checksum']:.6g}")
    print(f"  slabs / whole: peak x{rows[1]['peak_gib'] / rows[0]['peak_gib']:.2f}, "
          f"time x{rows[1]['seconds'] / rows[0]['seconds']:.2f}")


if __name__ == "__main__":
    main()
