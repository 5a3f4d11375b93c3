"""Map results from the processed grid back onto the input's own voxels.

This replaces MONAI's ``Invertd`` (pad the crop, undo the orientation, resample bilinearly with
border padding) by trilinear interpolation at the input's voxels, slab by slab (axis by axis in
:mod:`inverse_separable` where the grids share their axes, through the 8 corners in :mod:`inverse_stream`
otherwise), or by a plain gather where the grids are voxel-aligned, so that no full-volume ``(C, ...)``
probability map is ever built. Geometry is exact by construction: the output array has the input's size
and is given the input's spacing, origin and direction.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CHUNK_VOXELS = 1 << 19


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """4x4 matrix taking (i, j, k, 1) of a SimpleITK image to RAS millimetres."""
    m = np.eye(4)
    m[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())[None, :]
    m[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ m


class GridMap:
    """Input voxel -> continuous index in the processed (uncropped) grid, and the crop box inside it."""

    def __init__(self, image: sitk.Image, grid_affine: np.ndarray, grid_shape: Sequence[int],
                 crop_start: Sequence[int], crop_shape: Sequence[int]):
        self.size = image.GetSize()  # (I, J, K)
        self.to_grid = np.linalg.inv(np.asarray(grid_affine, dtype=np.float64)) @ ijk_to_ras(image)
        self.grid_shape = np.asarray(grid_shape)
        self.crop_start = np.asarray(crop_start)
        self.crop_shape = np.asarray(crop_shape)

    def voxel_aligned(self, tol: float = 1e-4) -> bool:
        """True when every input voxel centre is a processed-grid voxel centre (axes permuted or flipped,
        same spacing, whole-voxel shift) and all of them lie inside the grid: then no interpolation is needed."""
        m = self.to_grid[:3, :3]
        rounded = np.rint(m)
        if not np.allclose(m, rounded, atol=tol) or not np.allclose(np.abs(rounded).sum(0), 1):
            return False
        if not np.allclose(np.abs(rounded).sum(1), 1):
            return False
        shift = self.to_grid[:3, 3]
        if not np.allclose(shift, np.rint(shift), atol=tol):
            return False
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in self.size], indexing="ij")).reshape(3, -1).T
        grid = corners @ m.T + shift
        return bool(np.all(grid > -tol) and np.all(grid < self.grid_shape - 1 + tol))

    def axis_map(self, tol: float = 1e-4) -> Optional[Tuple[int, int, int]]:
        """For each processed axis x, y, z the one input axis (0 = i, 1 = j, 2 = k) it follows, when the map
        is a scaled permutation (the case after MONAI's Spacing and Orientation, oblique inputs included);
        None when an input axis moves along two processed axes by more than ``tol`` voxels over the volume."""
        m = self.to_grid[:3, :3]
        axes = tuple(int(a) for a in np.argmax(np.abs(m), axis=1))
        if sorted(axes) != [0, 1, 2]:
            return None
        off = m.copy()
        off[(0, 1, 2), axes] = 0.0
        return axes if float(np.abs(off).sum(1).max()) * max(self.size) <= tol else None

    def axis_taps(self, d: int, a: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Linear taps along processed axis ``d`` for every input position along input axis ``a``:
        ``(lower crop index (may lie outside the crop), lower weight, upper weight)``, a weight being 0
        where its neighbour lies outside the crop; coordinates clipped to the grid (border padding)."""
        g = self.to_grid[d, a] * np.arange(self.size[a], dtype=np.float64) + self.to_grid[d, 3]
        g = np.clip(g, 0, self.grid_shape[d] - 1) - self.crop_start[d]
        lo = np.floor(g)
        frac = g - lo
        lo = lo.astype(np.int64)
        n = int(self.crop_shape[d])
        w_lo = np.where((lo >= 0) & (lo < n), 1.0 - frac, 0.0)
        w_hi = np.where((lo + 1 >= 0) & (lo + 1 < n), frac, 0.0)
        return lo, w_lo, w_hi

    def chunk_slices(self) -> int:
        """How many k-slices one chunk holds."""
        ni, nj, _ = self.size
        return max(1, CHUNK_VOXELS // (ni * nj))

    def chunk_coords(self, k0: int, nks: int) -> np.ndarray:
        """Continuous crop-relative coordinates ``(n, 3)`` of the input voxels of k-slices ``k0 .. k0 + nks``,
        in (k, j, i) voxel order, clipped to the processed grid (MONAI's border padding)."""
        ni, nj, _ = self.size
        jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
        base = np.stack([ii.ravel(), jj.ravel()], 1).astype(np.float64)
        ks = np.arange(k0, k0 + nks, dtype=np.float64)
        ijk = np.concatenate([np.tile(base, (len(ks), 1)), np.repeat(ks, len(base))[:, None]], 1)
        grid = ijk @ self.to_grid[:3, :3].T + self.to_grid[:3, 3]
        grid = np.clip(grid, 0, self.grid_shape - 1)
        return grid - self.crop_start

    def chunks(self):
        """Yield (k0, number of k-slices, continuous crop-relative coordinates (n, 3)) in (k, j, i) voxel order."""
        nk, per = self.size[2], self.chunk_slices()
        for k0 in range(0, nk, per):
            nks = min(nk, k0 + per) - k0
            yield k0, nks, self.chunk_coords(k0, nks)

    def corners(self, coords: np.ndarray):
        """The 8 trilinear neighbours: flat indices into the crop (-1 outside it) and weights, (n, 8)."""
        lo = np.floor(coords)
        frac = coords - lo
        lo = lo.astype(np.int64)
        idx, wts = [], []
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    c = lo + np.array([dx, dy, dz])
                    w = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1]) \
                        * (frac[:, 2] if dz else 1 - frac[:, 2])
                    inside = np.all((c >= 0) & (c < self.crop_shape), axis=1)
                    flat = np.ravel_multi_index(tuple(np.clip(c, 0, self.crop_shape - 1).T), tuple(self.crop_shape))
                    idx.append(np.where(inside, flat, -1))
                    wts.append(np.where(inside, w, 0.0))
        return np.stack(idx, 1), np.stack(wts, 1)


