#!/usr/bin/env python
"""Benchmark: the plain official recipe against our exact and fast modes, alternating, in one run.

Every measured run is its own subprocess so that the allocator settings match the product:

* ``plain``  eager PyTorch, glibc's default allocator (no ``MALLOC_*`` or ``GLIBC_TUNABLES`` variables, no
  ``mallopt``),
  MONAI ``sliding_window_inference`` with ``sw_batch_size`` 4 and the full ``Invertd`` —
  :func:`UXNetSegmentLib.reference.reference_segment`;
* ``exact``  :func:`UXNetSegmentLib.api.segment_image` in fp32 (the default) on the checkpoint file, as
  the CLI's ``segment`` runs it: started with the environment the Slicer module gives its child
  (``allocator.child_environment()``: glibc's per-thread cache off), MONAI imported without its unused
  extras, ``tune_allocator()``, and the checkpoint loaded by the engine (so fast mode's frozen build
  releases the module's own weights);
* ``fast``   the same with ``fast=True``.

The network is the official full-size 3D UX-Net (feat 48/96/192/384, hidden 768) with random
weights (layer-scale gammas ~ U(0.5, 1.5) so that every block matters), and the input is a real
CT resampled over its whole field of view to ``--size`` voxels. The recipe (``--recipe native``) has no resampling and
no foreground crop, so the sliding window runs on exactly ``--size`` voxels.

Examples::

    python tools/benchmark.py                      # timed comparison, 160x160x96, overlap 0.25
    python tools/benchmark.py --quick              # smoke test with a small network
    python tools/benchmark.py --memory             # peak RSS only: 256x256x160 @ 0.5 and 512x512x300
    python tools/benchmark.py --warm-cache ...     # the compiled modes' builds cached first (a second run)
    python tools/benchmark.py --rss-trace ...      # also where in each run the resident set peaked
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "UXNetSegment"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

OFFICIAL = dict(feat=(48, 96, 192, 384), hidden=768, depths=(2, 2, 2, 2))
QUICK = dict(feat=(12, 24, 48, 96), hidden=192, depths=(2, 2, 2, 2))
MALLOC_KEYS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
# performance.md: the dense 3x3x3 convs need at least 2.2 s per 96^3 window at 2 threads on the
# AVX-512 host it was measured on (520 GFLOP/s). This machine's own floor is measured in --floor.
REFERENCE_FLOOR_S = 2.2


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def find_ct(path=None) -> Path:
    """The real CT to use: ``--ct``, pyradiomics' lung2 if unpacked in a known place, or LiTS 117."""
    if path:
        return Path(path)
    for cand in [Path("/tmp/perf5/dl/pyradiomics-3.0.1/data/lung2_image.nrrd"),
                 REPO / "Testing" / "Data" / "lung2_image.nrrd"]:
        if cand.exists():
            return cand
    return Path("lits117")


def read_ct(path: Path) -> sitk.Image:
    if str(path) == "lits117":
        import importlib.util
        spec = importlib.util.find_spec("liver_ct_segmentation_package")
        mrc = Path(list(spec.submodule_search_locations)[0]) / "data" / "img_117.mrc"
        raw = mrc.read_bytes()
        words = np.frombuffer(raw[:1024], dtype="<i4")
        nx, ny, nz, mode = (int(w) for w in words[:4])
        dtype = {1: np.int16, 2: np.float32, 6: np.uint16}[mode]
        data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=nx * ny * nz,
                             offset=1024 + int(words[23])).reshape(nz, ny, nx).transpose(2, 1, 0)
        image = sitk.GetImageFromArray(np.ascontiguousarray(data).astype(np.float32))
        image.SetSpacing((0.8, 0.8, 0.8))  # not stored in the file; any spacing works here
        return image
    return sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)


def resized_ct(ct: sitk.Image, size) -> sitk.Image:
    """The whole field of view of ``ct`` resampled (linear) onto ``size`` voxels (i, j, k)."""
    old_size, old_spacing = np.array(ct.GetSize()), np.array(ct.GetSpacing())
    spacing = old_size * old_spacing / np.array(size)
    out = sitk.Resample(ct, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(),
                        tuple(float(s) for s in spacing), ct.GetDirection(), -1024.0, sitk.sitkFloat32)
    return out


