"""What is kept of each finished slab when no interpolation follows: the label and, optionally, uncertainty.

Where the input's voxels are exactly the processed grid's voxels (no resampling: axes permuted or
flipped, whole-voxel shifts), the argmax of a voxel's probabilities is already its final label, so a
slab leaves 1 byte per voxel behind (plus 4 for the uncertainty), whatever the class count. Otherwise
:mod:`inverse_stream` maps each slab back onto the input grid as it arrives.
"""
from typing import Optional, Sequence

import math
import torch


class SlabStore:
    """Labels (and uncertainty) of a processed grid of shape ``(X, Y, Z)``, filled slab by slab."""

    def __init__(self, shape: Sequence[int], num_classes: int, uncertainty: Optional[str] = None):
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = num_classes
        self.index = torch.zeros(self.shape, dtype=torch.uint8)
        self.uncertainty_kind = uncertainty
        self.uncertainty = torch.zeros(self.shape, dtype=torch.float32) if uncertainty else None

    def __call__(self, x0: int, logits: torch.Tensor) -> None:
        """Store rows ``x0 .. x0 + n`` from blended logits ``(C, n, Y, Z)``."""
        prob = torch.softmax(logits, dim=0)
        n = prob.shape[1]
        if self.uncertainty is not None:
            self.uncertainty[x0:x0 + n] = uncertainty_from_prob(prob, self.uncertainty_kind)
        self.index[x0:x0 + n] = prob.argmax(0).to(torch.uint8)  # as the plain recipe takes it


def uncertainty_from_prob(prob: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """Per-voxel uncertainty in [0, 1] from probabilities ``(C, ...)``.

    ``entropy``: Shannon entropy divided by log(C). ``margin``: 1 - (p_top1 - p_top2).
    """
    if kind == "margin":
        top2 = torch.topk(prob, 2, dim=0).values
        return 1.0 - (top2[0] - top2[1])
    ent = -(prob * torch.log(prob.clamp_min(1e-12))).sum(0)
    return ent / math.log(prob.shape[0])
