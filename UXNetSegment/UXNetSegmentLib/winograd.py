"""Winograd F(4x4x4, 3x3x3) for the dense 3x3x3 convolutions of the compiled fp32 CPU path.

UX-Net spends ~95% of its arithmetic in dense 3x3x3 convolutions, and the compiled network already runs
them at about the CPU's fp32 floor. Winograd's minimal filtering (Lavin & Gray, CVPR 2016) computes each
4x4x4 block of outputs from a 6x6x6 block of inputs with 216 multiplications per channel pair instead
of 1,728: the inputs and the weights are each transformed once, multiplied position by position (216
independent matrix products over the channels), and the products transformed back. The transforms are
additions and small constant multiplies, fused by TorchInductor into a few passes over memory; the
products go to BLAS. The weight transform runs inside the compiled graph, once per window (exact mode's
graph is not frozen, see ``compile.py``): about 0.17 s for the full-size network's window.

The result is the same convolution up to float rounding, but the rounding is larger than a direct
convolution's (the 6-point transform has coefficients up to 8): 3-6e-5 relative per layer in float32.
It is meant for float32 only: in bf16 the error would be of the order of the result.

The transformed input is 3.4x the input's size: layers where it stays small are transformed whole, inside
the network's graph; larger ones (UX-Net's 96^3 stage) go a slab at a time (``winograd_slabs.py``).
"""
import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import winograd_slabs
from .compile import is_compiling

OUT_TILE = 4   # m: outputs per tile and axis
IN_TILE = 6    # m + 3 - 1: inputs per tile and axis
# Cook-Toom matrices for F(4, 3) on the points 0, 1, -1, 2, -2 and infinity.
B_T = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))
G = ((1 / 4, 0, 0),
     (-1 / 6, -1 / 6, -1 / 6),
     (-1 / 6, 1 / 6, -1 / 6),
     (1 / 24, 1 / 12, 1 / 6),
     (1 / 24, -1 / 12, 1 / 6),
     (0, 0, 1))