def make_weights(path: Path, classes: int, arch: dict, seed: int = 0) -> None:
    import torch
    from random_network import random_uxnet
    net = random_uxnet(classes, seed, depths=arch["depths"], feat=arch["feat"], hidden=arch["hidden"])
    torch.save(net.state_dict(), str(path))


def make_spec(path: Path, classes: int, overlap: float, spacing=None) -> None:
    spec = {"name": "benchmark", "modality": "CT", "labels": {str(i): f"class {i}" for i in range(1, classes)},
            "spacing": spacing, "intensity_window": [-175, 250], "roi_size": [96, 96, 96], "overlap": overlap,
            "crop_foreground": False}
    path.write_text(json.dumps(spec))


def recipe_spec(args, work: Path, image_path: Path, overlap: float) -> None:
    """``spec.json`` for ``image_path``: no resampling (``--recipe native``: input voxels = processed voxels),
    or resampling to a spacing 1% coarser (``resampled``: the grid keeps nearly its size (MONAI treats grids
    within 0.1% as equal and would not resample), the results are
    interpolated back onto the input grid as in the FLARE/AMOS recipes)."""
    spacing = None
    if args.recipe == "resampled":
        spacing = [round(s * 1.01, 6) for s in sitk.ReadImage(str(image_path)).GetSpacing()]
    make_spec(work / "spec.json", args.classes, overlap, spacing)


# ----------------------------------------------------------------------------------------------
# Workers (one measured run each)
# ----------------------------------------------------------------------------------------------
def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Replay:
    """Runs the real model for the first ``n`` calls, then returns the first output (memory runs only)."""

    def __init__(self, fn, n: int):
        self.fn, self.n, self.calls, self.cache = fn, n, 0, None

    def __call__(self, x):
        self.calls += 1
        if self.calls <= self.n or self.cache is None or self.cache.shape[0] < x.shape[0]:
            out = self.fn(x)
            if self.cache is None or out.shape[0] >= self.cache.shape[0]:
                self.cache = out
            return out
        return self.cache[:x.shape[0]].clone()


