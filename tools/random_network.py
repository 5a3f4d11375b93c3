"""The benchmarks' stand-in for a trained UX-Net: random weights, layer-scale gammas ~ U(0.5, 1.5) so that
every block contributes (UX-Net initialises them at 1e-6, which would make the encoder blocks near no-ops)."""
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UXNetSegment"))

import torch  # noqa: E402

from UXNetSegmentLib.network import UXNet  # noqa: E402


def random_uxnet(classes: int = 16, seed: int = 0, depths: Sequence[int] = (2, 2, 2, 2),
                 feat: Sequence[int] = (48, 96, 192, 384), hidden: int = 768) -> UXNet:
    """A full-size (by default) UX-Net in eval mode, the same weights for the same arguments."""
    torch.manual_seed(seed)
    net = UXNet(1, classes, depths=depths, feat_size=feat, hidden_size=hidden)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.5, 1.5)
    return net.eval()
