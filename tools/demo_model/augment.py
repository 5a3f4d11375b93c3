"""Augmentation that turns the one smooth MNI template into varied, scan-like skull-stripped T1s.

Input: a dict with ``image`` ``(1, X, Y, Z)`` (raw template units) and ``probs`` ``(3, X, Y, Z)``
(CSF, GM, WM; background is 1 minus their sum) on the 2 mm RAS grid, cropped to the brain with a
margin (:func:`as_sample`). Output: ``image`` ``(1, R, R, R)`` float32 in
[0, 1] and ``label`` ``(1, R, R, R)`` int64 (0..3), where R is the training patch side.

Order (each step random, seeded through :func:`build_augmentation`):

1. spatial: rotation (±15°), scaling (±12 %), shear, translation, on image and probabilities
   together; labels are the argmax of the moved probabilities (no nearest-neighbour stairs);
2. tissue contrast: CSF and GM intensities scaled relative to WM (real T1s differ in contrast);
3. MR physics: smooth multiplicative bias field, gamma, blur, resolution loss (isotropic, and
   thick slices along one random axis), Gaussian noise, a small brain-intensity offset;
4. skull-stripped look: everything outside the (moved) brain mask set to 0, as in BET output;
5. the engine's own preprocessing: percentiles [0.5, 99.5] -> [0, 1] clipped, computed as on a
   whole scan with a random field of view (:class:`RandFovPercentileScale`), crop to ``image > 0``,
   then a random ``R``³ patch (zero-padded when smaller; 15 % of the time from a volume padded with
   zeros, so some patches are empty background as at the edges of a sliding window).
"""
from typing import Dict, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (Compose, CropForegroundd, MapTransform, RandAdjustContrastd, RandAffined,
                              RandBiasFieldd, RandGaussianNoised, RandGaussianSmoothd,
                              RandSimulateLowResolutiond, RandSpatialCropd, Randomizable,
                              SpatialPadd)

PERCENTILES = (0.5, 99.5)


def _plain(t) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


class ProbsToLabel(MapTransform):
    """``label`` = argmax of ``probs`` (background where the moved probabilities vanish); drops ``probs``."""

    def __init__(self) -> None:
        super().__init__(keys=["probs"])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        tissue = _plain(d.pop("probs"))
        background = 1.0 - tissue.sum(0, keepdim=True)
        d["label"] = torch.cat([background, tissue]).argmax(0, keepdim=True)
        d["tissue"] = tissue[:2]  # CSF, GM: used by the contrast step, removed by SkullStrip
        d["image"] = _plain(d["image"])
        return d


class RandTissueContrast(Randomizable, MapTransform):
    """Multiply the image by ``sum_k f_k p_k``: CSF x U(csf), GM x U(gm), WM x 1 (soft, partial-volume aware)."""

    def __init__(self, csf=(0.6, 1.4), gm=(0.88, 1.12), prob: float = 0.8) -> None:
        MapTransform.__init__(self, keys=["image"])
        self.csf, self.gm, self.prob = csf, gm, prob
        self._do, self._f = False, (1.0, 1.0)

    def randomize(self, data=None) -> None:
        self._do = self.R.rand() < self.prob
        self._f = (self.R.uniform(*self.csf), self.R.uniform(*self.gm))

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if self._do:
            t = torch.as_tensor(d["tissue"])
            wm_like = 1.0 - t[0] - t[1]  # WM and background keep their intensity
            d["image"] = d["image"] * (wm_like + self._f[0] * t[0] + self._f[1] * t[1])[None]
        return d


class UnitBrainScale(MapTransform):
    """Divide by the 99th percentile inside the brain so the noise/offset steps act in relative units."""

    def __init__(self) -> None:
        super().__init__(keys=["image"])

    def __call__(self, data):
        d = dict(data)
        brain = torch.as_tensor(d["label"])[0] > 0
        img = torch.as_tensor(d["image"])
        ref = torch.quantile(img[0][brain][::7].float(), 0.99) if brain.any() else img.max()
        d["image"] = img / max(float(ref), 1e-6)
        return d


class RandThickSlices(Randomizable, MapTransform):
    """Resolution loss along one random axis: linear down by ``factor`` then back up (thick slices)."""

    def __init__(self, factor=(1.4, 2.6), prob: float = 0.3) -> None:
        MapTransform.__init__(self, keys=["image"])
        self.factor, self.prob = factor, prob
        self._do, self._axis, self._f = False, 0, 1.0

    def randomize(self, data=None) -> None:
        self._do = self.R.rand() < self.prob
        self._axis = int(self.R.randint(0, 3))
        self._f = float(self.R.uniform(*self.factor))

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if self._do:
            img = torch.as_tensor(d["image"]).float()[None]
            shape = list(img.shape[2:])
            small = list(shape)
            small[self._axis] = max(2, int(round(shape[self._axis] / self._f)))
            low = F.interpolate(img, size=small, mode="trilinear", align_corners=False, antialias=False)
            d["image"] = F.interpolate(low, size=shape, mode="trilinear", align_corners=False)[0]
        return d


class RandBrainOffset(Randomizable, MapTransform):
    """Add a small constant inside the brain (tissue intensities relative to the zero background vary)."""

    def __init__(self, offset=(-0.08, 0.08), prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys=["image"])
        self.offset, self.prob = offset, prob
        self._do, self._v = False, 0.0

    def randomize(self, data=None) -> None:
        self._do = self.R.rand() < self.prob
        self._v = float(self.R.uniform(*self.offset))

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if self._do:
            d["image"] = d["image"] + self._v * (torch.as_tensor(d["label"]) > 0).float()
        return d


