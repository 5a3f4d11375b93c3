"""Winograd F(4, 3) 3x3x3 convolutions (the compiled fp32 CPU path): the same convolution, where it pays off."""
import pytest
import torch
import torch.nn.functional as F

from UXNetSegmentLib import winograd as W
from UXNetSegmentLib import winograd_slabs as S
from UXNetSegmentLib.cpu_layout import prepare_for_compile


@pytest.mark.parametrize("shape,bias", [((2, 9, 5, 7, 9), True), ((1, 12, 8, 4, 11), False)])
def test_winograd_is_the_same_convolution(shape, bias):
    """Exact in float64 (the algorithm), and within float32 rounding in float32, for sizes that are not whole
    tiles, a batch of 2, with and without bias; the result is channels-last like the compiled network's."""
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(6, shape[1], 3, 3, 3, dtype=torch.float64) / (27 * shape[1]) ** 0.5
    b = torch.randn(6, dtype=torch.float64) if bias else None
    want = F.conv3d(x, w, b, padding=1)
    got = W.winograd_conv3d(x, w, b)
    assert got.shape == want.shape and got.stride(1) == 1
    assert float((got - want).abs().max()) < 1e-12
    got32 = W.winograd_conv3d(x.float(), w.float(), None if b is None else b.float())
    assert float((got32.double() - want).abs().max()) < 2e-4 * float(want.abs().max())
    assert float((got32.double() - want).abs().max()) > 1e-9  # really computed in float32


def test_winograd_module_keeps_conv3d_outside_the_compiler_and_where_it_does_not_pay():
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv3d(16, 16, 3, padding=1), torch.nn.Conv3d(16, 8, 3, padding=1, stride=2),
                              torch.nn.Conv3d(8, 8, 1), torch.nn.Conv3d(4, 4, 3, padding=1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(1, 16, 12, 12, 12)
    with torch.no_grad():
        want = net[0](x)
        prepare_for_compile(net)
        kinds = [type(m) for m in net]
        assert kinds[0] is W.WinogradConv3d and kinds[1] is torch.nn.Conv3d  # stride 2 is not Winograd's
        assert kinds[3] is torch.nn.Conv3d  # too few input channels to pay
        assert torch.equal(net[0](x), want)  # eager: the ordinary convolution, bit for bit
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert W.pays_off(torch.empty(1, 96, 48, 48, 48), 192, 96)       # UX-Net's 48^3 decoder stage
    assert W.pays_off(torch.empty(1, 384, 24, 24, 24), 384, 192)     # and its 24^3 one
    assert not W.pays_off(torch.empty(1, 384, 12, 12, 12), 384, 384)  # weights outweigh the work
    assert W.fits_whole(torch.empty(1, 96, 48, 48, 48), 96)
    big = torch.empty(1, 96, 96, 96, 96)                              # the 96^3 stage: a slab at a time
    assert W.pays_off(big, 96, 48) and not W.fits_whole(big, 96)
    prepare_for_compile(net, winograd=False)
    assert type(net[0]) is torch.nn.Conv3d


def test_compiled_winograd_module_matches_the_convolution(monkeypatch):
    """Traced by TorchInductor (as the engine compiles exact mode: weights are graph inputs, so the weight
    transform runs in the graph), the module takes Winograd's route."""
    torch.manual_seed(3)
    conv = W.use_winograd(torch.nn.Conv3d(16, 8, 3, padding=1).eval())
    x = torch.randn(1, 16, 16, 16, 16)
    calls = []
    real = W.winograd_conv3d
    monkeypatch.setattr(W, "winograd_conv3d", lambda *args: calls.append(1) or real(*args))
    with torch.no_grad():
        want = F.conv3d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        got = torch.compile(conv, dynamic=False)(x)
    torch._dynamo.reset()
    assert calls, "the compiled module did not take the Winograd route"
    assert float((got.double() - want).abs().max()) < 2e-4 * float(want.abs().max())


def test_winograd_switch(monkeypatch):
    """``UXNET_WINOGRAD=0`` keeps the direct convolutions in the compiled path; the default turns them over."""
    from UXNetSegmentLib.devices import Predictor

    cpu = torch.device("cpu")
    net = torch.nn.Sequential(torch.nn.Conv3d(8, 8, 3, padding=1))
    monkeypatch.setenv("UXNET_WINOGRAD", "0")
    Predictor(net, cpu, compile=True)
    assert type(net[0]) is torch.nn.Conv3d
    monkeypatch.delenv("UXNET_WINOGRAD")
    Predictor(net, cpu, compile=True)
    assert type(net[0]) is W.WinogradConv3d


@pytest.mark.parametrize("shape,rows,bias", [((2, 9, 21, 7, 10), 2, True), ((1, 12, 8, 5, 11), 1, False),
                                             ((1, 8, 13, 6, 6), 9, True)])
def test_slabs_make_the_same_convolution(shape, rows, bias, monkeypatch):
    """A slab at a time (``rows`` tile rows each: a last slab partly beyond the volume, one slab per volume,
    more rows than the volume has), exact in float64, with one slab shape and layout throughout."""
    torch.manual_seed(4)
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(5, shape[1], 3, 3, 3, dtype=torch.float64) / (27 * shape[1]) ** 0.5
    b = torch.randn(5, dtype=torch.float64) if bias else None
    tiles = W.tile_counts(shape[2:])
    monkeypatch.setattr(S, "SLAB_BYTES", rows * W.IN_TILE ** 3 * tiles[1] * tiles[2] * shape[1] * 8)
    assert S.slab_rows(tiles, shape[1], 8) == min(rows, tiles[0])
    want = F.conv3d(x, w, b, padding=1)
    for layout in (torch.contiguous_format, torch.channels_last_3d):   # either input layout; standard result
        seen = []
        got = S.conv3d_slabs(x.contiguous(memory_format=layout), W.transform_weight(w), b,
                             kernel=lambda *a: seen.append((a[0].shape, a[0].stride())) or S._slab(*a))
        assert got.shape == want.shape and got.is_contiguous()
        assert float((got - want).abs().max()) < 1e-12
        assert len(seen) == -(-tiles[0] // min(rows, tiles[0])) and len(set(seen)) == 1


def test_compiled_network_sends_large_layers_through_the_slab_operator(monkeypatch):
    """Past ``MAX_TRANSFORMED_BYTES`` the traced module calls the slab operator (one opaque node in the
    graph); the result is the convolution's."""
    torch.manual_seed(5)
    net = W.use_winograd(torch.nn.Sequential(torch.nn.Conv3d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                             torch.nn.Conv3d(16, 8, 3, padding=1)).eval())
    x = torch.randn(1, 16, 16, 12, 12)
    monkeypatch.setattr(W, "MAX_TRANSFORMED_BYTES", 0)
    monkeypatch.setattr(S, "SLAB_BYTES", 2 * W.IN_TILE ** 3 * 9 * 16 * 4)
    calls = []
    real = S.conv3d_slabs
    monkeypatch.setattr(S, "conv3d_slabs", lambda *args: calls.append(args[0].shape) or real(*args))
    with torch.no_grad():
        want = net.double()(x.double())
        net.float()
        got = torch.compile(net, dynamic=False)(x)
    torch._dynamo.reset()
    assert calls == [(1, 16, 16, 12, 12)] * 2, "the compiled network did not run both convolutions in slabs"
    assert float((got.double() - want).abs().max()) < 2e-4 * float(want.abs().max())