def worker(args) -> None:
    if args.worker != "plain":
        from UXNetSegmentLib.lean_import import import_monai_lean
        import_monai_lean()  # as the CLI's segment command does
    import torch
    from UXNetSegmentLib.catalogue import load_spec
    from UXNetSegmentLib.checkpoint import load_network
    result = {"mode": args.worker, "threads": torch.get_num_threads(),
              "malloc_env": {k: os.environ[k] for k in MALLOC_KEYS if k in os.environ}}
    if args.worker != "plain":
        from UXNetSegmentLib.allocator import tune_allocator
        result["mallopt"] = tune_allocator()
    image = sitk.ReadImage(args.image)
    spec = load_spec(args.spec)
    if args.worker == "plain":
        net = load_network(args.weights, spec.num_classes)
    else:
        # As the CLI and Slicer's child process load it: the engine's own copy (which its compiled build may
        # release), reused below by segment_image.
        from UXNetSegmentLib.api import cached_network
        net = cached_network(args.weights, spec.num_classes)

        def reload():
            return cached_network(args.weights, spec.num_classes, fresh=True)
    result["rss_loaded"] = peak_rss_bytes()
    trace = None
    if args.rss_trace:
        from rss_trace import RssTrace
        trace = RssTrace()
        trace.start()
        trace.mark("loaded")
    windows = []
    if args.worker == "plain":
        from UXNetSegmentLib.reference import reference_segment

        class Timed(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                t = time.perf_counter()
                y = self.inner(x)
                windows.extend([(time.perf_counter() - t) / x.shape[0]] * x.shape[0])
                return y

        model = Timed(net)
        call = Replay(model, args.replay) if args.replay else model
        start = time.perf_counter()
        labels = reference_segment(image, spec, call, overlap=args.overlap, sw_batch_size=4)
        result["seconds"] = time.perf_counter() - start
        result["per_window"] = windows
    else:
        from UXNetSegmentLib.api import segment_image
        events = []

        def progress(stage, fraction, detail):
            events.append((time.perf_counter(), stage, fraction, detail))
            if trace is not None:
                trace.mark(stage, detail)

        start = time.perf_counter()
        if args.replay:
            from UXNetSegmentLib.devices import Predictor
            from UXNetSegmentLib.pipeline import run_recipe
            from UXNetSegmentLib.resample import to_image
            predictor = Predictor(net, torch.device("cpu"), fast=args.worker == "fast", progress=progress,
                                  reload=reload)
            raw = run_recipe(image, spec, Replay(predictor, args.replay), overlap=args.overlap, progress=progress)
            labels = to_image(raw.labels, image)
        else:
            labels = segment_image(image, spec, weights=args.weights, device="cpu", overlap=args.overlap,
                                   fast=args.worker == "fast", progress=progress).labels
        result["seconds"] = time.perf_counter() - start
        stamps = [t for t, s, _, _ in events if s == "inference"]
        compile_stamps = [t for t, s, _, _ in events if s == "compile"]
        result["compile_seconds"] = compile_stamps[-1] - compile_stamps[0] if len(compile_stamps) >= 2 else 0.0
        result["warnings"] = [d for _, s, _, d in events if s == "warning"]
        # The first window's time is inside the compile stage when compiling; later ones are clean.
        result["per_window"] = [b - a for a, b in zip(stamps, stamps[1:])]
        if not compile_stamps and stamps:
            first = [t for t, s, _, _ in events if s == "preprocess"][-1]
            result["per_window"].insert(0, stamps[0] - first)
    result["peak_rss"] = peak_rss_bytes()
    if trace is not None:
        trace.mark("end")
        trace.stop()
        result["rss_trace"] = trace.marks
    result["windows"] = len(windows) if args.worker == "plain" else len([1 for e in events if e[1] == "inference"])
    if args.labels:
        np.save(args.labels, sitk.GetArrayFromImage(labels))
    Path(args.out).write_text(json.dumps(result))


def floor_worker(args) -> None:
    """Rate of one dense 48->48 3x3x3 conv on 96^3, channels-last fp32 (and native bf16 where the CPU has it),
    and the network's dense conv FLOPs."""
    import torch
    from UXNetSegmentLib.allocator import tune_allocator
    from UXNetSegmentLib.devices import cpu_has_bf16
    from UXNetSegmentLib.catalogue import load_spec
    from UXNetSegmentLib.checkpoint import load_network
    tune_allocator()
    conv = torch.nn.Conv3d(48, 48, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 48, 96, 96, 96).contiguous(memory_format=torch.channels_last_3d)

    def timed(conv, x):  # four calls, the first a warm-up
        times = []
        with torch.no_grad():
            for _ in range(4):
                t = time.perf_counter()
                conv(x)
                times.append(time.perf_counter() - t)
        return times, 2 * 48 * 48 * 27 * 96 ** 3 / min(times[1:])

    times, rate = timed(conv, x)
    bf16_rate = None
    if cpu_has_bf16():  # the same conv in native bf16 (fast mode's floor); emulated bf16 would say nothing
        bf16_rate = timed(conv.to(torch.bfloat16), x.to(torch.bfloat16))[1]
    net = load_network(args.weights, load_spec(args.spec).num_classes)
    dense, total = [0.0], [0.0]

    def hook(mod, inp, out):
        k = int(np.prod(mod.kernel_size))
        if isinstance(mod, torch.nn.ConvTranspose3d):
            flops = 2.0 * inp[0].numel() * mod.out_channels * k / mod.groups
        else:
            flops = 2.0 * out.numel() * (mod.in_channels // mod.groups) * k
        total[0] += flops
        if mod.groups == 1 and k == 27 and not isinstance(mod, torch.nn.ConvTranspose3d):
            dense[0] += flops

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.zeros(1, 1, 32, 32, 32))  # every layer scales with the voxel count: x27 for 96^3
    Path(args.out).write_text(json.dumps({"rate": rate, "bf16_rate": bf16_rate, "dense_flops": dense[0] * 27,
                                          "conv_flops": total[0] * 27, "conv_times": times}))


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
def child_env(mode: str) -> dict:
    from UXNetSegmentLib.allocator import child_environment
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_KEYS}
    env["PYTHONPATH"] = str(REPO / "UXNetSegment")
    if mode != "plain":
        env.update(child_environment())
    return env


