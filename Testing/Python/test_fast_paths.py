"""The compiled (TorchInductor) path: same labels as eager and the plain recipe, built once.

Compiling a whole UX-Net takes minutes on a loaded 2-core machine, so the default tests compile a
small segmentation network made of UX-Net's own kinds of layers (dense 3x3x3, which the compiled path
computes by Winograd, here a slab at a time, and depthwise 7x7x7 convs, instance norm, GELU, transposed conv, MONAI's output block) through the real pipeline; the
tiny UX-Net itself is compiled in the ``slow`` test.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.blocks import UnetOutBlock

from engine_helpers import synthetic_ct, tiny_network, tiny_spec
from UXNetSegmentLib import compile as uxcompile
from UXNetSegmentLib.api import segment_image
from UXNetSegmentLib.devices import (AUTO_COMPILE_CPU_CAPABILITIES, AUTO_COMPILE_MIN_PARAMS, Predictor,
                                     cpu_capability, cpu_has_bf16, fast_dtype, parameter_count, want_compile)
from UXNetSegmentLib.reference import reference_segment
from UXNetSegmentLib import winograd as W
from UXNetSegmentLib import winograd_slabs as S
from UXNetSegmentLib.winograd import WinogradConv3d


def run(image, spec, net, events, **kw):
    result = segment_image(image, spec, network=net, device="cpu",
                           progress=lambda s, f, d: events.append((s, f, d)), **kw)
    return sitk.GetArrayFromImage(result.labels)


class MiniSegmenter(torch.nn.Module):
    """``(B, 1, X, Y, Z)`` -> ``(B, classes, X, Y, Z)`` logits; X, Y, Z even. Has ``.out.conv.conv`` like UXNet."""

    def __init__(self, classes: int = 5, width: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = torch.nn.Conv3d(1, width, 3, padding=1)
        self.norm = torch.nn.InstanceNorm3d(width, affine=True)
        self.mix = torch.nn.Conv3d(width, width, 3, padding=1)  # dense 3x3x3: Winograd's, when compiled
        self.down = torch.nn.Conv3d(width, width, 2, stride=2)
        self.depthwise = torch.nn.Conv3d(width, width, 7, padding=3, groups=width)
        self.up = torch.nn.ConvTranspose3d(width, width, 2, stride=2)
        self.out = UnetOutBlock(3, width, classes)
        with torch.no_grad():
            self.stem.weight.mul_(8.0)

    def forward(self, x):
        skip = torch.nn.functional.gelu(self.norm(self.stem(x)))
        skip = skip + self.mix(skip)
        y = self.up(torch.nn.functional.gelu(self.depthwise(self.down(skip))))
        return self.out(y + skip)


@pytest.fixture(scope="module")
def case():
    image = synthetic_ct(size=(40, 36, 22), spacing=(1.0, 1.2, 2.4))
    spec = tiny_spec(spacing=[1.5, 1.5, 2.0], overlap=0.5)
    return image, spec


@pytest.mark.parametrize("make_net", [
    pytest.param(lambda: MiniSegmenter(seed=11).eval(), id="mini"),
    pytest.param(lambda: tiny_network(seed=11), id="tiny-uxnet", marks=pytest.mark.slow),
])
def test_compiled_labels_equal_eager_and_plain_and_compile_once(case, monkeypatch, make_net):
    image, spec = case
    net = make_net()
    monkeypatch.setenv("UXNET_COMPILE", "0")
    eager_events = []
    eager = run(image, spec, net, eager_events)
    assert "compile" not in {s for s, _, _ in eager_events}

    monkeypatch.setenv("UXNET_COMPILE", "1")
    # Every Winograd layer a slab at a time (as UX-Net's 96^3 stage goes), two tile rows a slab.
    monkeypatch.setattr(W, "MAX_TRANSFORMED_BYTES", 0)
    monkeypatch.setattr(S, "SLAB_BYTES", 2 * W.IN_TILE ** 3 * 8 * 8 * 64 * 4)
    slab_calls = []
    real_slabs = S.conv3d_slabs
    monkeypatch.setattr(S, "conv3d_slabs", lambda *a: slab_calls.append(a[0].shape) or real_slabs(*a))
    first_events = []
    compiled = run(image, spec, net, first_events)
    assert slab_calls, "no layer went through the Winograd slab operator"
    stages = [s for s, _, _ in first_events]
    assert "warning" not in stages, first_events
    compile_events = [(f, d) for s, f, d in first_events if s == "compile"]
    assert compile_events[0] == (0.0, "compiling the network (once per process)…")
    assert compile_events[-1][0] == 1.0
    # The compile is reported before the first window's progress, then never again.
    assert stages.index("compile") < stages.index("inference")
    assert (compiled == eager).mean() >= 0.999

    again_events = []
    again = run(image, spec, net, again_events)
    assert "compile" not in {s for s, _, _ in again_events}
    assert np.array_equal(again, compiled)

    plain = sitk.GetArrayFromImage(reference_segment(image, spec, net, sw_batch_size=4))
    assert (compiled == plain).mean() >= 0.999

    # The same network and window shape through a new Predictor: the process-wide build is reused.
    x = torch.rand((1, 1) + tuple(spec.roi_size))
    predictor = Predictor(net, torch.device("cpu"), compile=True)
    out = predictor(x)
    assert predictor.compiling
    assert any(isinstance(m, WinogradConv3d) for m in predictor.network.modules())
    with torch.no_grad():
        assert float((out - net(x)).abs().max()) < 1e-3


def test_compiler_failure_falls_back_to_eager_with_a_warning(case, monkeypatch):
    """No working C++ compiler: the run still finishes, eager, and says so once."""
    import torch._inductor.config as inductor_config
    image, spec = case
    net = MiniSegmenter(classes=5, width=6, seed=12).eval()  # a new graph: no cached build
    monkeypatch.setenv("UXNET_COMPILE", "1")
    events = []
    # TorchInductor's own patch(): monkeypatch's undo would leave its config without these keys for later tests.
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        labels = run(image, spec, net, events)
    warnings = [d for s, _, d in events if s == "warning"]
    assert len(warnings) == 1 and "running eager PyTorch" in warnings[0]
    monkeypatch.setenv("UXNET_COMPILE", "0")
    assert np.array_equal(labels, run(image, spec, net, []))


def test_compile_switch_and_automatic_choice(monkeypatch):
    small = tiny_network()
    assert parameter_count(small) < AUTO_COMPILE_MIN_PARAMS
    monkeypatch.delenv("UXNET_COMPILE", raising=False)
    assert not want_compile(small)             # tiny networks: compiling would not pay back
    big = torch.nn.Linear(2500, 2500)          # 6.25 M parameters, like an official-size model
    assert want_compile(big, device=torch.device("cpu")) == (cpu_capability() in AUTO_COMPILE_CPU_CAPABILITIES)
    assert not want_compile(big, device=torch.device("cuda"))  # GPU: eager unless asked
    monkeypatch.setenv("UXNET_COMPILE", "1")
    assert want_compile(small)
    monkeypatch.setenv("UXNET_COMPILE", "0")
    assert not want_compile(small)
    assert want_compile(small, requested=True)  # an explicit request wins over the environment
    assert not uxcompile.compile_enabled()


def test_fast_mode_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    assert fast_dtype(cpu) == (torch.bfloat16 if cpu_has_bf16() else None)
    events = []
    Predictor(tiny_network(), cpu, fast=True, progress=lambda s, f, d: events.append((s, d)), compile=False)
    if not cpu_has_bf16():
        assert events and events[0][0] == "warning" and "exact fp32" in events[0][1]
    else:
        assert not events


@pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 fast mode needs AVX512-BF16 or AMX")
def test_fast_mode_bf16_agrees_with_exact_on_most_voxels(case):
    image, spec = case
    net = tiny_network(seed=11)
    exact = run(image, spec, net, [], fast=False)
    fast = run(image, spec, net, [], fast=True)
    assert (exact == fast).mean() >= 0.97


def test_inductor_cache_goes_to_the_engine_cache_folder_unless_one_is_chosen(tmp_path, monkeypatch):
    """TorchInductor's builds outlive a reboot (its default is under /tmp); a folder the user set wins, and an
    engine cache that cannot be created leaves TorchInductor's default alone."""
    import os
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("UXNET_CACHE", str(tmp_path / "cache"))
    assert uxcompile.use_persistent_cache() == str(tmp_path / "cache" / "torchinductor")
    assert (tmp_path / "cache" / "torchinductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("UXNET_CACHE", str(tmp_path / "other"))
    assert uxcompile.use_persistent_cache() == str(tmp_path / "mine")
    assert not (tmp_path / "other").exists()
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("UXNET_CACHE", str(tmp_path / "a-file" / "cache"))
    assert uxcompile.use_persistent_cache() is None
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_only_reduced_precision_cpu_builds_freeze_the_weights(monkeypatch):
    """Fast mode's (bf16) CPU build goes through TorchInductor's freezing (weights as constants, pre-packed for
    oneDNN); ``torch.compile(..., options={"freezing": True})`` alone no longer reaches it. Exact mode's fp32
    build keeps the weights as graph inputs (so its traced graph can come from the disk cache)."""
    import torch._inductor.freezing as freezing
    kept_inputs = []  # per frozen graph: the inputs it still takes (the window alone, once weights are constants)

    def freeze(*args, **kwargs):
        model, preserved = real(*args, **kwargs)
        kept_inputs.append(len(preserved))
        return model, preserved

    real = freezing.freeze
    monkeypatch.setattr(freezing, "freeze", freeze)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.GELU(), torch.nn.Conv3d(4, 3, 1)).eval()
    x = torch.rand(1, 2, 12, 12, 12)
    with torch.no_grad():
        expected = net(x)
    exact = Predictor(net, torch.device("cpu"), compile=True)
    out = exact(x)
    assert exact.compiling and not exact.compiled.freezes and kept_inputs == []
    assert float((out - expected).abs().max()) < 1e-4
    fast = Predictor(net, torch.device("cpu"), compile=True, dtype=torch.bfloat16)
    out = fast(x)
    assert fast.compiling and fast.compiled.freezes and kept_inputs == [1], f"weights left as graph inputs: {kept_inputs}"
    assert float((out - expected).abs().max()) < 0.05 * float(expected.abs().max())


