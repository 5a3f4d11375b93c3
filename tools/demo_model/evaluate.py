"""Held-out evaluation of the demo brain model on real T1 scans that training never saw.

    .venv/bin/python tools/demo_model/evaluate.py [--weights FILE.pth] [--snapshots docs] [--json out.json]

Runs the ENGINE (``UXNetSegmentLib.api.segment_image``, the demo_brain catalogue recipe) and prints
Dice per tissue on the input's own grid. The data come from two Debian packages, fetched with
``apt-get download`` and unpacked with ``dpkg -x`` into ``--data-dir`` when not installed:

* ``mricron-data``: Colin27 (``ch2bet.nii.gz``: one subject, 27 averaged T1 scans, 1 mm, skull
  removed; ``ch2.nii.gz``: the same with skull). There is no tissue reference for Colin27 in the
  package, so the reference is a 3-class k-means of the skull-stripped intensities (the same kind
  of reference ITK ships for its own example; Colin27's high SNR makes intensity clustering
  meaningful, but deep grey nuclei sit between the GM and WM clusters).
* ``insighttoolkit5-examples``: ``KmeansTest_T1UCharRaw.nii.gz`` (a real T1 head, 2x2x3 mm, tilted
  axes) with ``KmeansTest_T1KmeansPrelimSegmentation.nii.gz``. Its classes 4, 5, 6 lie exactly
  inside the brain mask ``KmeansTest_T1RawSkullStrip.nii.gz`` and have mean T1 intensities 48, 76
  and 101: CSF, GM and WM (classes 1-3 are air and extra-cerebral tissue). The model input is the
  raw T1 with that brain mask applied (the model expects skull-stripped input).

A third row segments Colin27 *with* its skull, scored on the same reference, to show what happens
when the input is not skull-stripped.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "UXNetSegment"))

TISSUES = {1: "CSF", 2: "GM", 3: "WM"}
MRICRON = "usr/share/mricron/templates"
ITK_DATA = "usr/share/doc/insighttoolkit5-examples/examples/Data"
PACKAGES = {"mricron-data": f"{MRICRON}/ch2bet.nii.gz",
            "insighttoolkit5-examples": f"{ITK_DATA}/KmeansTest_T1UCharRaw.nii.gz"}


@dataclass
class Case:
    name: str
    image: sitk.Image       # model input (skull-stripped T1 unless stated)
    reference: sitk.Image   # uint8 0 background, 1 CSF, 2 GM, 3 WM on the image grid
    note: str


def package_root(package: str, data_dir: Path) -> Path:
    """``/`` if ``package``'s file is installed, else ``data_dir/root`` after apt-get download + dpkg -x."""
    marker = PACKAGES[package]
    if (Path("/") / marker).is_file():
        return Path("/")
    root = data_dir / "root"
    if not (root / marker).is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        print(f"fetching {package} (apt-get download) into {data_dir}", flush=True)
        subprocess.run(["apt-get", "download", package], cwd=str(data_dir), check=True)
        debs = sorted(data_dir.glob(f"{package}_*.deb"))
        if not debs:
            raise SystemExit(f"apt-get download {package} gave no .deb in {data_dir}")
        subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
    return root


def kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 100) -> np.ndarray:
    """Cluster centres of 1D ``values`` by Lloyd's algorithm, deterministic start at spread percentiles."""
    centres = np.percentile(values, np.linspace(15, 85, k))
    for _ in range(iterations):
        assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        new = np.array([values[assign == j].mean() if (assign == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def kmeans_reference(brain: sitk.Image) -> sitk.Image:
    """3-class k-means of the nonzero voxels of a skull-stripped T1: 1 CSF, 2 GM, 3 WM (dark to bright)."""
    arr = sitk.GetArrayFromImage(brain).astype(np.float64)
    inside = arr > 0
    centres = kmeans_1d(arr[inside])
    ref = np.zeros(arr.shape, np.uint8)
    ref[inside] = 1 + np.argmin(np.abs(arr[inside][:, None] - centres[None]), axis=1)
    out = sitk.GetImageFromArray(ref)
    out.CopyInformation(brain)
    return out


def colin27_cases(root: Path) -> List[Case]:
    folder = root / MRICRON
    stripped = sitk.ReadImage(str(folder / "ch2bet.nii.gz"), sitk.sitkFloat32)
    head = sitk.ReadImage(str(folder / "ch2.nii.gz"), sitk.sitkFloat32)
    ref = kmeans_reference(stripped)
    return [Case("Colin27 (ch2bet, skull-stripped, 1 mm)", stripped, ref, "reference: 3-class k-means"),
            Case("Colin27 with skull (ch2, 1 mm)", head, ref, "same reference; input not skull-stripped")]


def itk_case(root: Path) -> Case:
    folder = root / ITK_DATA
    raw = sitk.ReadImage(str(folder / "KmeansTest_T1UCharRaw.nii.gz"), sitk.sitkFloat32)
    prelim = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "KmeansTest_T1RawSkullStrip.nii.gz"))) > 0
    ref = np.zeros(prelim.shape, np.uint8)
    for cls, tissue in ((4, 1), (5, 2), (6, 3)):
        ref[prelim == cls] = tissue
    stripped = sitk.GetImageFromArray(sitk.GetArrayFromImage(raw) * mask)
    stripped.CopyInformation(raw)
    ref_img = sitk.GetImageFromArray(ref)
    ref_img.CopyInformation(raw)
    return Case("ITK KmeansTest T1 (brain-masked, 2x2x3 mm)", stripped, ref_img,
                "reference: ITK's k-means classes 4/5/6")


def dice_per_tissue(pred: sitk.Image, ref: sitk.Image) -> Dict[str, float]:
    p, r = sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(ref)
    out = {}
    for value, name in TISSUES.items():
        a, b = p == value, r == value
        denom = int(a.sum()) + int(b.sum())
        out[name] = round(2.0 * int((a & b).sum()) / denom, 4) if denom else float("nan")
    return out


def volumes_ml(labels: sitk.Image) -> Dict[str, float]:
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    arr = sitk.GetArrayViewFromImage(labels)
    return {name: round(float((arr == v).sum()) * voxel_ml, 1) for v, name in TISSUES.items()}


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description="Held-out Dice of the demo brain model (runs the engine).")
    parser.add_argument("--weights", help="checkpoint to score (default: the bundled demo_brain.pth)")
    parser.add_argument("--model", default="demo_brain", help="catalogue model whose recipe to use")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "uxnet-demo-eval"),
                        help="where to unpack the Debian packages when they are not installed")
    parser.add_argument("--snapshots", help="folder for prediction-vs-reference PNG montages")
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument("--threads", type=int, help="torch threads (1 is fastest on a busy machine)")
    args = parser.parse_args(argv)

    import torch
    from UXNetSegmentLib.api import segment_image
    from UXNetSegmentLib.catalogue import get_model

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_model(args.model)
    weights = args.weights or spec.weights_path()
    if weights is None:
        raise SystemExit(f"no weights for {spec.name}; train them or pass --weights")
    data_dir = Path(args.data_dir)
    cases = colin27_cases(package_root("mricron-data", data_dir))
    cases.insert(1, itk_case(package_root("insighttoolkit5-examples", data_dir)))

    info = {v: (lab.name, lab.color) for v, lab in spec.labels.items()}
    if args.snapshots:
        Path(args.snapshots).mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        result = segment_image(case.image, spec, weights=weights, device="cpu")
        dice = dice_per_tissue(result.labels, case.reference)
        row = {"case": case.name, "note": case.note, "dice": dice,
               "mean_dice": round(float(np.mean(list(dice.values()))), 4),
               "predicted_ml": volumes_ml(result.labels), "reference_ml": volumes_ml(case.reference),
               "seconds": round(result.seconds, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.snapshots:
            from UXNetSegmentLib.snapshot import render_montage
            slug = "".join(c if c.isalnum() else "-" for c in case.name.split("(")[0].strip().lower()).strip("-")
            render_montage(case.image, Path(args.snapshots) / f"demo-heldout-{slug}.png", labels=result.labels,
                           label_info=info, outline_labels=case.reference,
                           title=f"{case.name}: fill = demo_brain, outline = {case.note.split(': ')[-1]}")

    print("\n| case | CSF | GM | WM | mean |\n|---|---|---|---|---|")
    for r in rows:
        d = r["dice"]
        print(f"| {r['case']} | {d['CSF']:.3f} | {d['GM']:.3f} | {d['WM']:.3f} | {r['mean_dice']:.3f} |")
    report = {"model": spec.name, "weights": str(weights), "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
