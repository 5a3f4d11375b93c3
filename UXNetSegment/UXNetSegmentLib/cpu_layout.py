"""Channels-last 3D layout for eager CPU inference: the same fp32 model, less memory traffic.

oneDNN's dense 3x3x3 convolutions (95% of UX-Net's work) run about 1.4x faster on channels-last
(NDHWC) tensors than on the default NCDHW layout on an AVX2 CPU, but only if the whole network stays
channels-last; one layer that hands back NCDHW costs a reorder in the next. :func:`keep_channels_last`
makes that so, in place, without touching a parameter's value or name (state dicts still match):

* convolution weights are stored channels-last, so the convolutions pick the NDHWC kernels;
* ``InstanceNorm3d`` (which PyTorch computes in NCDHW) runs, for one window at a time, on the
  ``(voxels, C)`` view, in place: the same statistics and formula, the layout kept, and no second
  full-resolution tensor. Larger batches (and autograd) use instance norm as before;
* convolutions with one input channel per group (the stem, the 7x7x7 depthwise ones, the decoder's
  first) go to oneDNN's NDHWC kernel directly: PyTorch would pick its generic NCDHW kernel for them;
* MONAI's up-sampling blocks skip their concatenation (the next convolutions are split over the two
  halves), which saves a full-resolution tensor of twice the width;
* dense 1x1x1 convolutions (residual shortcuts, the output block) are one matrix product on NDHWC;
* transposed convolutions whose kernel equals their stride (UX-Net's 2x2x2 up-sampling) are one matrix
  product with an NDHWC result; other transposed convolutions have their output put back into NDHWC;
* UX-Net's grouped 1x1x1 convolutions (one input channel per group) become the broadcast multiply-add
  they are, computed on the NDHWC view.

The results equal the NCDHW network's to float rounding (max |delta logit| ~1e-5).

:func:`prepare_for_compile` applies only the matrix-product forms (dense 1x1x1 and 2x2x2 up-sampling) before
TorchInductor compiles the network: its own lowering of these two ran ~10x slower than a matrix product in a
96^3 window (a transposed convolution plus a reorder, ~0.3 s; the 96->48 shortcut, ~0.25 s). It also hands
the dense 3x3x3 convolutions to Winograd's algorithm where that pays (``winograd.py``).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from monai.networks.blocks.dynunet_block import UnetResBlock
from monai.networks.blocks.unetr_block import UnetrUpBlock

from .compile import is_compiling
from .network import UXBlock
from .winograd import use_winograd

CL = torch.channels_last_3d
NORM_CHUNK_ROWS = 1 << 16  # voxels per chunk of the variance pass


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last 3D layout (also for 1-channel tensors, which PyTorch leaves alone)."""
    if x.dim() != 5 or (x.is_contiguous(memory_format=CL) and not x.is_contiguous()):
        return x
    n, c, d, h, w = x.shape
    out = torch.empty_strided(x.shape, (d * h * w * c, 1, h * w * c, w * c, c), dtype=x.dtype, device=x.device)
    return out.copy_(x)