def test_a_new_process_reuses_the_build_on_disk_with_its_own_weights(tmp_path, monkeypatch):
    """TorchInductor's on-disk caches serve exact mode's graph to a later process (here: Dynamo reset, same
    cache folder): the traced and partitioned graph (AOTAutograd's cache) and its generated code, so a warm
    build skips both. A frozen graph bypasses the first, and pre-packed oneDNN weights cannot be pickled, so
    both made every build miss. The reused graph must run the new network's weights, not the first one's."""
    from torch._dynamo.utils import counters
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    x = torch.rand(1, 1, 16, 16, 16)
    outs, stats = [], []
    for seed in (31, 32):  # the same architecture, other weights
        torch._dynamo.reset()
        counters.clear()
        # Over 8 channels: TorchInductor writes smaller 1-D constants (biases) into the code, keyed by value.
        net = MiniSegmenter(classes=9, width=10, seed=seed).eval()
        with torch.no_grad():
            expected = net(x)
        predictor = Predictor(net, torch.device("cpu"), compile=True)
        out = predictor(x)
        assert predictor.compiling
        assert float((out - expected).abs().max()) < 1e-4
        outs.append(out)
        stats.append({k: counters["inductor"][k] for k in ("fxgraph_cache_miss", "fxgraph_cache_hit",
                                                            "fxgraph_cache_bypass",
                                                            "mkldnn_conv_weight_pack_matcher_count")})
        stats[-1].update({k: counters["aot_autograd"][k] for k in ("autograd_cache_hit", "autograd_cache_miss",
                                                                    "autograd_cache_bypass")})
    torch._dynamo.reset()
    assert stats[0]["fxgraph_cache_miss"] > 0 and stats[0]["fxgraph_cache_bypass"] == 0, stats
    assert stats[0]["mkldnn_conv_weight_pack_matcher_count"] == 0, stats  # exact mode: no pre-packing
    assert stats[0]["autograd_cache_bypass"] == 0, stats
    assert stats[1]["fxgraph_cache_hit"] > 0 and stats[1]["fxgraph_cache_miss"] == 0, stats
    assert stats[1]["autograd_cache_hit"] > 0 and stats[1]["autograd_cache_miss"] == 0, stats
    assert float((outs[0] - outs[1]).abs().max()) > 1e-2  # the weights differ, so must the logits