A_T = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))
# Largest transformed input (float32 bytes) computed whole in the network's graph; beyond it (UX-Net's 96^3
# layers, 0.6-1.2 GB) a layer goes a slab at a time through its own compiled kernel (winograd_slabs.py).
MAX_TRANSFORMED_BYTES = 320 << 20


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(Cout, Cin, 3, 3, 3)`` weights -> ``(216, Cin, Cout)``: G w G^T along each axis, positions ordered
    (w, h, d) as :func:`tiles_conv` stacks them. Computed in float64, returned in ``weight``'s dtype."""
    g = torch.tensor(G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ip,jq,kr,ocpqr->kjico", g, g, g, weight.double())
    return u.reshape(IN_TILE ** 3, weight.shape[1], weight.shape[0]).to(weight.dtype)


def _combine(terms: Sequence[torch.Tensor], coefficients: Sequence[float]) -> torch.Tensor:
    total = None
    for term, c in zip(terms, coefficients):
        if c == 0:
            continue
        part = term if c == 1 else (-term if c == -1 else term * c)
        total = part if total is None else total + part
    return total


def _transform_axis(x: torch.Tensor, axis: int, tiles: int) -> torch.Tensor:
    """B^T along ``axis`` of overlapping 6-wide tiles at stride 4: a new leading axis of 6 positions, and
    ``axis`` becomes the tile index."""
    span = OUT_TILE * (tiles - 1) + 1
    step = [slice(None)] * x.dim()
    step[axis] = slice(None, None, OUT_TILE)
    shifted = [x.narrow(axis, p, span)[tuple(step)] for p in range(IN_TILE)]
    return torch.stack([_combine(shifted, row) for row in B_T], 0)


def _untransform_axis(m: torch.Tensor, axis: int) -> torch.Tensor:
    """A^T over the leading axis of 6 positions; its 4 outputs per tile are interleaved into ``axis``
    (counted after the leading axis is gone)."""
    parts = [m[p] for p in range(IN_TILE)]
    y = torch.stack([_combine(parts, row) for row in A_T], axis + 1)
    shape = list(y.shape)
    shape[axis:axis + 2] = [shape[axis] * OUT_TILE]
    return y.reshape(shape)


def tiles_conv(xp: torch.Tensor, u: torch.Tensor, tiles: List[int]) -> torch.Tensor:
    """Outputs of ``tiles`` = (Td, Th, Tw) tiles from the padded NDHWC input ``xp``: (N, 4Td, 4Th, 4Tw, Cout)."""
    n, c = xp.shape[0], xp.shape[-1]
    v = _transform_axis(xp, 1, tiles[0])        # (6d, N, Td, Hp, Wp, C)
    v = _transform_axis(v, 3, tiles[1])         # (6h, 6d, N, Td, Th, Wp, C)
    v = _transform_axis(v, 5, tiles[2])         # (6w, 6h, 6d, N, Td, Th, Tw, C)
    m = torch.bmm(v.reshape(IN_TILE ** 3, -1, c), u)
    m = m.view([IN_TILE] * 3 + [n] + list(tiles) + [u.shape[-1]])
    y = _untransform_axis(m, 5)                 # contracts w: (6h, 6d, N, Td, Th, 4Tw, Co)
    y = _untransform_axis(y, 3)                 # contracts h: (6d, N, Td, 4Th, 4Tw, Co)
    return _untransform_axis(y, 1)              # contracts d: (N, 4Td, 4Th, 4Tw, Co)


def tile_counts(spatial: Sequence[int]) -> List[int]:
    """Tiles along each spatial axis (the last one partly outside the volume)."""
    return [math.ceil(s / OUT_TILE) for s in spatial]


def winograd_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=1)`` for a dense 3x3x3 kernel, by Winograd F(4, 3); float32."""
    n, c, d, h, w = x.shape
    tiles = tile_counts((d, h, w))
    # One tile's worth of zeros beyond the conv's own padding makes every axis a whole number of tiles.
    xp = F.pad(x.permute(0, 2, 3, 4, 1),
               (0, 0, 1, OUT_TILE * tiles[2] + 1 - w, 1, OUT_TILE * tiles[1] + 1 - h, 1, OUT_TILE * tiles[0] + 1 - d))
    y = tiles_conv(xp, transform_weight(weight), tiles)[:, :d, :h, :w]
    if bias is not None:
        y = y + bias
    return y.permute(0, 4, 1, 2, 3)


def winograd_eligible(module: nn.Module, min_channels: int = 8) -> bool:
    """A dense, stride-1, 3x3x3 float convolution padded by 1 with zeros and at least ``min_channels`` inputs."""
    return (type(module) in (nn.Conv3d, WinogradConv3d) and module.kernel_size == (3, 3, 3)
            and module.stride == (1, 1, 1) and module.padding == (1, 1, 1) and module.dilation == (1, 1, 1)
            and module.groups == 1 and module.padding_mode == "zeros" and module.in_channels >= min_channels)


def pays_off(x: torch.Tensor, in_channels: int, out_channels: int) -> bool:
    """Winograd wins where the tiles outnumber the channels (measured x2.0-2.8 per layer at UX-Net's 48^3 and
    24^3 stages, x0.08-0.8 at 12^3 and below, where the transformed weights, 8x the weights, outweigh the work
    saved)."""
    return 2 * _tiles(x) >= max(in_channels, out_channels)


def fits_whole(x: torch.Tensor, in_channels: int) -> bool:
    """The whole layer's transformed input stays within ``MAX_TRANSFORMED_BYTES`` (not UX-Net's 96^3 stage,
    which goes a slab at a time: ``winograd_slabs.py``)."""
    return IN_TILE ** 3 * _tiles(x) * in_channels * x.element_size() <= MAX_TRANSFORMED_BYTES


def _tiles(x: torch.Tensor) -> int:
    return x.shape[0] * math.prod(tile_counts(x.shape[2:]))


def _autocasting() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class WinogradConv3d(nn.Conv3d):
    """A 3x3x3 convolution computed by Winograd's algorithm while TorchInductor traces it, for float32 CPU
    inputs outside autocast and shapes where it :func:`pays_off`: by :func:`winograd_conv3d` in the traced
    graph where the layer :func:`fits_whole`, else a slab at a time by ``winograd_slabs``' operator. Otherwise
    (eager, bf16, small windows, no custom operators in this torch) the ordinary convolution. Parameters,
    names and state dict are those of ``nn.Conv3d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() != 5 or x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or not is_compiling() or _autocasting() or not pays_off(x, self.in_channels, self.out_channels)):
            return super().forward(x)
        if fits_whole(x, self.in_channels):
            return winograd_conv3d(x, self.weight, self.bias)
        if winograd_slabs.winograd_conv3d_slabs is None:
            return super().forward(x)
        return winograd_slabs.winograd_conv3d_slabs(x, transform_weight(self.weight), self.bias)


def use_winograd(network: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn (in place) every eligible 3x3x3 convolution of ``network`` into a :class:`WinogradConv3d`, or
    with ``enabled=False`` back into ``nn.Conv3d``; returns ``network``."""
    for module in network.modules():
        if winograd_eligible(module):
            module.__class__ = WinogradConv3d if enabled else nn.Conv3d
    return network
