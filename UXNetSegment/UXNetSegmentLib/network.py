"""3D UX-Net (Lee et al., ICLR 2023), written to load the official checkpoints unchanged.

Module and parameter names follow the official ``UXNET`` class exactly, so an official
``state_dict`` loads with ``strict=True``. Tensors are ``(B, C, H, W, D)`` throughout.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, ...)`` tensor (ConvNeXt's channels_first)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)


class UXBlock(nn.Module):
    """7³ depthwise conv → LayerNorm → grouped 1×1×1 (×4) → GELU → grouped 1×1×1 → gamma → residual."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        self.dwconv = nn.Conv3d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Conv3d(dim, 4 * dim, 1, groups=dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv3d(4 * dim, dim, 1, groups=dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x)
        y = F.layer_norm(y.permute(0, 2, 3, 4, 1), self.norm.normalized_shape,
                         self.norm.weight, self.norm.bias, self.norm.eps).permute(0, 4, 1, 2, 3)
        y = self.pwconv2(self.act(self.pwconv1(y)))
        return x + self.gamma.view(1, -1, 1, 1, 1) * y


class UXNetEncoder(nn.Module):
    """Stem (7³, stride 2) and 4 stages; returns the 4 LayerNorm'ed stage outputs."""

    def __init__(self, in_chans: int, depths: Sequence[int], dims: Sequence[int], kernel_size: int = 7):
        super().__init__()
        stem = nn.Sequential(nn.Conv3d(in_chans, dims[0], 7, stride=2, padding=3), ChannelLayerNorm(dims[0]))
        downs = [nn.Sequential(ChannelLayerNorm(dims[i]), nn.Conv3d(dims[i], dims[i + 1], 2, stride=2))
                 for i in range(len(dims) - 1)]
        self.downsample_layers = nn.ModuleList([stem] + downs)
        self.stages = nn.ModuleList(
            nn.Sequential(*[UXBlock(dims[i], kernel_size) for _ in range(depths[i])]) for i in range(len(dims)))
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor):
        outs = []
        for i, (down, stage) in enumerate(zip(self.downsample_layers, self.stages)):
            x = stage(down(x))
            outs.append(getattr(self, f"norm{i}")(x))
        return outs


class UXNet(nn.Module):
    """3D UX-Net: UX-Net encoder with a UNETR-style decoder of MONAI residual blocks.

    Input ``(B, in_chans, H, W, D)`` with H, W, D divisible by 32; output logits
    ``(B, out_chans, H, W, D)``.
    """

    def __init__(self, in_chans: int = 1, out_chans: int = 13, depths: Sequence[int] = (2, 2, 2, 2),
                 feat_size: Sequence[int] = (48, 96, 192, 384), hidden_size: int = 768,
                 kernel_size: int = 7, norm_name: str = "instance", res_block: bool = True):
        super().__init__()
        f = list(feat_size)
        self.config = dict(in_chans=in_chans, out_chans=out_chans, depths=list(depths), feat_size=f,
                           hidden_size=hidden_size, kernel_size=kernel_size)
        self.uxnet_3d = UXNetEncoder(in_chans, depths, f, kernel_size)

        def basic(cin, cout):
            return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name=norm_name, res_block=res_block)

        def up(cin, cout):
            return UnetrUpBlock(3, cin, cout, kernel_size=3, upsample_kernel_size=2,
                                norm_name=norm_name, res_block=res_block)

        self.encoder1 = basic(in_chans, f[0])
        self.encoder2 = basic(f[0], f[1])
        self.encoder3 = basic(f[1], f[2])
        self.encoder4 = basic(f[2], f[3])
        self.encoder5 = basic(f[3], hidden_size)
        self.decoder5 = up(hidden_size, f[3])
        self.decoder4 = up(f[3], f[2])
        self.decoder3 = up(f[2], f[1])
        self.decoder2 = up(f[1], f[0])
        self.decoder1 = basic(f[0], f[0])
        self.out = UnetOutBlock(3, f[0], out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0, s1, s2, s3 = self.uxnet_3d(x)
        enc2 = self.encoder2(s0)
        enc3 = self.encoder3(s1)
        enc4 = self.encoder4(s2)
        hidden = self.encoder5(s3)
        d = self.decoder5(hidden, enc4)
        d = self.decoder4(d, enc3)
        d = self.decoder3(d, enc2)
        enc1 = self.encoder1(x)
        d = self.decoder2(d, enc1)
        return self.out(self.decoder1(d))
