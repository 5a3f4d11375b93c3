#!/usr/bin/env python
"""Benchmark: mapping finished slabs back onto the input grid, axis by axis against through 8 corners.

Both sinks of the pipeline get the same rows of logits in one process, alternated, on a grid like the
resampled recipe's (input spacing 0.7 x 0.7 x 2.5 mm, processed 1 % coarser). Prints the time of each
round, the ratio, the peak RSS growth of each sink, and the share of voxels with equal labels.

    python tools/benchmark_inverse.py --size 256 256 160 --rounds 2
"""
import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UXNetSegment"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from UXNetSegmentLib.inference import ROWS_PER_CALL  # noqa: E402
from UXNetSegmentLib.inverse_separable import SeparableInverse  # noqa: E402
from UXNetSegmentLib.inverse_stream import StreamingInverse  # noqa: E402
from UXNetSegmentLib.resample import LPS_TO_RAS, GridMap  # noqa: E402


def make_grid(size) -> GridMap:
    spacing = np.array([0.7, 0.7, 2.5])
    image = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    image.SetSpacing(spacing.tolist())
    shape = np.ceil(np.asarray(size) / 1.01).astype(int)
    affine = LPS_TO_RAS @ np.diag(list(spacing * 1.01) + [1.0])
    return GridMap(image, affine, shape, (0, 0, 0), shape)


def run(kind, grid: GridMap, classes: int, uncertainty, seed: int = 0):
    rows, y, z = (int(s) for s in grid.crop_shape)
    gen = torch.Generator().manual_seed(seed)
    part = torch.randn((classes, ROWS_PER_CALL, y, z), generator=gen) * 3
    sink = kind(grid, classes, uncertainty)
    start = time.perf_counter()
    for a in range(0, rows, ROWS_PER_CALL):
        sink(a, part[:, :min(ROWS_PER_CALL, rows - a)])
    labels, _ = sink.result()
    return time.perf_counter() - start, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=3, default=[256, 256, 160], help="input voxels (I J K)")
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--uncertainty", choices=["entropy", "margin"], default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    grid = make_grid(args.size)
    print(f"input {'x'.join(map(str, args.size))}, processed {'x'.join(map(str, grid.crop_shape))}, "
          f"{args.classes} classes, {args.threads} threads, torch {torch.__version__}")
    times = {"separable": [], "corners": []}
    labels = {}
    for r in range(args.rounds):
        order = ["separable", "corners"] if r % 2 == 0 else ["corners", "separable"]
        for name in order:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t, labels[name] = run(SeparableInverse if name == "separable" else StreamingInverse,
                                  grid, args.classes, args.uncertainty)
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2 ** 20
            times[name].append(t)
            print(f"round {r + 1} {name:9s} {t:8.2f} s   peak RSS now "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB (+{grown:.2f})")
    equal = float((labels["separable"] == labels["corners"]).mean())
    sep, cor = statistics.median(times["separable"]), statistics.median(times["corners"])
    print(f"median: separable {sep:.2f} s, corners {cor:.2f} s, ratio x{cor / sep:.1f}; "
          f"labels equal on {100 * equal:.4f} % of voxels")


if __name__ == "__main__":
    main()
