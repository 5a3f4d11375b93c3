"""Channels-last 3D layout for eager CPU inference: the same fp32 model, less memory traffic.

oneDNN's dense 3x3x3 convolutions (95% of UX-Net's work) run about 1.4x faster on channels-last
(NDHWC) tensors than on the default NCDHW layout on an AVX2 CPU, but only if the whole network stays
channels-last; one layer that hands back NCDHW costs a reorder in the next. :func:`keep_channels_last`
makes that so, in place, without touching a parameter's value or name (state dicts still match):

* convolution weights are stored channels-last, so the convolutions pick the NDHWC kernels;
* ``InstanceNorm3d`` (which PyTorch computes in NCDHW) runs, for one window at a time, as per-channel
  statistics plus batch norm's normalisation: for batch 1 that *is* instance norm, and it keeps the
  layout. Larger batches use instance norm as before;
* convolutions with one input channel per group (the stem, the 7x7x7 depthwise ones, the decoder's
  first) go to oneDNN's NDHWC kernel directly: PyTorch would pick its generic NCDHW kernel for them;
* dense 1x1x1 convolutions (residual shortcuts, the output block) are one matrix product on NDHWC;
* transposed convolutions, which PyTorch computes in NCDHW, have their output put back into NDHWC;
* UX-Net's grouped 1x1x1 convolutions (one input channel per group) become the broadcast multiply-add
  they are, computed on the NDHWC view.

The results equal the NCDHW network's to float rounding (max |delta logit| ~1e-5).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .network import UXBlock

CL = torch.channels_last_3d


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last 3D layout (also for 1-channel tensors, which PyTorch leaves alone)."""
    if x.dim() != 5 or (x.is_contiguous(memory_format=CL) and not x.is_contiguous()):
        return x
    n, c, d, h, w = x.shape
    out = torch.empty_strided(x.shape, (d * h * w * c, 1, h * w * c, w * c, c), dtype=x.dtype, device=x.device)
    return out.copy_(x)


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


class ChannelsLastInstanceNorm3d(nn.InstanceNorm3d):
    """``InstanceNorm3d`` that keeps a channels-last input channels-last (batch 1, no running stats).

    The per-channel mean and variance are two column reductions of the ``(voxels, C)`` view (PyTorch sums
    these by cascades, so they are accurate), then batch norm's normalisation is applied with them. Batch
    norm's own channels-last statistics are less precise (up to ~2e-4 on the official fixture's logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[0] != 1 or self.track_running_stats:
            return super().forward(x)
        flat = to_channels_last(x).permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1])
        mean = flat.mean(0)
        var = (flat - mean).square_().mean(0)
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


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
                or _compiling():  # TorchInductor cannot trace the direct oneDNN call; it lowers convs itself
            return super().forward(x)
        return torch.ops.aten.mkldnn_convolution(to_channels_last(x), self.weight, self.bias, list(self.padding),
                                                 list(self.stride), list(self.dilation), self.groups)


class ChannelsLastPointwiseConv3d(nn.Conv3d):
    """A dense 1x1x1 convolution as one matrix product on the NDHWC view (PyTorch would use its generic
    NCDHW kernel and reorder twice)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.device.type != "cpu":
            return super().forward(x)
        y = F.linear(to_channels_last(x).permute(0, 2, 3, 4, 1), self.weight.flatten(1), self.bias)
        return y.permute(0, 4, 1, 2, 3)


def _pointwise(module: nn.Module) -> bool:
    return (type(module) is nn.Conv3d and module.groups == 1 and module.kernel_size == (1, 1, 1)
            and module.stride == (1, 1, 1) and module.padding in ((0, 0, 0), "valid"))


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
        elif _pointwise(module):
            module.__class__ = ChannelsLastPointwiseConv3d
        elif _one_channel_per_group(module):
            module.__class__ = ChannelsLastConv3d
        elif isinstance(module, (nn.ConvTranspose3d, nn.Conv3d)) and module.in_channels // module.groups == 1 \
                or isinstance(module, nn.ConvTranspose3d):
            module.register_forward_hook(_to_ndhwc_hook)
    network.to(memory_format=CL)
    network._uxnet_channels_last = True
    return network
