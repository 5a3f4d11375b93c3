"""The official 3D UX-Net test recipe done the plain MONAI way, for verification and benchmarks only.

It keeps MONAI's full-volume probability map and uses ``Invertd``, exactly as the official
``test_seg.py`` does. The product path is :mod:`.pipeline`; tests and the benchmark compare the two.
"""
from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch
from monai import transforms as T
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from .catalogue import ModelSpec

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_metatensor(image: sitk.Image) -> MetaTensor:
    """``(1, I, J, K)`` MetaTensor with a RAS affine, as MONAI's ITK reader builds it."""
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)[None].astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())[None, :]
    affine[:3, 3] = image.GetOrigin()
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=torch.as_tensor(LPS_TO_RAS @ affine))


def preprocess_transforms(spec: ModelSpec) -> T.Compose:
    steps = []
    if spec.spacing:
        steps.append(T.Spacingd(keys="image", pixdim=spec.spacing, mode="bilinear"))
    steps.append(T.Orientationd(keys="image", axcodes="RAS", labels=None))
    if spec.intensity_percentiles:
        lo, hi = spec.intensity_percentiles
        steps.append(T.ScaleIntensityRangePercentilesd(keys="image", lower=lo, upper=hi, b_min=0.0, b_max=1.0,
                                                       clip=True))
    else:
        lo, hi = spec.intensity_window
        steps.append(T.ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    if spec.crop_foreground:
        steps.append(T.CropForegroundd(keys="image", source_key="image", allow_smaller=True))
    return T.Compose(steps)


def reference_probabilities(image: sitk.Image, spec: ModelSpec, network: torch.nn.Module,
                            overlap: Optional[float] = None, sw_batch_size: int = 4) -> np.ndarray:
    """Softmax probabilities ``(C, I, J, K)`` on the input grid, by MONAI's Invertd."""
    pre = preprocess_transforms(spec)
    data = pre({"image": to_metatensor(image)})
    with torch.no_grad():
        logits = sliding_window_inference(data["image"][None], spec.roi_size, sw_batch_size, network,
                                          overlap=spec.overlap if overlap is None else overlap, mode="constant")
    data["pred"] = torch.softmax(logits[0], dim=0)
    data["pred"] = MetaTensor(data["pred"], meta=data["image"].meta,
                              applied_operations=data["image"].applied_operations)
    inverted = T.Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False,
                         to_tensor=True)(data)
    return inverted["pred"].numpy()


def reference_segment(image: sitk.Image, spec: ModelSpec, network: torch.nn.Module,
                      overlap: Optional[float] = None, sw_batch_size: int = 4) -> sitk.Image:
    """Labels on the input grid (uint8 SimpleITK image), the official way."""
    prob = reference_probabilities(image, spec, network, overlap, sw_batch_size)
    labels = sitk.GetImageFromArray(prob.argmax(0).astype(np.uint8).transpose(2, 1, 0))
    labels.CopyInformation(image)
    return labels