def run_worker(mode: str, work: Path, image: Path, overlap: float, tag: str, replay: int = 0,
               rss_trace: bool = False) -> dict:
    out, labels = work / f"{tag}.json", work / f"{tag}.npy"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--image", str(image),
           "--weights", str(work / "weights.pth"), "--spec", str(work / "spec.json"), "--overlap", str(overlap),
           "--out", str(out), "--labels", str(labels), "--replay", str(replay)] + (["--rss-trace"] if rss_trace else [])
    t = time.perf_counter()
    subprocess.run(cmd, env=child_env(mode), check=True)
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - t
    result["labels_file"] = str(labels)
    return result


def print_trace(result: dict) -> None:
    if result.get("rss_trace"):
        from rss_trace import summarize
        print("    where the resident set peaked (progress marks around it):")
        for line in summarize(result["rss_trace"]):
            print("      " + line, flush=True)


def dice_mean(a: np.ndarray, b: np.ndarray) -> float:
    scores = []
    for v in np.union1d(np.unique(a), np.unique(b)):
        if v == 0:
            continue
        x, y = a == v, b == v
        scores.append(2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores)) if scores else 1.0


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def gib(b: float) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


def timed_comparison(args, work: Path) -> dict:
    ct = read_ct(find_ct(args.ct))
    image_path = work / "ct.nrrd"
    sitk.WriteImage(resized_ct(ct, args.size), str(image_path))
    recipe_spec(args, work, image_path, args.overlap)
    modes = args.modes.split(",")
    runs = {m: [] for m in modes}
    floors = []
    warmup = {}
    if args.warm_cache:  # a user's second run: TorchInductor's on-disk cache already holds this network's build
        for mode in [m for m in modes if m != "plain"]:
            print(f"[{time.strftime('%H:%M:%S')}] cache warm-up: {mode} (one real window, the rest replayed)",
                  flush=True)
            r = run_worker(mode, work, image_path, args.overlap, f"warm_{mode}", replay=1)
            warmup[mode] = r["compile_seconds"]
            print(f"    compile {r['compile_seconds']:.1f} s", flush=True)
    for rep in range(args.repeats):
        order = modes if rep % 2 == 0 else modes[::-1]
        for mode in order:
            print(f"[{time.strftime('%H:%M:%S')}] repeat {rep + 1}/{args.repeats}: {mode} (load {load_average()})",
                  flush=True)
            r = run_worker(mode, work, image_path, args.overlap, f"{mode}{rep}", rss_trace=args.rss_trace)
            r["load"] = load_average()
            runs[mode].append(r)
            print(f"    {r['seconds']:.1f} s, {statistics.median(r['per_window']):.2f} s/window, "
                  f"peak RSS {gib(r['peak_rss'])}", flush=True)
            print_trace(r)
        if not args.no_floor:
            floors.append(run_worker("floor", work, image_path, args.overlap, f"floor{rep}"))
    ref = np.load(runs["plain"][0]["labels_file"]) if "plain" in runs else None
    summary = {"size": args.size, "overlap": args.overlap, "ct": str(find_ct(args.ct)), "runs": runs,
               "floors": floors, "modes": {}, "warmup_compile_seconds": warmup}
    for mode, rs in runs.items():
        labels = np.load(rs[0]["labels_file"])
        s = {"seconds": [r["seconds"] for r in rs], "per_window_median": [statistics.median(r["per_window"]) for r in rs],
             "peak_rss": [r["peak_rss"] for r in rs], "compile_seconds": [r.get("compile_seconds", 0.0) for r in rs],
             "windows": rs[0]["windows"], "warnings": rs[0].get("warnings", [])}
        if ref is not None:
            s["agreement_vs_plain"] = float((labels == ref).mean())
            s["dice_vs_plain"] = dice_mean(labels, ref)
        if "exact" in runs and mode == "fast":
            exact = np.load(runs["exact"][0]["labels_file"])
            s["agreement_vs_exact"] = float((labels == exact).mean())
            s["dice_vs_exact"] = dice_mean(labels, exact)
        summary["modes"][mode] = s
    if floors:
        rate = statistics.median(f["rate"] for f in floors)
        summary["floor"] = {"rate_gflops": rate / 1e9, "dense_gflop": floors[0]["dense_flops"] / 1e9,
                            "conv_gflop": floors[0]["conv_flops"] / 1e9,
                            "seconds_per_window": floors[0]["dense_flops"] / rate}
        bf16 = [f["bf16_rate"] for f in floors if f.get("bf16_rate")]
        if bf16:
            summary["floor"]["bf16_rate_gflops"] = statistics.median(bf16) / 1e9
            summary["floor"]["bf16_seconds_per_window"] = floors[0]["dense_flops"] / statistics.median(bf16)
    return summary


