"""Winograd for the largest layers (UX-Net's 96^3 stage): slabs of tile rows through one compiled kernel.

At 96^3 the transformed input of a 48-channel layer is 0.6 GB (1.2 GB for the 96-channel one), so the
whole-layer form of ``winograd.py`` would add gigabytes to the peak. Here the layer is cut along depth into
slabs of a few rows of tiles, each of at most ``SLAB_BYTES`` transformed. Each slab goes through one
TorchInductor kernel, compiled once for that slab shape and reused for every slab of every window (the
last slab is padded with zero planes to the same shape). Unrolling the slabs inside the network's own
graph instead made TorchInductor build for ten minutes.

The network's compiled graph sees the whole layer as one opaque operator, ``uxnet::winograd_conv3d_slabs``
(a ``torch.library`` custom op with a shape-only "fake" form for tracing), which takes the input, the
transformed weights (computed in the graph, like the whole-layer form's) and the bias, and returns
the output in the standard layout. The operator takes its input in whatever layout the graph has it (the
96-channel concatenation is channels-last there, for the matrix product of its 1x1x1 shortcut).
"""
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import winograd as W  # circular (winograd uses this module's op): names are looked up at call time
from .allocator import network_heap

OP_NAME = "uxnet::winograd_conv3d_slabs"
# Transformed input of one slab (float32 bytes). UX-Net at 96^3: one tile row (4 output planes) per slab,
# 24 MiB at 48 channels; as fast per layer as 4 rows (96 MiB), and the peak of a window 0.4-0.7 GiB lower.
SLAB_BYTES = 24 << 20
CL = torch.channels_last_3d


def slab_rows(tiles: List[int], channels: int, element_size: int = 4) -> int:
    """Rows of tiles (along depth) per slab: as many as fit in ``SLAB_BYTES``, at least one, at most all."""
    per_row = W.IN_TILE ** 3 * tiles[1] * tiles[2] * channels * element_size
    return max(1, min(tiles[0], SLAB_BYTES // per_row))


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format of the slab buffer: channels-last where ``x`` is, else the standard one."""
    return CL if x.is_contiguous(memory_format=CL) and not x.is_contiguous() else torch.contiguous_format


def _slab(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor], tiles_hw: Tuple[int, int]) -> torch.Tensor:
    """One slab: ``x`` is (N, C, 4R+2, H, W) input planes (depth already padded, any layout), the result
    (N, Co, 4R, H, W) in the standard layout (the layout change is fused into the output transform)."""
    n, c, planes, h, w = x.shape
    rows = (planes - 2) // W.OUT_TILE
    xp = F.pad(x.permute(0, 2, 3, 4, 1), (0, 0, 1, W.OUT_TILE * tiles_hw[1] + 1 - w, 1, W.OUT_TILE * tiles_hw[0] + 1 - h))
    y = W.tiles_conv(xp, u, [rows, tiles_hw[0], tiles_hw[1]])[:, :, :h, :w]
    return (y if bias is None else y + bias).permute(0, 4, 1, 2, 3).contiguous()


_KERNEL: Optional[Callable] = None


def _kernel() -> Callable:
    """The compiled slab kernel (TorchInductor builds it once per slab shape and input layout)."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = torch.compile(_slab, dynamic=False)
    return _KERNEL


def conv3d_slabs(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor],
                 kernel: Optional[Callable] = None) -> torch.Tensor:
    """``F.conv3d(x, w, bias, padding=1)`` with ``u = transform_weight(w)``, a slab of planes at a time, from
    ``x`` in either layout (channels-last or standard) to the standard layout. ``kernel`` runs each slab
    (default: the compiled one)."""
    run = kernel if kernel is not None else _kernel()
    n, c, d, h, w = x.shape
    layout = _layout(x)
    tiles = W.tile_counts(x.shape[2:])
    planes = W.OUT_TILE * slab_rows(tiles, c, x.element_size())
    out = torch.empty((n, u.shape[-1], d, h, w), dtype=x.dtype, device=x.device)
    with torch.inference_mode():
        # The kernel's inputs are always inference tensors made here: Dynamo would build it again for each
        # new kind of tensor, shape or strides. Every slab's planes are copied into one buffer; planes beyond
        # the volume are zeros.
        u = u.clone()
        bias = None if bias is None else bias.clone()
        piece = torch.empty((n, c, planes + 2, h, w), dtype=x.dtype, device=x.device, memory_format=layout)
        # The slabs' blocks (24-96 MiB, freed after each slab) stay on the heap even during the compiled
        # build, which runs outside ``network_heap``: there each slab's blocks got fresh mappings, page-faulted
        # in again 120 times per window, and the build took 6 s longer (17 -> 12 s, tools/benchmark_build.py).
        with network_heap():
            _run_slabs(run, x, u, bias, piece, out, tiles, planes)
    return out


def _run_slabs(run: Callable, x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor],
               piece: torch.Tensor, out: torch.Tensor, tiles: List[int], planes: int) -> None:
    d = x.shape[2]
    for start in range(0, d, planes):
        lo, hi = max(start - 1, 0), min(start + planes + 1, d)   # the input planes this slab reads
        first, last = lo - (start - 1), hi - (start - 1)
        piece[:, :, first:last].copy_(x[:, :, lo:hi])
        piece[:, :, :first].zero_()
        piece[:, :, last:].zero_()
        y = run(piece, u, bias, (tiles[1], tiles[2]))
        out[:, :, start:start + planes] = y[:, :, :min(planes, d - start)]


def _fake(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    n, c, d, h, w = x.shape
    return torch.empty((n, u.shape[-1], d, h, w), dtype=x.dtype, device=x.device)


def _register() -> Optional[Callable]:
    """The custom op (torch >= 2.4), or None where torch has no ``torch.library.custom_op``."""
    custom_op = getattr(torch.library, "custom_op", None)
    if custom_op is None:
        return None
    # Any input layout will do (TorchInductor then hands over the activation as it has it, instead of a copy
    # in the traced layout); the output is always in the standard layout.
    flexible = getattr(torch.Tag, "flexible_layout", None)
    op = custom_op(OP_NAME, mutates_args=(), tags=(flexible,) if flexible is not None else ())(_op_impl)
    op.register_fake(_fake)
    return op


def _op_impl(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return conv3d_slabs(x, u, bias)


winograd_conv3d_slabs = _register()