BF16_FIRST_BUILD = """
import json, torch
from torch._dynamo.utils import counters
from test_fast_paths import MiniSegmenter
from UXNetSegmentLib.allocator import tune_allocator
from UXNetSegmentLib.devices import Predictor
tune_allocator()
net = MiniSegmenter(classes=9, width=10, seed=33).eval()
predictor = Predictor(net, torch.device("cpu"), compile=True, dtype=torch.bfloat16)
predictor(torch.rand(1, 1, 16, 16, 16))
print(json.dumps({"compiling": predictor.compiling, **counters["inductor"]}))
"""


def test_a_process_building_bf16_first_prepacks_weights_for_onednn():
    """Under bf16 autocast, frozen and pre-packed oneDNN weights made windows 6-7% faster (the build then
    skips the disk caches, 5-10 s), so fast mode freezes; exact mode does not (see the cache test above).
    TorchInductor registers its packing passes once per process, at its first frozen build: a subprocess."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parents[1] / "UXNetSegment"), str(here)]))
    out = subprocess.run([sys.executable, "-c", BF16_FIRST_BUILD], env=env, stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["compiling"] and stats.get("mkldnn_conv_weight_pack_matcher_count", 0) > 0, stats


def test_frozen_build_releases_the_weights_it_froze_and_reloads_them_for_eager():
    """Given ``reload`` (the engine's own network), a frozen (fast mode's) CPU build hands the weights to the
    compiled graph: the module keeps placeholders only (0.2 GB saved at full size); later runs reuse the
    build, and eager PyTorch gets the weights back from ``reload``. Without ``reload`` (a caller's own
    network) they stay, and so they do for exact mode's build, whose graph takes them as inputs."""
    from UXNetSegmentLib.errors import UXNetError

    def make():
        return MiniSegmenter(classes=4, width=6, seed=21).eval()

    reloads = []

    def reload():
        reloads.append(1)
        return make()

    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = make()(x)
    net = make()
    out = Predictor(net, cpu, compile=True, reload=reload, dtype=bf16)(x)
    assert uxcompile.weights_released(net) and all(p.is_meta for p in net.parameters())
    assert float((out - expected).abs().max()) < 0.05 * float(expected.abs().max())

    events = []
    again = Predictor(net, cpu, compile=True, reload=reload, dtype=bf16, progress=lambda s, f, d: events.append(s))
    assert again.compiling and again.network is net
    assert torch.equal(again(x), out) and "compile" not in events and not reloads

    eager = Predictor(net, cpu, compile=False, reload=reload)
    assert reloads == [1] and not uxcompile.weights_released(eager.network)
    assert float((eager(x) - expected).abs().max()) < 1e-5
    with pytest.raises(UXNetError, match="load the network again"):
        Predictor(net, cpu, compile=False)

    own = make()
    Predictor(own, cpu, compile=True, dtype=bf16)(x)
    assert not uxcompile.weights_released(own)
    exact = make()
    assert float((Predictor(exact, cpu, compile=True, reload=reload)(x) - expected).abs().max()) < 1e-4
    assert not uxcompile.weights_released(exact) and reloads == [1]


def test_segment_image_lets_the_build_release_only_a_network_it_loaded(monkeypatch):
    from engine_helpers import FIXTURE_WEIGHTS, fixture_spec
    from UXNetSegmentLib import api
    from UXNetSegmentLib.checkpoint import load_network
    seen = []

    class Spy(Predictor):
        def __init__(self, network, device, **kw):
            seen.append(kw.get("reload"))
            super().__init__(network, device, **kw)

    monkeypatch.setattr(api, "Predictor", Spy)
    image = synthetic_ct(size=(20, 20, 12), spacing=(2.0, 2.0, 3.0))
    spec = fixture_spec(roi_size=[32, 32, 32])
    api.segment_image(image, spec, weights=FIXTURE_WEIGHTS, device="cpu")
    assert seen[-1] is not None
    fresh = seen[-1]()
    assert fresh is api.cached_network(FIXTURE_WEIGHTS, spec.num_classes)  # the cache now holds the new copy
    mine = load_network(FIXTURE_WEIGHTS, num_classes=spec.num_classes)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), mine.state_dict().values()))
    api.segment_image(image, spec, network=mine, device="cpu")
    assert seen[-1] is None