class RandFovPercentileScale(Randomizable, MapTransform):
    """The engine's ``[0.5, 99.5]`` percentile scaling as it would act on a whole scan whose field of
    view is ``background`` (random fraction) empty: the 0.5th percentile is then 0 (background) and
    the 99.5th is the brain's ``1 - 0.005 / brain_fraction`` quantile. Output clipped to [0, 1]."""

    def __init__(self, background=(0.6, 0.9), upper: float = 99.5) -> None:
        MapTransform.__init__(self, keys=["image"])
        self.background, self.upper = background, upper
        self._bg = 0.75

    def randomize(self, data=None) -> None:
        self._bg = float(self.R.uniform(*self.background))

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        img = _plain(d["image"]).float()
        vals = img[img > 0]
        if vals.numel():
            q = min(1.0, max(0.0, 1.0 - (1.0 - self.upper / 100.0) / (1.0 - self._bg)))
            hi = float(torch.quantile(vals[:: max(1, vals.numel() // 200000)], q))
            d["image"] = torch.clamp(img / max(hi, 1e-6), 0.0, 1.0)
        return d


class SkullStrip(MapTransform):
    """Zero the image outside the brain mask (``label > 0``); keep brain voxels strictly positive."""

    def __init__(self) -> None:
        super().__init__(keys=["image"])

    def __call__(self, data):
        d = dict(data)
        brain = (torch.as_tensor(d["label"]) > 0).float()
        d["image"] = torch.clamp(torch.as_tensor(d["image"]).float(), min=1e-3) * brain
        d.pop("tissue", None)
        return d


class RandZeroContext(Randomizable, MapTransform):
    """Sometimes pad the cropped brain with ``margin`` zero voxels per side, so that some patches are
    mostly or entirely background and the network learns that an empty window is background."""

    def __init__(self, margin: int = 40, prob: float = 0.15) -> None:
        MapTransform.__init__(self, keys=["image", "label"])
        self.margin, self.prob = margin, prob
        self._do = False

    def randomize(self, data=None) -> None:
        self._do = self.R.rand() < self.prob

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if self._do:
            pad = (self.margin,) * 6
            d["image"] = F.pad(_plain(d["image"]), pad)
            d["label"] = F.pad(_plain(d["label"]), pad)
        return d


def build_augmentation(patch: Sequence[int], seed: int) -> Compose:
    """The full training transform chain; ``patch`` is the output ``(R, R, R)`` in voxels."""
    chain = Compose([
        RandAffined(keys=["image", "probs"], prob=0.9, rotate_range=(0.26, 0.26, 0.26),
                    scale_range=(0.12, 0.12, 0.12), shear_range=(0.06, 0.06, 0.06, 0.06, 0.06, 0.06),
                    translate_range=(3, 3, 3), mode=("bilinear", "bilinear"), padding_mode="zeros"),
        ProbsToLabel(),
        RandTissueContrast(),
        UnitBrainScale(),
        RandBiasFieldd(keys=["image"], prob=0.7, degree=3, coeff_range=(0.0, 0.25)),
        RandAdjustContrastd(keys=["image"], prob=0.7, gamma=(0.65, 1.5)),
        RandGaussianSmoothd(keys=["image"], prob=0.2, sigma_x=(0.0, 0.8), sigma_y=(0.0, 0.8),
                            sigma_z=(0.0, 0.8)),
        RandSimulateLowResolutiond(keys=["image"], prob=0.25, zoom_range=(0.5, 0.9)),
        RandThickSlices(),
        RandGaussianNoised(keys=["image"], prob=0.6, mean=0.0, std=0.05, sample_std=True),
        RandBrainOffset(),
        SkullStrip(),
        RandFovPercentileScale(upper=PERCENTILES[1]),
        CropForegroundd(keys=["image", "label"], source_key="image", allow_smaller=True),
        RandZeroContext(),
        SpatialPadd(keys=["image", "label"], spatial_size=tuple(patch)),
        RandSpatialCropd(keys=["image", "label"], roi_size=tuple(patch), random_size=False),
    ])
    chain.set_random_state(seed=seed)
    return chain


def crop_to_brain(image: np.ndarray, probs: np.ndarray, margin: int = 6):
    """``(image, probs)`` cut to the brain's bounding box plus ``margin`` voxels (less work per sample).

    The engine's percentile normalisation sees the whole scan, background included;
    :class:`RandFovPercentileScale` reproduces that for a random field of view, so the cut is harmless.
    """
    idx = np.nonzero(image > 0)
    box = tuple(slice(max(0, int(i.min()) - margin), int(i.max()) + margin + 1) for i in idx)
    return image[box], probs[(slice(None),) + box]


def as_sample(image: np.ndarray, probs: np.ndarray) -> Dict[str, torch.Tensor]:
    """The augmentation input from :func:`prepare_data.load_training_pair` arrays: image ``(1, X, Y, Z)``,
    probs ``(3, X, Y, Z)`` (CSF, GM, WM)."""
    tissue = probs[1:] if probs.shape[0] == 4 else probs
    return {"image": torch.from_numpy(np.ascontiguousarray(image[None])),
            "probs": torch.from_numpy(np.ascontiguousarray(tissue))}
