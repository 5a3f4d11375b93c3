#!/usr/bin/env python
"""One 96^3 window of the full-size UX-Net through the engine's predictor paths, alternated in one process.

Variants (each its own copy of the same weights: random, layer-scale gammas ~ U(0.5, 1.5)):

* ``standard``       eager PyTorch, NCDHW fp32 (``UXNET_CHANNELS_LAST=0``, no compile);
* ``channels-last``  the eager channels-last exact path (``cpu_layout.py``);
* ``compiled``       TorchInductor, fp32, Winograd 3x3x3 convs (exact mode on AVX-512 CPUs);
* ``compiled-direct`` the same with direct 3x3x3 convs (``UXNET_WINOGRAD=0``);
* ``compiled-bf16``  the same under bf16 autocast, weights frozen (fast mode on CPUs with AVX512-BF16 or AMX);
* ``eager-bf16``     eager bf16 autocast, no compile.

All run with the engine's allocator tuning. Each round runs every variant once, the order reversed
on odd rounds; compile time (the first call) is printed apart. Prints the median per variant, its
ratio to ``standard``, the logit difference and argmax agreement with ``standard``.

    python tools/benchmark_window.py [--threads 2] [--rounds 3] [--variants standard,channels-last,compiled]
"""
import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UXNetSegment"))

import torch  # noqa: E402

from UXNetSegmentLib.allocator import tune_allocator  # noqa: E402
from UXNetSegmentLib.devices import Predictor  # noqa: E402
from random_network import random_uxnet  # noqa: E402

VARIANTS = {  # name: (channels-last eager allowed, compile, autocast dtype, Winograd)
    "standard": (False, False, None, False),
    "channels-last": (True, False, None, False),
    "compiled": (False, True, None, True),
    "compiled-direct": (False, True, None, False),
    "compiled-bf16": (False, True, torch.bfloat16, True),
    "eager-bf16": (False, False, torch.bfloat16, False),
}


def predictor(net: torch.nn.Module, name: str) -> Predictor:
    channels_last, compile_, dtype, winograd = VARIANTS[name]
    switches = {"UXNET_CHANNELS_LAST": channels_last, "UXNET_WINOGRAD": winograd}  # read once, by the constructor
    saved = {k: os.environ.get(k) for k in switches}
    os.environ.update({k: "1" if on else "0" for k, on in switches.items()})
    try:
        return Predictor(copy.deepcopy(net), torch.device("cpu"), compile=compile_, dtype=dtype)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {','.join(VARIANTS)}")
    tune_allocator()
    torch.set_num_threads(args.threads)
    net = random_uxnet(args.classes)
    x = torch.rand(1, 1, 96, 96, 96)
    models = {n: predictor(net, n) for n in names}
    times = {n: [] for n in names}
    outs = {}
    for n in names:  # first call: compile (or warm-up) time, not counted
        t = time.perf_counter()
        outs[n] = models[n](x)
        print(f"first call {n}: {time.perf_counter() - t:.1f} s", flush=True)
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            outs[n] = models[n](x)
            times[n].append(time.perf_counter() - t)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names), flush=True)
    base = names[0]
    print(f"\n{args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"torch {torch.__version__}; ratios and differences against {base}")
    for n in names:
        med = statistics.median(times[n])
        diff = float((outs[n] - outs[base]).abs().max())
        same = float((outs[n].argmax(1) == outs[base].argmax(1)).float().mean())
        print(f"{n:14s} median {med:6.2f} s (min {min(times[n]):.2f})  x{statistics.median(times[base]) / med:.2f}"
              f"  max |d logit| {diff:.1e}  argmax equal {100 * same:.4f}%")


if __name__ == "__main__":
    main()
