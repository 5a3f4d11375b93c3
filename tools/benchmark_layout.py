#!/usr/bin/env python
"""One 96^3 window of the full-size UX-Net: standard NCDHW eager against the channels-last exact path.

Both run in this one process, alternated, with the engine's allocator tuning and the same weights
(random, layer-scale gammas ~ U(0.5, 1.5)); prints each pair, the ratio and the logit difference.

    .venv/bin/python tools/benchmark_layout.py [--threads 2] [--rounds 3] [--classes 16]
"""
import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UXNetSegment"))

import torch  # noqa: E402

from UXNetSegmentLib.cpu_layout import keep_channels_last, to_channels_last  # noqa: E402
from UXNetSegmentLib.devices import tune_allocator  # noqa: E402
from UXNetSegmentLib.network import UXNet  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--classes", type=int, default=16)
    args = p.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UXNet(1, args.classes).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.5, 1.5)
    fast = keep_channels_last(copy.deepcopy(net))
    x = torch.rand(1, 1, 96, 96, 96)
    ratios = []
    with torch.no_grad():
        for r in range(args.rounds):
            order = [("standard", net, x), ("channels-last", fast, to_channels_last(x))]
            times, outs = {}, {}
            for name, model, inp in (order if r % 2 == 0 else order[::-1]):
                t = time.perf_counter()
                outs[name] = model(inp)
                times[name] = time.perf_counter() - t
            ratios.append(times["standard"] / times["channels-last"])
            diff = float((outs["standard"] - outs["channels-last"]).abs().max())
            same = float((outs["standard"].argmax(1) == outs["channels-last"].argmax(1)).float().mean())
            print(f"round {r + 1}: standard {times['standard']:.2f} s, channels-last {times['channels-last']:.2f} s, "
                  f"ratio x{ratios[-1]:.2f}, max |d logit| {diff:.1e}, argmax equal {100 * same:.4f}%", flush=True)
    ratios.sort()
    print(f"median ratio standard / channels-last: x{ratios[len(ratios) // 2]:.2f} ({args.threads} threads)")


if __name__ == "__main__":
    main()
