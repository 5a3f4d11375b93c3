"""Load 3D UX-Net checkpoints safely (``weights_only=True``) and read the architecture off the shapes."""
import pickle
import re
from pathlib import Path
from typing import Dict, Optional

import torch

from .errors import UXNetError
from .network import UXNet

STEM_KEY = "uxnet_3d.downsample_layers.0.0.weight"


def _short(items, n: int = 3) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, ``module.`` prefixes stripped; never runs pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UXNetError(f"checkpoint {path} does not exist; check the path or run 'uxnet-segment download NAME'")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "nsupported" in ln), type(exc).__name__)
        if "GLOBAL" in detail:
            raise UXNetError(f"checkpoint {path.name} was refused: it asks to run code or build objects other than "
                             f"tensors ({detail[:100]}); use a plain state_dict from a trusted source") from None
        raise UXNetError(f"checkpoint {path.name} was refused: it is damaged or not a plain torch.save state_dict "
                         f"({detail[:60]}); download it again or re-save model.state_dict()") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files (IndexError, KeyError...)
        raise UXNetError(f"checkpoint {path.name} is truncated or not a PyTorch file "
                         f"({type(exc).__name__}); download it again") from None
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], dict) and STEM_KEY not in obj:
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UXNetError(f"checkpoint {path.name} is not a state_dict of tensors; save model.state_dict()")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def infer_config(state: Dict[str, torch.Tensor]) -> dict:
    """UX-Net constructor arguments read off tensor shapes (widths, depths, hidden size, classes, channels)."""
    missing = [k for k in (STEM_KEY, "encoder5.layer.conv1.conv.weight", "out.conv.conv.weight") if k not in state]
    if missing:
        raise UXNetError(f"checkpoint is not a 3D UX-Net (no '{missing[0]}'; it has {_short(state)}); "
                         f"use a checkpoint saved from the official UXNET network")
    feat, depths, i = [], [], 0
    while f"uxnet_3d.norm{i}.weight" in state:
        feat.append(int(state[f"uxnet_3d.norm{i}.weight"].shape[0]))
        blocks = {int(m.group(1)) for k in state for m in [re.match(rf"uxnet_3d\.stages\.{i}\.(\d+)\.", k)] if m}
        depths.append(len(blocks))
        i += 1
    if len(feat) != 4:
        raise UXNetError(f"checkpoint has {len(feat)} encoder stages, 3D UX-Net has 4; use an official-layout file")
    return dict(in_chans=int(state[STEM_KEY].shape[1]), out_chans=int(state["out.conv.conv.weight"].shape[0]),
                depths=depths, feat_size=feat, hidden_size=int(state["encoder5.layer.conv1.conv.weight"].shape[0]),
                kernel_size=int(state["uxnet_3d.stages.0.0.dwconv.weight"].shape[-1])
                if "uxnet_3d.stages.0.0.dwconv.weight" in state else 7,
                res_block="encoder1.layer.conv3.conv.weight" in state)


def build_network(state: Dict[str, torch.Tensor], num_classes: Optional[int] = None, name: str = "checkpoint") -> UXNet:
    """A UX-Net in eval mode with ``state`` loaded strictly; ``num_classes`` (incl. background) is checked."""
    config = infer_config(state)
    if num_classes is not None and config["out_chans"] != num_classes:
        raise UXNetError(f"{name} predicts {config['out_chans']} classes but the model spec has {num_classes} "
                         f"(background + {num_classes - 1} labels); use the spec that belongs to this checkpoint")
    net = UXNet(**config)
    expected = net.state_dict()
    absent = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if absent or extra or wrong:
        parts = [f"missing {_short(absent)}" if absent else "", f"unexpected {_short(extra)}" if extra else "",
                 f"shape {_short(wrong, 2)}" if wrong else ""]
        raise UXNetError(f"{name} does not match the 3D UX-Net layout: {'; '.join(p for p in parts if p)}; "
                         f"use an official-layout checkpoint")
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_network(path, num_classes: Optional[int] = None, device="cpu") -> UXNet:
    """Read ``path`` safely and return the network on ``device`` in eval mode."""
    net = build_network(read_state_dict(path), num_classes, name=f"checkpoint {Path(path).name}")
    return net.to(device)
