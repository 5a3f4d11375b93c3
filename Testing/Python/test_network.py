"""The UX-Net implementation against the official code's fixtures and checkpoint layouts."""
import json

import numpy as np
import pytest
import torch

from engine_helpers import DATA, FIXTURE_WEIGHTS, tiny_network
from UXNetSegmentLib.checkpoint import build_network, infer_config, load_network, read_state_dict
from UXNetSegmentLib.cpu_layout import (ChannelsLastConv3d, ChannelsLastInstanceNorm3d, ChannelsLastPointwiseConv3d,
                                        ChannelsLastUXBlock, PatchTransposedConv3d, _conv_of_concat,
                                        keep_channels_last, prepare_for_compile, to_channels_last)
from UXNetSegmentLib.devices import Predictor
from UXNetSegmentLib.network import UXNet


def test_logits_match_official_code():
    net = load_network(FIXTURE_WEIGHTS, num_classes=5)
    ref = np.load(DATA / "network_seed7.npz")
    with torch.no_grad():
        out = net(torch.from_numpy(ref["input"])).numpy()
    assert out.shape == ref["logits"].shape
    assert np.abs(out - ref["logits"]).max() <= 1e-4


def test_channels_last_network_matches_official_code_and_keeps_its_state_dict():
    """The CPU exact path (NDHWC end to end) against the official logits, with the same bar."""
    net = load_network(FIXTURE_WEIGHTS, num_classes=5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ref = np.load(DATA / "network_seed7.npz")
    keep_channels_last(net)
    kinds = {type(m) for m in net.modules()}
    assert {ChannelsLastConv3d, ChannelsLastInstanceNorm3d, ChannelsLastUXBlock, PatchTransposedConv3d} <= kinds
    x = torch.from_numpy(ref["input"])
    with torch.no_grad():
        out = net(to_channels_last(x))
        plain_layout = net(x)  # a standard-layout input still gets the same function
    assert out.stride(1) == 1  # the logits came out channels-last: no layer fell back to NCDHW at the end
    assert np.abs(out.numpy() - ref["logits"]).max() <= 1e-4
    assert np.abs(plain_layout.numpy() - ref["logits"]).max() <= 1e-4
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    # the CPU predictor uses it by default, and UXNET_CHANNELS_LAST=0 switches it off
    assert Predictor(load_network(FIXTURE_WEIGHTS, num_classes=5), torch.device("cpu"), compile=False).cpu_channels_last


@pytest.mark.parametrize("in_channels", [1, 5])
def test_channels_last_pointwise_conv_equals_conv3d(in_channels):
    """1x1x1 convolutions as matrix products (an outer product for one input channel), alone and split over
    a concatenation, equal PyTorch's own convolution on channels-last weights and inputs."""
    torch.manual_seed(3)
    conv = torch.nn.Conv3d(in_channels, 7, 1).to(memory_format=torch.channels_last_3d)
    x = to_channels_last(torch.randn(1, in_channels, 6, 5, 4))
    with torch.no_grad():
        want = conv(x)
        conv.__class__ = ChannelsLastPointwiseConv3d
        got = conv(x)
        assert got.stride(1) == 1 and torch.allclose(got, want, atol=1e-5)
        both = torch.nn.Conv3d(2 * in_channels, 7, 1).to(memory_format=torch.channels_last_3d)
        b = to_channels_last(torch.randn(1, in_channels, 6, 5, 4))
        split = _conv_of_concat(both, x, b)
        assert split.stride(1) == 1 and torch.allclose(split, both(torch.cat((x, b), 1)), atol=1e-5)


@pytest.mark.parametrize("kernel,bias", [(2, False), ((1, 2, 3), True)])
def test_patch_transposed_conv_equals_conv_transpose3d(kernel, bias):
    """Up-sampling with kernel = stride as one matrix product: PyTorch's values, an NDHWC result, from either
    input layout; a transposed convolution whose patches overlap is not converted."""
    torch.manual_seed(4)
    conv = torch.nn.ConvTranspose3d(6, 5, kernel, stride=kernel, bias=bias)
    x = torch.randn(2, 6, 3, 4, 5)
    with torch.no_grad():
        want = conv(x)
        conv.__class__ = PatchTransposedConv3d
        for inp in (x, to_channels_last(x)):
            got = conv(inp)
            assert got.shape == want.shape and got.stride(1) == 1
            assert torch.allclose(got, want, atol=1e-5)
    overlapping = prepare_for_compile(torch.nn.Sequential(torch.nn.ConvTranspose3d(6, 5, 3, stride=2)))
    assert type(overlapping[0]) is torch.nn.ConvTranspose3d


def test_network_prepared_for_compile_matches_official_code_and_keeps_its_state_dict():
    """The forms the compiled CPU path starts from (run eager here): official logits, same state dict."""
    net = load_network(FIXTURE_WEIGHTS, num_classes=5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prepare_for_compile(net)
    kinds = {type(m) for m in net.modules()}
    assert {ChannelsLastPointwiseConv3d, PatchTransposedConv3d} <= kinds
    assert torch.nn.ConvTranspose3d not in kinds
    ref = np.load(DATA / "network_seed7.npz")
    with torch.no_grad():
        out = net(torch.from_numpy(ref["input"])).numpy()
    assert np.abs(out - ref["logits"]).max() <= 1e-4
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    keep_channels_last(net)  # the eager fallback of a prepared network still runs channels-last end to end
    with torch.no_grad():
        cl = net(to_channels_last(torch.from_numpy(ref["input"])))
    assert cl.stride(1) == 1 and np.abs(cl.numpy() - ref["logits"]).max() <= 1e-4


def test_channels_last_switch(monkeypatch):
    monkeypatch.setenv("UXNET_CHANNELS_LAST", "0")
    predictor = Predictor(tiny_network(), torch.device("cpu"), compile=False)
    assert not predictor.cpu_channels_last
    assert not any(isinstance(m, ChannelsLastInstanceNorm3d) for m in predictor.network.modules())


def test_fixture_config_read_off_shapes():
    config = infer_config(read_state_dict(FIXTURE_WEIGHTS))
    assert config["feat_size"] == [48, 56, 64, 72]
    assert config["depths"] == [2, 2, 2, 2]
    assert config["hidden_size"] == 96 and config["out_chans"] == 5 and config["in_chans"] == 1


@pytest.mark.parametrize("name", ["flare2021", "amos2022", "feta2021"])
def test_official_layouts_load_strictly(name):
    layout = json.loads((DATA / f"official_state_dict_{name}.json").read_text())
    state = {key: torch.zeros(shape) for key, shape, _ in layout["state_dict"]}
    net = build_network(state, num_classes=layout["config"]["out_chans"])
    # Same keys, same order, same shapes as the official state_dict.
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == \
           [(k, s) for k, s, _ in layout["state_dict"]]
    assert sum(p.numel() for p in net.parameters()) == layout["num_parameters"]
    for key in ("feat_size", "depths", "hidden_size", "out_chans", "in_chans"):
        assert net.config[key] == layout["config"][key]


def test_dataparallel_prefix_is_stripped(tmp_path):
    state = {"module." + k: v for k, v in torch.load(FIXTURE_WEIGHTS, weights_only=True).items()}
    torch.save(state, tmp_path / "dp.pth")
    net = load_network(tmp_path / "dp.pth", num_classes=5)
    assert net.config["feat_size"] == [48, 56, 64, 72]


def test_first_width_need_not_be_48(tmp_path):
    net = tiny_network(out_chans=3, feat=(24, 32, 40, 48), hidden=64)
    torch.save(net.state_dict(), tmp_path / "w24.pth")
    loaded = load_network(tmp_path / "w24.pth", num_classes=3)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert loaded.config["feat_size"] == [24, 32, 40, 48]


def test_unusual_depths_and_kernel(tmp_path):
    net = UXNet(1, 2, depths=(1, 3, 2, 1), feat_size=(8, 16, 16, 32), hidden_size=32, kernel_size=5)
    torch.save(net.state_dict(), tmp_path / "odd.pth")
    config = infer_config(read_state_dict(tmp_path / "odd.pth"))
    assert config["depths"] == [1, 3, 2, 1] and config["kernel_size"] == 5