class ChannelsLastInstanceNorm3d(nn.InstanceNorm3d):
    """``InstanceNorm3d`` for one channels-last window (batch 1, no running stats, no autograd), in place.

    UX-Net's decoder blocks (MONAI's ``UnetResBlock``/``UnetBasicBlock``) normalise only fresh
    convolution outputs, so the result overwrites its input: no second full-resolution tensor. The
    per-channel mean and variance come from one chunked pass over the ``(voxels, C)`` view (no temporary of
    the input's size), centred on a sampled mean and summed in float64, so they are accurate, unlike batch
    norm's own channels-last statistics (up to ~2e-4 off on the official fixture's logits); the
    normalisation is one fused multiply-add in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[0] != 1 or self.track_running_stats or torch.is_grad_enabled():
            return super().forward(x)
        y = to_channels_last(x)  # x itself when it already is (as in a channels-last network)
        flat = y.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1])  # a view of y
        n = flat.shape[0]
        # One pass over chunks for the sums of (x - s) and (x - s)^2, s a rough mean from a sample of rows:
        # centred this way, var = E[(x-s)^2] - E[x-s]^2 loses nothing to cancellation. Each chunk is summed
        # in float32 (PyTorch sums pairwise: ~1e-7 relative), the chunks' sums in float64.
        s = flat[::max(n // 4096, 1)].mean(0)
        s1, s2 = torch.zeros_like(s, dtype=torch.float64), torch.zeros_like(s, dtype=torch.float64)
        for start in range(0, n, NORM_CHUNK_ROWS):
            d = flat[start:start + NORM_CHUNK_ROWS] - s
            s1 += d.sum(0)
            s2 += d.square_().sum(0)
        mean_d = s1 / n
        var = (s2 / n - mean_d * mean_d).clamp_min(0.0)
        scale = torch.rsqrt(var + self.eps)
        shift = -(mean_d + s.double()) * scale
        if self.weight is not None:
            scale, shift = scale * self.weight.double(), shift * self.weight.double() + self.bias.double()
        torch.addcmul(shift.float(), flat, scale.float(), out=flat)  # flat = flat * scale + shift, one pass
        return y


class ChannelsLastUXBlock(UXBlock):
    """:class:`UXBlock` computed on the NDHWC view: LayerNorm and the grouped 1x1x1 convs as broadcasts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        y = to_channels_last(self.dwconv(x)).permute(0, 2, 3, 4, 1)  # (N, D, H, W, C), contiguous
        y = F.layer_norm(y, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        k = self.pwconv1.out_channels // c
        y = y.unsqueeze(-1) * self.pwconv1.weight.view(c, k) + self.pwconv1.bias.view(c, k)
        y = self.act(y)
        y = (y * self.pwconv2.weight.view(c, k)).sum(-1) + self.pwconv2.bias
        return x + (y * self.gamma).permute(0, 4, 1, 2, 3)


class ChannelsLastConv3d(nn.Conv3d):
    """A convolution with one input channel per group (stem, depthwise 7x7x7, the first decoder conv) run
    by oneDNN on NDHWC. PyTorch would send it to its generic kernel, which reorders to NCDHW and is slower."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.dtype != torch.float32 or x.device.type != "cpu" or self.padding_mode != "zeros" \
                or is_compiling():  # TorchInductor cannot trace the direct oneDNN call; it lowers convs itself
            return super().forward(x)
        return torch.ops.aten.mkldnn_convolution(to_channels_last(x), self.weight, self.bias, list(self.padding),
                                                 list(self.stride), list(self.dilation), self.groups)


class ChannelsLastPointwiseConv3d(nn.Conv3d):
    """A dense 1x1x1 convolution as one matrix product on the NDHWC view (PyTorch would use its generic
    NCDHW kernel and reorder twice)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.device.type != "cpu":
            return super().forward(x)
        # Traced, the rows' reshape below asks for the layout itself, and TorchInductor writes the producer
        # straight into it; an explicit layout copy would keep two copies of the input alive.
        return _pointwise_ndhwc(x if is_compiling() else to_channels_last(x), self.weight, self.bias)


def _pointwise_ndhwc(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The 1x1x1 convolution of the channels-last ``x`` as one 2D matrix product, written into (or, with
    ``out``, added to) an NDHWC result. One input channel makes it an outer product, computed as a
    broadcast multiply: BLAS takes a slow path (~20x) on the (1, 1)-strided matrices it would get."""
    n, c, d, h, w = x.shape
    rows = x.permute(0, 2, 3, 4, 1).reshape(-1, c)  # a view of the NDHWC storage
    matrix = weight.reshape(weight.shape[0], c).t()
    if out is None:
        if c == 1:
            y = torch.addcmul(bias, rows, matrix) if bias is not None else rows * matrix
        else:
            y = torch.addmm(bias, rows, matrix) if bias is not None else torch.mm(rows, matrix)
        return y.view(n, d, h, w, -1).permute(0, 4, 1, 2, 3)
    out_rows = out.permute(0, 2, 3, 4, 1).view(-1, out.shape[1])
    # In-place products are outside autocast: under bf16 autocast ``out`` is bf16, ``rows`` may be float32.
    rows, matrix = rows.to(out.dtype), matrix.to(out.dtype)
    if c == 1:
        out_rows.addcmul_(rows, matrix)
    else:
        out_rows.addmm_(rows, matrix)
    if bias is not None:
        out_rows += bias
    return out


class PatchTransposedConv3d(nn.ConvTranspose3d):
    """A transposed convolution whose kernel equals its stride (each input voxel paints its own output patch,
    no overlap): one matrix product on the NDHWC view, then the patches laid out, the result NDHWC."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if x.dim() != 5 or x.device.type != "cpu" or output_size is not None:
            return super().forward(x, output_size)
        n, c, d, h, w = x.shape
        kd, kh, kw = self.kernel_size
        rows = x.permute(0, 2, 3, 4, 1).reshape(-1, c)
        matrix = self.weight.permute(0, 2, 3, 4, 1).reshape(c, -1)  # columns ordered (kd, kh, kw, out channel)
        y = torch.mm(rows, matrix).view(n, d, h, w, kd, kh, kw, -1)
        y = y.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(n, d * kd, h * kh, w * kw, -1)
        if self.bias is not None:
            y += self.bias.to(y.dtype)  # y is a fresh tensor (the reshape copied): no second one of its size
        return y.permute(0, 4, 1, 2, 3)


def _patch_transposed(module: nn.Module) -> bool:
    return (type(module) is nn.ConvTranspose3d and module.kernel_size == module.stride and module.groups == 1
            and module.padding == (0, 0, 0) and module.output_padding == (0, 0, 0)
            and module.dilation == (1, 1, 1) and module.padding_mode == "zeros")


def _pointwise(module: nn.Module) -> bool:
    return (type(module) is nn.Conv3d and module.groups == 1 and module.kernel_size == (1, 1, 1)
            and module.stride == (1, 1, 1) and module.padding in ((0, 0, 0), "valid"))


def _matrix_form(module: nn.Module) -> Optional[type]:
    """The matrix-product class for a dense 1x1x1 convolution or a patch-wise transposed one, else None."""
    if _pointwise(module):
        return ChannelsLastPointwiseConv3d
    if _patch_transposed(module):
        return PatchTransposedConv3d
    return None


def _conv_of_concat(conv: nn.Conv3d, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``conv(cat((a, b), 1))`` as the sum of two convolutions, without building the concatenation."""
    c = a.shape[1]
    parts = conv.weight[:, :c], conv.weight[:, c:]
    if conv.kernel_size == (1, 1, 1) and conv.stride == (1, 1, 1):
        return _pointwise_ndhwc(b, parts[1], conv.bias, out=_pointwise_ndhwc(a, parts[0], None))
    wa, wb = (p.contiguous(memory_format=CL) for p in parts)
    out = F.conv3d(a, wa, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    out += F.conv3d(b, wb, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    if conv.bias is not None:
        out += conv.bias.view(1, -1, 1, 1, 1)
    return out


class ChannelsLastUpBlock(UnetrUpBlock):
    """MONAI's ``UnetrUpBlock`` without its concatenation: the residual block's first convolution and its
    1x1x1 shortcut are each split over (upsampled, skip), which saves a 2C-channel full-resolution tensor."""

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        block = self.conv_block
        if torch.is_grad_enabled() or type(block) is not UnetResBlock or not hasattr(block, "conv3") \
                or not hasattr(block, "norm3") or skip.device.type != "cpu":
            return super().forward(inp, skip)
        up = to_channels_last(self.transp_conv(inp))
        skip = to_channels_last(skip)
        out = block.lrelu(block.norm1(_conv_of_concat(block.conv1.conv, up, skip)))
        out = block.norm2(block.conv2(out))
        out += block.norm3(_conv_of_concat(block.conv3.conv, up, skip))
        return block.lrelu(out)


def _to_ndhwc_hook(module, inputs, output):
    return to_channels_last(output)


def _one_channel_per_group(module: nn.Module) -> bool:
    return (type(module) is nn.Conv3d and module.in_channels // module.groups == 1
            and isinstance(module.padding, tuple) and torch.backends.mkldnn.is_available())


def keep_channels_last(network: nn.Module) -> nn.Module:
    """Make ``network`` (in place) run channels-last end to end on channels-last inputs; returns it."""
    if getattr(network, "_uxnet_channels_last", False):
        return network
    for module in network.modules():
        if type(module) is nn.InstanceNorm3d:
            module.__class__ = ChannelsLastInstanceNorm3d
        elif type(module) is UXBlock and module.pwconv1.groups == module.pwconv1.in_channels:
            module.__class__ = ChannelsLastUXBlock
        elif type(module) is UnetrUpBlock:
            module.__class__ = ChannelsLastUpBlock
        elif _matrix_form(module) is not None:
            module.__class__ = _matrix_form(module)
        elif _one_channel_per_group(module):
            module.__class__ = ChannelsLastConv3d
        elif type(module) is nn.ConvTranspose3d or (type(module) is nn.Conv3d
                                                          and module.in_channels // module.groups == 1):
            # left to PyTorch, which hands these back in NCDHW: transposed convs, and one-channel-per-group
            # convs where oneDNN is not available
            module.register_forward_hook(_to_ndhwc_hook)
    network.to(memory_format=CL)
    network._uxnet_channels_last = True
    return network


def prepare_for_compile(network: nn.Module, winograd: bool = True) -> nn.Module:
    """Give ``network`` (in place) the matrix-product forms of its dense 1x1x1 convolutions and patch-wise
    transposed convolutions, and (``winograd``) Winograd's form of its dense 3x3x3 ones, for TorchInductor on
    the CPU; returns it. Names and values are unchanged."""
    for module in network.modules():
        form = _matrix_form(module)
        if form is not None:
            module.__class__ = form
    return use_winograd(network, winograd)
