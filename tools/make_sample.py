"""Regenerate ``Resources/SampleData/colin27_t1_2mm.nrrd``: the skull-stripped Colin27 T1 at 2 mm.

    .venv/bin/python tools/make_sample.py [--source ch2bet.nii.gz] [--out Resources/SampleData/colin27_t1_2mm.nrrd]

Source: ``/usr/share/mricron/templates/ch2bet.nii.gz`` from the Debian package ``mricron-data``
(181x217x181, 1 mm, uint8); when it is not installed the package is fetched with
``apt-get download`` and unpacked with ``dpkg -x`` into a temporary folder. The volume is smoothed
with a Gaussian (sigma 0.85 mm, against aliasing), resampled linearly onto a 2 mm grid with the
same field of view and orientation (91x109x91), rounded to uint8 and written as gzip-compressed
NRRD (about 0.3 MB). The result is deterministic.
"""
import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "Resources" / "SampleData" / "colin27_t1_2mm.nrrd"
CH2BET = "usr/share/mricron/templates/ch2bet.nii.gz"
SPACING_MM = 2.0
SIGMA_MM = 0.85


def find_source(explicit=None) -> Path:
    """``ch2bet.nii.gz``: the given path, the installed package, or a fresh ``apt-get download``."""
    if explicit:
        return Path(explicit)
    installed = Path("/") / CH2BET
    if installed.is_file():
        return installed
    work = Path(tempfile.mkdtemp(prefix="mricron-data-"))
    subprocess.run(["apt-get", "download", "mricron-data"], cwd=str(work), check=True)
    deb = sorted(work.glob("mricron-data_*.deb"))[-1]
    subprocess.run(["dpkg", "-x", str(deb), str(work / "root")], check=True)
    return work / "root" / CH2BET


def downsample(image: sitk.Image, spacing: float = SPACING_MM, sigma: float = SIGMA_MM) -> sitk.Image:
    """``image`` on a ``spacing`` mm grid with the same origin corner, direction and extent; uint8."""
    src = sitk.Cast(image, sitk.sitkFloat32)
    smooth = sitk.SmoothingRecursiveGaussian(src, sigma)
    old_size = np.array(src.GetSize())
    old_spacing = np.array(src.GetSpacing())
    size = [int(v) for v in np.floor(old_size * old_spacing / spacing)]
    direction = np.array(src.GetDirection()).reshape(3, 3)
    # keep the physical edge of the first voxel: shift the first centre by half the spacing change
    corner = np.array(src.GetOrigin()) - direction @ (old_spacing / 2)
    origin = corner + direction @ (np.full(3, spacing) / 2)
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing([spacing] * 3)
    ref.SetDirection(src.GetDirection())
    ref.SetOrigin([float(v) for v in origin])
    out = sitk.Resample(smooth, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = np.clip(np.rint(sitk.GetArrayFromImage(out)), 0, 255).astype(np.uint8)
    result = sitk.GetImageFromArray(arr)
    result.CopyInformation(ref)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Make the bundled 2 mm Colin27 sample volume.")
    parser.add_argument("--source", help="ch2bet.nii.gz (default: installed mricron-data or apt-get download)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    sample = downsample(sitk.ReadImage(str(find_source(args.source))))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.nrrd")
    sitk.WriteImage(sample, str(tmp), True)
    tmp.replace(out)
    print(f"{out}: {'x'.join(map(str, sample.GetSize()))} at {SPACING_MM} mm, {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