def print_summary(summary: dict) -> None:
    modes = summary["modes"]
    plain = modes.get("plain")
    print(f"\nCT {summary['ct']} resampled to {'x'.join(map(str, summary['size']))}, overlap {summary['overlap']}")
    if "floor" in summary:
        f = summary["floor"]
        print(f"floor on this machine: dense 3x3x3 convs {f['dense_gflop']:.0f} GFLOP/window at "
              f"{f['rate_gflops']:.0f} GFLOP/s -> {f['seconds_per_window']:.2f} s/window "
              f"(performance.md host: {REFERENCE_FLOOR_S} s)")
        if "bf16_seconds_per_window" in f:
            print(f"bf16 floor: {f['bf16_rate_gflops']:.0f} GFLOP/s -> {f['bf16_seconds_per_window']:.2f} s/window")
    for mode, seconds in summary.get("warmup_compile_seconds", {}).items():
        print(f"{mode} compile in the cache warm-up process (before the timed runs): {seconds:.0f} s")
    for mode, s in modes.items():
        line = (f"{mode:6s} windows {s['windows']:3d}  whole {statistics.median(s['seconds']):7.1f} s  "
                f"per window {statistics.median(s['per_window_median']):6.2f} s  "
                f"peak RSS {gib(max(s['peak_rss']))}")
        if plain is not None and mode != "plain":
            ratio = statistics.median(plain["seconds"]) / statistics.median(s["seconds"])
            wratio = statistics.median(plain["per_window_median"]) / statistics.median(s["per_window_median"])
            line += f"  x{ratio:.2f} whole, x{wratio:.2f} per window vs plain"
        if s.get("compile_seconds") and max(s["compile_seconds"]):
            line += f"  (compile {statistics.median(s['compile_seconds']):.0f} s)"
        if "floor" in summary:
            f = summary["floor"]
            bf16 = mode == "fast" and "bf16_seconds_per_window" in f
            floor_s = f["bf16_seconds_per_window" if bf16 else "seconds_per_window"]
            line += f"  {'bf16 ' if bf16 else ''}floor ratio {statistics.median(s['per_window_median']) / floor_s:.2f}"
        if "agreement_vs_plain" in s and mode != "plain":
            line += f"  labels equal to plain {100 * s['agreement_vs_plain']:.3f}%"
        if "dice_vs_exact" in s:
            line += f"  Dice vs exact {s['dice_vs_exact']:.4f}"
        print(line)
        for w in s.get("warnings", []):
            print(f"       warning: {w}")


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    names = list(summary["modes"])
    for x, name in enumerate(names):
        values = [v for r in summary["runs"][name] for v in r["per_window"]]
        ax.scatter(np.full(len(values), x) + np.linspace(-0.15, 0.15, len(values)), values, s=12, alpha=0.6)
        ax.bar(x, statistics.median(values), width=0.6, alpha=0.35)
        ax.text(x, statistics.median(values), f"{statistics.median(values):.1f} s", ha="center", va="bottom")
    if "floor" in summary:
        ax.axhline(summary["floor"]["seconds_per_window"], color="k", ls="--",
                   label=f"fp32 floor here ({summary['floor']['seconds_per_window']:.1f} s)")
        if "bf16_seconds_per_window" in summary["floor"]:
            ax.axhline(summary["floor"]["bf16_seconds_per_window"], color="tab:purple", ls="-.",
                       label=f"bf16 floor here ({summary['floor']['bf16_seconds_per_window']:.1f} s)")
    ax.axhline(REFERENCE_FLOOR_S, color="grey", ls=":", label=f"fp32 floor, AVX-512 host ({REFERENCE_FLOOR_S} s)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylabel("seconds per 96³ window")
    ax.set_title(f"3D UX-Net, {'x'.join(map(str, summary['size']))} CT, overlap {summary['overlap']}")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))


