"""MONAI's Spacing run a slab of planes at a time equals the whole-volume call."""
import numpy as np
import pytest
import torch
from monai import transforms as T

from engine_helpers import rotation_direction, synthetic_ct
from UXNetSegmentLib.pipeline import to_metatensor
from UXNetSegmentLib.spacing import spacing_in_slabs


@pytest.mark.parametrize("direction", [None, rotation_direction(25.0, axis=0), (-1, 0, 0, 0, 0, 1, 0, -1, 0),
                                       rotation_direction(40.0, axis=2)])
@pytest.mark.parametrize("pixdim", [[1.5, 1.5, 2.0], [0.7, 0.9, 1.1]])
def test_spacing_in_slabs_equals_monai_spacing_on_the_whole_volume(direction, pixdim):
    data = to_metatensor(synthetic_ct(size=(44, 38, 26), spacing=(0.8, 1.1, 2.6), direction=direction))
    whole = T.Spacing(pixdim=pixdim, mode="bilinear")(data)
    ulp = float(np.spacing(np.float32(whole.abs().max())))
    for slab_voxels in (1, 700, 5000, 1 << 22):      # one plane, a few planes, odd remainders, all at once
        ours = spacing_in_slabs(data, pixdim, slab_voxels=slab_voxels)
        assert ours.shape == whole.shape
        assert torch.allclose(ours.affine.double(), whole.affine.double(), atol=1e-9)
        assert float((ours.as_tensor() - whole.as_tensor()).abs().max()) <= 2 * ulp


def test_spacing_in_slabs_leaves_an_unchanged_grid_alone():
    data = to_metatensor(synthetic_ct(size=(20, 18, 12), spacing=(1.0, 1.0, 2.0)))
    ours = spacing_in_slabs(data, [1.0, 1.0, 2.0], slab_voxels=100)
    assert torch.equal(ours.as_tensor(), data.as_tensor())
