"""Map each finished slab straight back onto the input grid, with every class, as the slabs arrive.

The official recipe interpolates all class probabilities trilinearly back onto the input's voxels and
takes the argmax there. Doing that after the sliding window needs the probabilities of the whole processed
volume. Here each input voxel is finished as soon as the processed rows its 8 trilinear neighbours lie in
have been blended: the voxel belongs to the slab that holds its upper neighbour row (``floor(x) + 1``,
clamped into the crop), and the slab before it keeps only its last row for the lower neighbour. So only
one slab of probabilities (plus one row) is ever held, every class takes part in the interpolation (no
top-k truncation), and what is kept per input voxel is its label byte (and uncertainty, if asked).

This is the general path, for grids whose axes are not the input's (never the case after MONAI's Spacing
and Orientation); :mod:`inverse_separable` does the common case axis by axis, about 13x faster (tools/benchmark_inverse.py).
"""
from typing import Optional, Tuple

import numpy as np
import torch

from .resample import GridMap
from .slabs import uncertainty_from_prob

SCORE_BYTES = 1 << 26  # bound on the (classes x voxels) score block of one step
BLOCK_ROWS = 32  # finished rows mapped back together (each block re-reads the input's coordinates once)


class StreamingInverse:
    """Slab callback for :func:`inference.sliding_window_stream` that fills labels on the input grid."""

    def __init__(self, grid: GridMap, num_classes: int, uncertainty: Optional[str] = None):
        self.grid = grid
        self.num_classes = num_classes
        self.uncertainty_kind = uncertainty
        ni, nj, nk = grid.size
        self.labels = np.zeros(nk * nj * ni, dtype=np.uint8)
        self.unc = np.zeros(nk * nj * ni, dtype=np.float32) if uncertainty else None
        self.rows = int(grid.crop_shape[0])
        self.plane = int(grid.crop_shape[1] * grid.crop_shape[2])
        self.prev: Optional[torch.Tensor] = None       # (C, 1, Y, Z) probabilities of the last finished row
        self.prev_unc: Optional[torch.Tensor] = None   # (1, Y, Z)
        self.pending = []                              # [(probabilities, uncertainty)] not yet mapped back
        self.pending_rows = 0
        self.next_row = 0
        # Which upper-neighbour rows each input chunk needs, so a block visits only the chunks it finishes.
        self.chunk_rows = [(k0, n, *self._row_range(coords)) for k0, n, coords in grid.chunks()]

    @property
    def rows_held(self) -> int:
        """Processed rows whose class probabilities are held now."""
        return self.pending_rows + (1 if self.prev is not None else 0)

    def _key_rows(self, coords: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(coords[:, 0]).astype(np.int64) + 1, 0, self.rows - 1)

    def _row_range(self, coords: np.ndarray) -> Tuple[int, int]:
        keys = self._key_rows(coords)
        return int(keys.min()), int(keys.max())

    def __call__(self, x0: int, logits: torch.Tensor) -> None:
        """Rows ``x0 .. x0 + n`` of blended logits ``(C, n, Y, Z)`` are final; map them back a block at a time."""
        if x0 != self.next_row:
            raise RuntimeError(f"slab rows arrived out of order ({x0}, expected {self.next_row})")
        prob = torch.softmax(logits, dim=0)
        unc = uncertainty_from_prob(prob, self.uncertainty_kind) if self.unc is not None else None
        self.pending.append((prob, unc))
        self.pending_rows += prob.shape[1]
        self.next_row = x0 + prob.shape[1]
        if self.pending_rows >= BLOCK_ROWS or self.next_row == self.rows:
            self._flush()

    def _flush(self) -> None:
        probs = [p for p, _ in self.pending]
        uncs = [u for _, u in self.pending]
        lo, hi = self.next_row - self.pending_rows, self.next_row - 1
        start = lo - 1 if self.prev is not None else lo
        if self.prev is not None:
            probs.insert(0, self.prev)
            uncs.insert(0, self.prev_unc)
        buf = torch.cat(probs, 1)
        ubuf = torch.cat(uncs, 0) if self.unc is not None else None
        self.pending, self.pending_rows = [], 0
        self._finish(lo, hi, start, buf.reshape(self.num_classes, -1),
                     ubuf.reshape(-1) if ubuf is not None else None)
        self.prev = buf[:, -1:].clone()
        self.prev_unc = ubuf[-1:].clone() if ubuf is not None else None

    def _finish(self, lo: int, hi: int, start: int, flat: torch.Tensor, uflat: Optional[torch.Tensor]) -> None:
        """Labels for the input voxels whose upper neighbour row is in ``lo .. hi``; buffer rows from ``start``."""
        ni, nj, _ = self.grid.size
        per_step = max(1, SCORE_BYTES // (4 * self.num_classes))
        offset = start * self.plane
        size = flat.shape[1]
        for k0, nks, rmin, rmax in self.chunk_rows:
            if rmax < lo or rmin > hi:
                continue
            coords = self.grid.chunk_coords(k0, nks)
            keys = self._key_rows(coords)
            sel = np.nonzero((keys >= lo) & (keys <= hi))[0]
            base = k0 * nj * ni
            for a in range(0, len(sel), per_step):
                part = sel[a:a + per_step]
                idx, w = self.grid.corners(coords[part])
                valid = idx >= 0
                pos = np.where(valid, idx - offset, 0)
                if np.any(valid & ((pos < 0) | (pos >= size))):
                    raise RuntimeError("a trilinear neighbour lies outside the finished rows")
                pos_t = torch.from_numpy(pos)
                wt = torch.from_numpy(np.where(valid, w, 0.0).astype(np.float32))
                scores = torch.zeros((self.num_classes, len(part)), dtype=torch.float32)
                for c in range(8):
                    scores += flat[:, pos_t[:, c]] * wt[:, c]
                self.labels[base + part] = scores.argmax(0).to(torch.uint8).numpy()
                if self.unc is not None:
                    self.unc[base + part] = (uflat[pos_t] * wt).sum(1).numpy()

    def result(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(labels (K, J, I) uint8, uncertainty (K, J, I) float32 or None)`` once every row has arrived."""
        if self.next_row != self.rows:
            raise RuntimeError(f"only {self.next_row} of {self.rows} rows arrived")
        ni, nj, nk = self.grid.size
        unc = self.unc.reshape(nk, nj, ni) if self.unc is not None else None
        return self.labels.reshape(nk, nj, ni), unc
