#!/usr/bin/env python
"""Warm compile time and window time of the full-size UX-Net, with and without TorchInductor's weight freezing.

Each run is a fresh process (as each Segment click is): it builds the compiled network, timing the
first call (the build, with TorchInductor's on-disk cache already filled), then times a few 96^3
windows. One warm-up process per variant fills the cache first; then the variants alternate, the
order reversed on odd rounds. Prints medians and the ratios ``frozen / unfrozen``.

* ``unfrozen``  ``compile.FREEZE_WEIGHTS = False``: the weights are inputs of the graph, and TorchInductor's
  disk caches serve both the traced graph (AOTAutograd's cache) and its generated code;
* ``frozen``    ``compile.FREEZE_WEIGHTS = True``: weights as constants, pre-packed for oneDNN
  (TorchInductor's default under freezing); such a graph is traced and generated again in every process.

The engine's own choice (``compile.freezes``) is unfrozen in fp32 and frozen under bf16.

    python tools/benchmark_build.py [--rounds 2] [--windows 3] [--fast]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("unfrozen", "frozen")


def child(variant: str, windows: int, fast: bool) -> None:
    sys.path.insert(0, str(ROOT / "UXNetSegment"))
    import torch
    from torch._dynamo.utils import counters

    from UXNetSegmentLib import compile as uxcompile
    from UXNetSegmentLib.allocator import tune_allocator
    from UXNetSegmentLib.devices import Predictor
    from random_network import random_uxnet

    tune_allocator()
    uxcompile.FREEZE_WEIGHTS = variant == "frozen"

    predictor = Predictor(random_uxnet(), torch.device("cpu"), compile=True, fast=fast, reload=random_uxnet)
    x = torch.rand(1, 1, 96, 96, 96, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    predictor(x)
    build = time.perf_counter() - start
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        predictor(x)
        times.append(time.perf_counter() - start)
    stats = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}
    stats.update({k: v for k, v in counters["aot_autograd"].items() if k.startswith("autograd_cache")})
    print(json.dumps({"build": build, "windows": times, "cache": stats,
                      "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def run(variant: str, windows: int, fast: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--windows", str(windows)] + (["--fast"] if fast else [])
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--fast", action="store_true", help="bf16 autocast (fast mode) instead of fp32")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.windows, args.fast)
        return
    sys.path.insert(0, str(ROOT / "UXNetSegment"))
    import torch
    from UXNetSegmentLib.compile import freezes
    engine = "frozen" if freezes(torch.device("cpu"), torch.bfloat16 if args.fast else None) else "unfrozen"
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}, {'bf16 (fast)' if args.fast else 'fp32 (exact)'}; "
          f"the engine's choice: {engine}")
    results = {v: [] for v in VARIANTS}
    for v in VARIANTS:  # fills the cache (a first, cold build for a variant not built before)
        r = run(v, 1, args.fast)
        print(f"warm-up {v}: build {r['build']:.1f} s, cache {r['cache']}", flush=True)
    for i in range(args.rounds):
        for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            r = run(v, args.windows, args.fast)
            results[v].append(r)
            print(f"round {i + 1} {v}: build {r['build']:.1f} s, windows "
                  f"{', '.join(f'{t:.2f}' for t in r['windows'])} s, peak {r['peak_gib']:.2f} GiB, "
                  f"cache {r['cache']}", flush=True)
    med = {v: {"build": statistics.median(r["build"] for r in results[v]),
               "window": statistics.median(t for r in results[v] for t in r["windows"]),
               "peak": statistics.median(r["peak_gib"] for r in results[v])} for v in VARIANTS}
    for v in VARIANTS:
        print(f"{v:10s} build {med[v]['build']:6.1f} s  window {med[v]['window']:5.2f} s  peak {med[v]['peak']:.2f} GiB")
    e, q = med["unfrozen"], med["frozen"]
    print(f"frozen / unfrozen: build x{q['build'] / e['build']:.2f}, window x{q['window'] / e['window']:.3f}, "
          f"peak x{q['peak'] / e['peak']:.2f}")


if __name__ == "__main__":
    main()
