"""Small builders shared by the engine tests: specs, tiny networks, synthetic volumes."""
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from UXNetSegmentLib.catalogue import spec_from_dict
from UXNetSegmentLib.network import UXNet

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "Testing" / "Data"
FIXTURE_WEIGHTS = DATA / "uxnet_small_seed7.pth"


def ctchest4_path() -> str:
    import slicerio
    return os.path.join(os.path.dirname(slicerio.__file__), "data", "CTChest4.nrrd")


def fixture_spec(**overrides):
    """The recipe the shared pipeline fixture was made with (fixture_seed7.json)."""
    data = {"name": "fixture", "labels": {"1": "liver", "2": "kidney", "3": "spleen", "4": "pancreas"},
            "spacing": [2.0, 2.0, 2.5], "intensity_window": [-125, 275], "roi_size": [64, 64, 64],
            "overlap": 0.5, "modality": "CT"}
    data.update(overrides)
    return spec_from_dict(data)


def tiny_network(out_chans: int = 5, seed: int = 0, feat=(8, 16, 16, 32), hidden: int = 32) -> UXNet:
    """A random small UX-Net whose layer scales matter (gamma ~ 1), for fast end-to-end tests."""
    torch.manual_seed(seed)
    net = UXNet(1, out_chans, depths=(1, 1, 1, 1), feat_size=feat, hidden_size=hidden)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    return net.eval()


def save_tiny_checkpoint(path: Path, out_chans: int = 5, seed: int = 0, prefix: str = "") -> Path:
    state = {prefix + k: v for k, v in tiny_network(out_chans, seed).state_dict().items()}
    torch.save(state, str(path))
    return path


def tiny_spec(**overrides):
    return fixture_spec(roi_size=[32, 32, 32], **overrides)


def synthetic_ct(size=(40, 36, 24), spacing=(1.1, 0.9, 2.0), direction=None, seed: int = 1) -> sitk.Image:
    """A CT-like volume (HU) with a few bright and dark blobs, on an arbitrary grid."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in size[::-1]], indexing="ij")
    body = (i ** 2 + j ** 2 < 0.8).astype(np.float32)
    vol = -1000 + body * 1040 + 150 * np.exp(-((i - 0.3) ** 2 + j ** 2 + (k - 0.2) ** 2) / 0.05)
    vol += 80 * np.exp(-((i + 0.3) ** 2 + (j - 0.2) ** 2 + k ** 2) / 0.08) + rng.normal(0, 20, vol.shape)
    image = sitk.GetImageFromArray(vol.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, 15.0, -30.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def rotation_direction(degrees: float, axis: int = 2) -> tuple:
    """A direction matrix rotated by ``degrees`` about one axis (row-major 9-tuple)."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    a, b = [x for x in range(3) if x != axis]
    m = np.eye(3)
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return tuple(m.ravel())
