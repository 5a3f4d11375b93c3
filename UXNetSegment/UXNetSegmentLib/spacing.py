"""MONAI's ``Spacing`` run a slab of output planes at a time, so a large CT never needs a full sampling grid.

A whole-volume ``Spacing`` builds a float64 sampling grid and a float64 copy of the image for every output
voxel at once: 4.6 GiB more for a 512 x 512 x 300 CT. Here MONAI plans the output grid itself (a lazy
``Spacing``: same affine, same shape), then ``SpatialResample`` fills it slab by slab, each from only the
input voxels that slab can reach. Same transform, same settings (bilinear, border, float64), so the values
equal the whole-volume call's to float rounding.
"""
import itertools
from typing import Sequence

import numpy as np
import torch
from monai import transforms as T
from monai.data import MetaTensor

_MODE = dict(mode="bilinear", padding_mode="border", align_corners=False, dtype=np.float64)


def _translated(affine: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """The affine of a sub-grid whose voxel 0 is voxel ``offset`` of ``affine``'s grid."""
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.asarray(offset, dtype=np.float64) + affine[:3, 3]
    return out


def _source_box(to_source: np.ndarray, shape: Sequence[int], source_shape: Sequence[int]):
    """Input voxel box (lo, hi) holding every bilinear tap of an output box of ``shape``; ``to_source`` maps
    output voxel indices to input voxel indices. The box's corners bound the whole box (the map is affine);
    floor/ceil cover the taps, one more voxel each side guards against rounding. Points beyond an edge
    clamp to it (border padding), so the box keeps that edge."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=np.float64)
    mapped = corners @ to_source[:3, :3].T + to_source[:3, 3]
    size = np.asarray(source_shape)
    lo = np.clip(np.floor(mapped.min(0)).astype(int) - 1, 0, size - 1)
    hi = np.clip(np.ceil(mapped.max(0)).astype(int) + 2, lo + 1, size)
    return lo, hi


def spacing_in_slabs(data: MetaTensor, pixdim: Sequence[float], slab_voxels: int = 1 << 22) -> MetaTensor:
    """``T.Spacing(pixdim, mode="bilinear")(data)`` computed ``slab_voxels`` output voxels (whole planes of
    the last axis) at a time. ``data`` is a channel-first 3-D MetaTensor."""
    plan = T.Spacing(pixdim=pixdim, lazy=True, **_MODE)(data)
    affine = np.asarray(plan.peek_pending_affine(), dtype=np.float64)
    shape = tuple(int(n) for n in plan.peek_pending_shape())
    source = data.as_tensor()
    source_affine = np.asarray(data.affine, dtype=np.float64)
    if source.shape[1:] == shape and np.allclose(affine, source_affine, atol=1e-5):
        return T.Spacing(pixdim=pixdim, **_MODE)(data)     # nothing to resample: MONAI returns the image
    to_source = np.linalg.solve(source_affine, affine)
    resample = T.SpatialResample(**_MODE)
    out = torch.empty((source.shape[0],) + shape, dtype=torch.float32)
    planes = max(1, slab_voxels // (shape[0] * shape[1]))
    for z0 in range(0, shape[2], planes):
        size = (shape[0], shape[1], min(planes, shape[2] - z0))
        slab_affine = _translated(affine, (0, 0, z0))
        lo, hi = _source_box(to_source @ _translated(np.eye(4), (0, 0, z0)), size, source.shape[1:])
        part = MetaTensor(source[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]],
                          affine=torch.as_tensor(_translated(source_affine, lo)))
        out[:, :, :, z0:z0 + size[2]] = resample(part, dst_affine=torch.as_tensor(slab_affine),
                                                  spatial_size=size).as_tensor()
    return MetaTensor(out, affine=torch.as_tensor(affine))