def memory_runs(args, work: Path) -> dict:
    ct = read_ct(find_ct(args.ct))
    results = {}
    for size, overlap in [((256, 256, 160), 0.5), ((512, 512, 300), 0.5)]:
        if args.memory_sizes and "x".join(map(str, size)) not in args.memory_sizes.split(","):
            continue
        tag = "x".join(map(str, size))
        image_path = work / f"ct_{tag}.nrrd"
        sitk.WriteImage(resized_ct(ct, size), str(image_path))
        recipe_spec(args, work, image_path, overlap)
        for mode in args.modes.split(","):
            if args.memory_skip and f"{mode} {tag}" in args.memory_skip.split(","):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] memory {tag}: {mode} (load {load_average()})", flush=True)
            r = run_worker(mode, work, image_path, overlap, f"mem_{mode}_{tag}", replay=args.replay,
                           rss_trace=args.rss_trace)
            from UXNetSegmentLib.inference import count_windows
            n = count_windows(size, (96, 96, 96), overlap)
            results[f"{mode} {tag} {args.recipe}"] = {"peak_rss": r["peak_rss"], "rss_loaded": r["rss_loaded"],
                                        "windows": n, "real_calls": args.replay, "seconds": r["seconds"]}
            print(f"    peak RSS {gib(r['peak_rss'])} (after loading: {gib(r['rss_loaded'])}), "
                  f"{n} windows, the first {args.replay} network call(s) real", flush=True)
            print_trace(r)
    return results


