#!/usr/bin/env python
"""Peak RSS and time of single 96^3 windows of the full-size network, one child process per run, under the
product's allocator setting (``MALLOC_MMAP_MAX_=0``) or a 128 MiB mmap threshold, alternated (a diagnosis
tool for the run-to-run spread of the peak; see BENCHMARKS.md).

    python tools/memory_window.py --runs 2 --windows 4
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UXNetSegment"))

SETTINGS = {
    "mmap_max_0": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"},
    "mmap_threshold_128MiB": {"MALLOC_MMAP_THRESHOLD_": "134217728", "MALLOC_TRIM_THRESHOLD_": "2147483647"},
}


def child(setting: str, windows: int) -> None:
    import torch
    from UXNetSegmentLib.allocator import tune_allocator
    from UXNetSegmentLib.devices import Predictor
    from UXNetSegmentLib.network import UXNet
    if setting == "mmap_max_0":
        tune_allocator()
    torch.manual_seed(0)
    predictor = Predictor(UXNet(in_chans=1, out_chans=16).eval(), torch.device("cpu"), compile=False)  # eager
    x = torch.randn(1, 1, 96, 96, 96)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    with torch.no_grad():
        for _ in range(windows):
            t = time.perf_counter()
            predictor(x)
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak": peak, "times": times}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=2, help="processes per setting, alternated")
    p.add_argument("--windows", type=int, default=4, help="windows per process (the first one warms up)")
    p.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.windows)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for run in range(args.runs):
        for name, env in SETTINGS.items():
            out = subprocess.run([sys.executable, __file__, "--child", name, "--windows", str(args.windows)],
                                 env={**base, **env}, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            later = sorted(r["times"][1:]) or r["times"]
            print(f"run {run + 1} {name:>22}: peak {r['peak'] / 2**30:.2f} GiB (+{(r['peak'] - r['before']) / 2**30:.2f} "
                  f"for the windows), median later window {later[len(later) // 2]:.2f} s", flush=True)


if __name__ == "__main__":
    main()
