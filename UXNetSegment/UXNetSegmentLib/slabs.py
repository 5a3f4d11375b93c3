"""What is kept of each finished slab: the top-k class probabilities and, optionally, uncertainty.

Keeping ``k`` (class index, probability) pairs per voxel instead of all ``C`` probabilities makes
memory independent of the class count. The final label is the argmax of the trilinearly
interpolated probabilities; classes outside a voxel's top ``k`` (k = 8 by default, probabilities
below 1/9 each) cannot change it except at near-ties of the weakest classes.
"""
from typing import Optional, Sequence

import math
import torch

TOP_K = 8


class SlabStore:
    """Accumulates softmax summaries over a processed grid of shape ``(X, Y, Z)``.

    With ``labels_only`` (the input's voxels are exactly the processed grid's voxels, so no
    interpolation follows) only the argmax class is kept: 1 byte per voxel, and ``prob`` is None.
    """

    def __init__(self, shape: Sequence[int], num_classes: int, uncertainty: Optional[str] = None,
                 top_k: int = TOP_K, labels_only: bool = False):
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = num_classes
        self.labels_only = labels_only
        self.k = 1 if labels_only else min(top_k, num_classes)
        self.index = torch.zeros((self.k,) + self.shape, dtype=torch.uint8)
        self.prob = None if labels_only else torch.zeros((self.k,) + self.shape, dtype=torch.float32)
        self.uncertainty_kind = uncertainty
        self.uncertainty = torch.zeros(self.shape, dtype=torch.float32) if uncertainty else None

    def __call__(self, x0: int, logits: torch.Tensor) -> None:
        """Store rows ``x0 .. x0 + n`` from blended logits ``(C, n, Y, Z)``."""
        prob = torch.softmax(logits, dim=0)
        n = prob.shape[1]
        if self.uncertainty is not None:
            self.uncertainty[x0:x0 + n] = uncertainty_from_prob(prob, self.uncertainty_kind)
        if self.labels_only:  # argmax of the probabilities, as the plain recipe takes it
            self.index[0, x0:x0 + n] = prob.argmax(0).to(torch.uint8)
            return
        if self.k == self.num_classes:
            top_p, top_i = prob, torch.arange(self.k).view(-1, 1, 1, 1).expand_as(prob)
        else:
            top_p, top_i = torch.topk(prob, self.k, dim=0)
        self.index[:, x0:x0 + n] = top_i.to(torch.uint8)
        self.prob[:, x0:x0 + n] = top_p


def uncertainty_from_prob(prob: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """Per-voxel uncertainty in [0, 1] from probabilities ``(C, ...)``.

    ``entropy``: Shannon entropy divided by log(C). ``margin``: 1 - (p_top1 - p_top2).
    """
    if kind == "margin":
        top2 = torch.topk(prob, 2, dim=0).values
        return 1.0 - (top2[0] - top2[1])
    ent = -(prob * torch.log(prob.clamp_min(1e-12))).sum(0)
    return ent / math.log(prob.shape[0])