def accuracy_runs(args) -> dict:
    """Fast mode's reduced precision against exact fp32 on a trained model: Dice per label, in-process.

    bf16 autocast is forced even where the CPU lacks native bf16 (then it is emulated: same numbers,
    slower), so the accuracy of fast mode can be stated on any machine. ``--accuracy-overlaps`` adds exact
    mode at lower sliding-window overlaps (what fewer windows would cost), against the model's own overlap.
    """
    import torch
    from UXNetSegmentLib.catalogue import load_spec
    from UXNetSegmentLib.checkpoint import load_network
    from UXNetSegmentLib.allocator import tune_allocator
    from UXNetSegmentLib.devices import Predictor
    from UXNetSegmentLib.imageio import read_image
    from UXNetSegmentLib.pipeline import run_recipe
    tune_allocator()
    spec = load_spec(args.accuracy_spec)
    net = load_network(args.accuracy_weights, spec.num_classes)
    results = {}
    for path in args.accuracy_images:
        image = read_image(path)
        labels, seconds = {}, {}
        runs = [("exact", None, None), ("bf16", torch.bfloat16, None)]  # (name, autocast dtype, overlap)
        runs += [(f"exact_overlap{o}", None, o) for o in args.accuracy_overlaps]
        for name, dtype, overlap in runs:
            predictor = Predictor(net, torch.device("cpu"), dtype=dtype, compile=False)
            start = time.perf_counter()
            labels[name] = run_recipe(image, spec, predictor, overlap=overlap).labels
            seconds[name] = time.perf_counter() - start
        entry = results.setdefault(Path(path).name, {"size": list(image.GetSize()), "seconds": seconds})
        for name in labels:
            if name == "exact":
                continue
            a, b = labels["exact"], labels[name]
            dice = {}
            for value, label in spec.labels.items():
                x, y = a == value, b == value
                dice[label.name] = float(2.0 * (x & y).sum() / max(1, x.sum() + y.sum()))
            entry[f"dice_{name}_vs_exact"] = dice
            entry[f"voxels_equal_{name}"] = float((a == b).mean())
            print(f"{Path(path).name} {image.GetSize()}, {name} vs exact (overlap {spec.overlap}): voxels equal "
                  f"{100 * (a == b).mean():.3f}%, Dice " + ", ".join(f"{k} {v:.4f}" for k, v in dice.items())
                  + f"; {seconds['exact']:.1f} s exact, {seconds[name]:.1f} s", flush=True)
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ct", help="real CT file (default: pyradiomics lung2 if unpacked, else LiTS case 117)")
    p.add_argument("--size", type=int, nargs=3, default=[160, 160, 96], help="voxels the CT is resampled to")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--modes", default="plain,exact,fast")
    p.add_argument("--quick", action="store_true", help="small network, 96x96x64, one repeat: a smoke test")
    p.add_argument("--memory", action="store_true", help="peak RSS only, 256x256x160 and 512x512x300 at overlap 0.5")
    p.add_argument("--recipe", default="native", choices=["native", "resampled"],
                   help="native: no resampling (FeTA-like); resampled: interpolated back (FLARE/AMOS-like)")
    p.add_argument("--memory-sizes", default="", help="comma list, e.g. 256x256x160")
    p.add_argument("--memory-skip", default="", help="comma list of 'MODE SIZE' to skip, e.g. 'plain 512x512x300'")
    p.add_argument("--replay", type=int, default=4,
                   help="memory runs: network calls that really run (later ones reuse the first output); the "
                        "first runs inside the compiled build, so at least 2-3 are needed for the windows' own heap")
    p.add_argument("--no-floor", action="store_true")
    p.add_argument("--rss-trace", action="store_true",
                   help="sample the resident set in each worker and print where it peaked (tools/rss_trace.py)")
    p.add_argument("--warm-cache", action="store_true",
                   help="before the timed runs, build each compiled mode once in a throwaway process, so the timed "
                        "runs find TorchInductor's on-disk cache warm (a user's second run on the machine)")
    p.add_argument("--accuracy", action="store_true",
                   help="fast (bf16) and lower overlaps vs exact Dice on a trained model")
    p.add_argument("--accuracy-spec", default=str(REPO / "Resources" / "Models" / "demo_brain.json"))
    p.add_argument("--accuracy-weights", default=str(REPO / "Resources" / "Weights" / "demo_brain.pth"))
    p.add_argument("--accuracy-images", nargs="+",
                   default=[str(REPO / "Resources" / "SampleData" / "colin27_t1_2mm.nrrd")])
    p.add_argument("--accuracy-overlaps", type=float, nargs="*", default=[0.25],
                   help="also exact mode at these overlaps, against exact at the model's own")
    p.add_argument("--workdir", default="/tmp/uxnet-benchmark")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--plot", help="write the per-window plot here (PNG)")
    # worker mode (internal)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    for name in ("--image", "--weights", "--spec", "--out", "--labels"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "floor":
        return floor_worker(args)
    if args.worker:
        return worker(args)
    if args.accuracy:
        summary = {"accuracy": accuracy_runs(args)}
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1))
        return None
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    arch = QUICK if args.quick else OFFICIAL
    if args.quick:
        args.size, args.repeats = [96, 96, 64], 1
    make_weights(work / "weights.pth", args.classes, arch)
    print(f"load average at start: {load_average()}; network {arch}; {args.classes} classes", flush=True)
    if args.memory:
        summary = {"memory": memory_runs(args, work)}
    else:
        summary = timed_comparison(args, work)
        print_summary(summary)
        if args.plot:
            plot(summary, Path(args.plot))
    summary["load_average_end"] = load_average()
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
