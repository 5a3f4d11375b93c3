"""Streaming sliding-window inference: MONAI's windows and constant blending, one slab at a time.

Windows are visited in MONAI's order (first spatial axis outermost). Once every window that
covers a range of the first axis has run, that range is final: it is divided by its count,
exactly as ``monai.inferers.sliding_window_inference`` does, and handed to a callback. Only a
slab one window deep is ever held, never the full-volume ``(C, X, Y, Z)`` map.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices

from .progress import CancelToken, ProgressCallback, report

# Receives (x0, averaged logits (C, n, Y, Z)) for rows x0 .. x0 + n of the first axis.
SlabCallback = Callable[[int, torch.Tensor], None]
ROWS_PER_CALL = 8  # finished rows handed to the callback at a time (bounds the temporaries)


def scan_interval(shape: Sequence[int], roi: Sequence[int], overlap: float) -> Tuple[int, ...]:
    """MONAI's interval: ``int(roi * (1 - overlap))`` (at least 1), or ``roi`` where it fills the axis."""
    return tuple(r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(shape, roi))


def symmetric_padding(shape: Sequence[int], roi: Sequence[int]) -> List[Tuple[int, int]]:
    """Per-axis (before, after) zero padding so that every axis is at least ``roi`` (as MONAI pads)."""
    pads = []
    for s, r in zip(shape, roi):
        diff = max(r - s, 0)
        pads.append((diff // 2, diff - diff // 2))
    return pads


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    padded = [s + a + b for s, (a, b) in zip(shape, symmetric_padding(shape, roi))]
    return len(dense_patch_slices(padded, roi, scan_interval(padded, roi, overlap)))


def sliding_window_stream(image: torch.Tensor, roi: Sequence[int], overlap: float,
                          predictor: Callable[[torch.Tensor], torch.Tensor], num_classes: int,
                          on_slab: SlabCallback, batch_size: int = 1,
                          progress: Optional[ProgressCallback] = None,
                          cancel: Optional[CancelToken] = None) -> None:
    """Run ``predictor`` over ``image`` ``(1, X, Y, Z)`` and stream the blended logits slab by slab.

    ``predictor`` maps ``(B, 1, *roi)`` float32 to ``(B, C, *roi)`` float32 logits on the CPU.
    """
    roi = tuple(min(int(r), 10 ** 6) for r in roi)
    shape = tuple(image.shape[1:])
    pads = symmetric_padding(shape, roi)
    if any(a or b for a, b in pads):
        flat = [p for a, b in reversed(pads) for p in (a, b)]
        image = F.pad(image, flat)
    padded = tuple(image.shape[1:])
    slices = dense_patch_slices(padded, roi, scan_interval(padded, roi, overlap))
    starts = sorted({s[0].start for s in slices})
    depth = roi[0]
    acc = torch.zeros((num_classes, depth) + padded[1:], dtype=torch.float32)
    count = torch.zeros((1, depth) + padded[1:], dtype=torch.float32)
    crop_yz = tuple(slice(a, a + n) for (a, _), n in zip(pads[1:], shape[1:]))
    done, total = 0, len(slices)
    for g, x_start in enumerate(starts):
        group = [s for s in slices if s[0].start == x_start]
        for b in range(0, len(group), batch_size):
            if cancel is not None:
                cancel.check()
            chunk = group[b:b + batch_size]
            windows = torch.stack([image[(slice(None),) + s] for s in chunk])
            logits = predictor(windows)
            for win, s in zip(logits, chunk):
                local = (slice(None), slice(0, depth)) + tuple(s[1:])
                acc[local] += win
                count[local] += 1.0
            del logits, win  # not held through the next window (54 MB at 16 classes)
            done += len(chunk)
            report(progress, "inference", done / total, f"window {done}/{total}")
        x_next = starts[g + 1] if g + 1 < len(starts) else padded[0]
        rows = x_next - x_start
        lo, hi = max(x_start, pads[0][0]), min(x_next, pads[0][0] + shape[0])
        # Hand the finished rows over a few at a time, so the temporaries (division, softmax, uncertainty)
        # stay small; the values are the same as dividing the whole slab at once.
        for a in range(lo, hi, ROWS_PER_CALL):
            b = min(a + ROWS_PER_CALL, hi)
            part = (slice(None), slice(a - x_start, b - x_start)) + crop_yz
            on_slab(a - pads[0][0], acc[part] / count[part])
        # Shift the unfinished rows to the front, row by row (no full-slab temporary copy).
        for r in range(max(depth - rows, 0)):
            acc[:, r].copy_(acc[:, r + rows])
            count[:, r].copy_(count[:, r + rows])
        acc[:, max(depth - rows, 0):] = 0
        count[:, max(depth - rows, 0):] = 0