def gather_labels(grid: GridMap, labels: torch.Tensor, uncertainty: Optional[torch.Tensor] = None
                  ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Labels ``(K, J, I)`` uint8 on the input grid (and uncertainty float32) for a voxel-aligned ``grid``
    (:meth:`GridMap.voxel_aligned`): every input voxel is one processed voxel of ``labels`` ``(X, Y, Z)``,
    and voxels outside the crop are background, as the trilinear path would give them."""
    flat_l = labels.reshape(-1)
    flat_u = uncertainty.reshape(-1) if uncertainty is not None else None
    ni, nj, nk = grid.size
    out = np.zeros((nk, nj, ni), dtype=np.uint8)
    unc = np.zeros((nk, nj, ni), dtype=np.float32) if uncertainty is not None else None
    for k0, nks, coords in grid.chunks():
        c = np.rint(coords).astype(np.int64)
        keep = torch.from_numpy(np.all((c >= 0) & (c < grid.crop_shape), axis=1))
        flat = torch.from_numpy(np.ravel_multi_index(tuple(np.clip(c, 0, grid.crop_shape - 1).T),
                                                     tuple(grid.crop_shape)))
        out[k0:k0 + nks] = torch.where(keep, flat_l[flat], 0).numpy().reshape(nks, nj, ni)
        if unc is not None:
            unc[k0:k0 + nks] = torch.where(keep, flat_u[flat], 0.0).numpy().reshape(nks, nj, ni)
    return out, unc


def to_image(array_kji: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array_kji)
    image.CopyInformation(like)
    return image
