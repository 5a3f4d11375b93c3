"""Train the bundled demo model: a small 3D UX-Net for brain tissue (CSF, GM, WM) on skull-stripped T1.

Reproduce the shipped weights (about 20-25 minutes on one CPU thread)::

    .venv/bin/python tools/demo_model/train.py --out Resources/Weights/demo_brain.pth

Data: the MNI ICBM152 2009a template and its tissue maps read from the installed nilearn package
(``prepare_data.py``), made scan-like by heavy augmentation (``augment.py``). Network:
``UXNetSegmentLib.network.UXNet`` with the widths below; output 4 classes (0 background, 1 CSF,
2 GM, 3 WM). Loss: Dice + cross-entropy. Optimiser: AdamW with linear warm-up and cosine decay.
Everything is seeded and runs on one CPU thread, so a rerun gives the same weights on the same
software stack (torch/MONAI versions; different CPUs may differ in the last bits).

The file written is a plain ``state_dict`` (tensors only), loadable with ``weights_only=True`` and
``strict=True`` into ``UXNet`` built from ``checkpoint.infer_config``. Its sha256 is printed; put it
in ``Resources/Models/demo_brain.json``.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "UXNetSegment"))

from augment import as_sample, build_augmentation, crop_to_brain  # noqa: E402
from prepare_data import LABEL_NAMES, load_training_pair  # noqa: E402

ARCH = dict(in_chans=1, out_chans=4, depths=[2, 2, 2, 2], feat_size=[8, 16, 32, 64], hidden_size=64)


def set_seed(seed: int) -> None:
    import random

    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def plain(t) -> torch.Tensor:
    """A plain ``torch.Tensor`` (MONAI's MetaTensor would route every network op through Python)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 2 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1.0 + np.cos(np.pi * t)))


def template_dice(net: torch.nn.Module, image: np.ndarray, labels: np.ndarray, roi: int) -> dict:
    """Dice per tissue on the un-augmented template (a training-fit check, not held-out accuracy),
    with the engine's steps: percentiles -> [0, 1], crop to ``image > 0``, sliding window."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import ScaleIntensityRangePercentiles

    x = plain(ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(torch.from_numpy(image[None])))
    idx = np.nonzero(x[0].numpy() > 0)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    net.eval()
    with torch.no_grad():
        logits = sliding_window_inference(x[(slice(None),) + box][None].float(), (roi,) * 3, 1, net, overlap=0.5)
    pred = np.zeros(labels.shape, np.uint8)
    pred[box] = logits.argmax(1)[0].numpy()
    out = {}
    for v, name in LABEL_NAMES.items():
        a, b = pred == v, labels == v
        out[name] = round(float(2 * (a & b).sum() / max(1, a.sum() + b.sum())), 4)
    return out


def save_state_dict(net: torch.nn.Module, path: Path) -> str:
    """Write a contiguous fp32 ``state_dict`` atomically; return its sha256.

    Serialised through memory so the archive's inner folder name is fixed ("archive"), not taken
    from a temporary file name: identical weights give a byte-identical file.
    """
    import io

    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".train-", suffix=".pth", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the demo brain-tissue UX-Net on the MNI template.")
    parser.add_argument("--out", required=True, help="output .pth (plain state_dict)")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps (one augmented volume each)")
    parser.add_argument("--patch", type=int, default=48, help="training patch side in 2 mm voxels")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=20231)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a busy machine: no OpenMP spin-waits)")
    args = parser.parse_args()

    from monai.losses import DiceCELoss
    from tqdm import tqdm

    from UXNetSegmentLib.network import UXNet

    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    t0 = time.time()
    image, probs, labels, _ = load_training_pair()
    brain_image, brain_probs = crop_to_brain(image, probs)
    augment = build_augmentation((args.patch,) * 3, seed=args.seed)

    net = UXNet(**ARCH).to(memory_format=torch.channels_last_3d)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"UXNet {json.dumps(ARCH)}: {n_params / 1e6:.2f} M parameters", flush=True)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)

    net.train()
    running, t_aug = None, 0.0
    bar = tqdm(range(args.steps), desc="train", unit="step", dynamic_ncols=True, mininterval=5.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=25)
        t_step = time.time()
        sample = augment(as_sample(brain_image, brain_probs))
        x = plain(sample["image"]).float()[None].contiguous(memory_format=torch.channels_last_3d)
        y = plain(sample["label"]).long()[None]
        t_aug += time.time() - t_step
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = float(loss) if running is None else 0.95 * running + 0.05 * float(loss)
        bar.set_postfix(loss=f"{running:.3f}", refresh=False)
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}/{args.steps} loss {running:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"elapsed {time.time() - t0:.0f}s (augmentation {t_aug:.0f}s)", flush=True)
    bar.close()

    digest = save_state_dict(net, Path(args.out))
    print(f"training {time.time() - t0:.0f}s wall, {time.process_time():.0f}s CPU; augmentation {t_aug:.0f}s wall",
          flush=True)
    fit = template_dice(net, image, labels, args.patch)
    minutes = (time.time() - t0) / 60
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB) sha256 {digest}")
    print(f"template (training) Dice: {json.dumps(fit)}; {minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()
