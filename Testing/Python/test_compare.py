"""compare.py on real data: the LiTS liver/tumour label of case 117 (``liver-ct-segmentation-package``),
perturbed and compared with itself, checked against MONAI's metric functions as an independent oracle.

MONAI computes distances with scipy's KD-tree on voxel coordinates; compare.py uses SimpleITK's Maurer
distance transform on cropped boxes, so agreement is not by shared code. Reference-on-another-grid cases
are checked against a numpy nearest-neighbour resampler written here (no SimpleITK in the oracle path).
"""
import csv
import importlib.util
import math
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "UXNetSegment") not in sys.path:
    sys.path.insert(0, str(REPO / "UXNetSegment"))

from UXNetSegmentLib import cli  # noqa: E402
from UXNetSegmentLib.compare import (SegmentInfo, compare_files, compare_label_arrays,  # noqa: E402
                                     mask_metrics, match_segments, read_label_set)
from UXNetSegmentLib.errors import UXNetError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")

LITS_PACKAGE = "liver_ct_segmentation_package"  # pip install liver-ct-segmentation-package==1.6.0
MRC_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16}
LIVER = ["SCT", "10200004", "Liver"]
TUMOUR = ["SCT", "108369006", "Neoplasm"]
ANISO = (0.8, 0.8, 2.5)  # (i, j, k) mm


# ---------------------------------------------------------------------------------------------------------------
# Real data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def lits_file(name: str) -> Path:
    spec = importlib.util.find_spec(LITS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the LiTS test data is missing: pip install liver-ct-segmentation-package==1.6.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


def read_mrc(path: Path) -> np.ndarray:
    """An MRC volume as a (k, j, i) array with k along the head-feet axis (the file's fastest axis)."""
    raw = path.read_bytes()
    words = np.frombuffer(raw[:1024], dtype="<i4")
    nx, ny, nz, mode = (int(w) for w in words[:4])
    extended = int(words[23])
    data = np.frombuffer(raw, dtype=np.dtype(MRC_DTYPES[mode]).newbyteorder("<"), count=nx * ny * nz,
                         offset=1024 + extended)
    return np.ascontiguousarray(data.reshape(nz, ny, nx).transpose(2, 1, 0))


@pytest.fixture(scope="module")
def lits() -> np.ndarray:
    """Labels 0 background, 1 liver, 2 tumour; subsampled to 64^3 to keep the tests fast."""
    labels = read_mrc(lits_file("lab_117.mrc"))
    assert labels.shape == (128, 128, 128) and set(np.unique(labels)) == {0, 1, 2}
    return np.ascontiguousarray(labels[::2, ::2, ::2]).astype(np.uint8)


def perturb(mask: np.ndarray, kind: str) -> np.ndarray:
    if kind == "dilate":
        return ndimage.binary_dilation(mask, iterations=2)
    if kind == "erode":
        return ndimage.binary_erosion(mask, iterations=2)
    if kind == "shift":
        return np.roll(np.roll(mask, 3, axis=2), -1, axis=0)
    if kind == "blob":  # a false-positive sphere in a corner, away from the organ
        k, j, i = np.ogrid[:mask.shape[0], :mask.shape[1], :mask.shape[2]]
        out = mask.copy()
        out[(k - 5) ** 2 + (j - 5) ** 2 + (i - 58) ** 2 <= 9] = True
        return out
    if kind == "erode+blob":
        return perturb(perturb(mask, "erode"), "blob")
    raise ValueError(kind)


def monai_metrics(pred: np.ndarray, ref: np.ndarray, spacing_ijk) -> dict:
    """MONAI's Dice, HD95 and symmetric ASD on boolean (k, j, i) masks."""
    p = torch.from_numpy(np.stack([~pred, pred]).astype(np.float32))[None]
    r = torch.from_numpy(np.stack([~ref, ref]).astype(np.float32))[None]
    spacing = list(spacing_ijk)[::-1]  # MONAI takes spacing in array-axis order
    return {"dice": compute_dice(p, r, include_background=False).item(),
            "hd95_mm": compute_hausdorff_distance(p, r, percentile=95, spacing=spacing).item(),
            "msd_mm": compute_average_surface_distance(p, r, symmetric=True, spacing=spacing).item()}


def assert_matches_monai(ours: dict, oracle: dict, spacing_ijk) -> None:
    diagonal = float(np.linalg.norm(spacing_ijk))
    assert abs(ours["dice"] - oracle["dice"]) <= 1e-6
    for key in ("hd95_mm", "msd_mm"):
        assert abs(ours[key] - oracle[key]) <= diagonal, (key, ours[key], oracle[key])
        # both sides implement the same definition exactly; anything beyond float32 rounding is a bug
        assert ours[key] == pytest.approx(oracle[key], rel=1e-4, abs=1e-4), (key, ours[key], oracle[key])


# ---------------------------------------------------------------------------------------------------------------
# Metric core against MONAI


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), ANISO])
@pytest.mark.parametrize("kind", ["dilate", "erode", "shift", "blob", "erode+blob"])
def test_liver_perturbations_match_monai(lits, kind, spacing):
    liver = lits > 0
    pred = perturb(liver, kind)
    ours = mask_metrics(pred, liver, spacing)
    assert ours["status"] == "ok"
    assert_matches_monai(ours, monai_metrics(pred, liver, spacing), spacing)
    voxel_ml = np.prod(spacing) / 1000.0
    assert ours["volume_pred_ml"] == pytest.approx(pred.sum() * voxel_ml)
    assert ours["rel_volume_diff"] == pytest.approx((pred.sum() - liver.sum()) / liver.sum())


def test_anisotropy_changes_distances_the_right_way(lits):
    """A one-voxel shift along k costs 2.5 mm with 2.5 mm slices and 1 mm with 1 mm slices."""
    liver = lits > 0
    shifted = np.roll(liver, 1, axis=0)
    # distances come from a float32 distance map: exact to ~1e-6 relative
    assert mask_metrics(shifted, liver, ANISO)["hd95_mm"] == pytest.approx(2.5, rel=1e-5)
    assert mask_metrics(shifted, liver, (1.0, 1.0, 1.0))["hd95_mm"] == pytest.approx(1.0, rel=1e-5)
    shifted_i = np.roll(liver, 1, axis=2)
    assert mask_metrics(shifted_i, liver, ANISO)["hd95_mm"] == pytest.approx(0.8, rel=1e-5)


def test_identical_masks_are_perfect(lits):
    liver = lits > 0
    m = mask_metrics(liver, liver, ANISO)
    assert (m["dice"], m["hd95_mm"], m["msd_mm"], m["rel_volume_diff"], m["status"]) == (1.0, 0.0, 0.0, 0.0, "ok")


def test_empty_cases_are_explicit():
    empty = np.zeros((8, 8, 8), bool)
    cube = empty.copy()
    cube[2:5, 2:5, 2:5] = True
    both = mask_metrics(empty, empty, ANISO)
    assert both == {"status": "both empty", "dice": 1.0, "hd95_mm": 0.0, "msd_mm": 0.0, "rel_volume_diff": 0.0,
                    "volume_pred_ml": 0.0, "volume_ref_ml": 0.0}
    miss_p = mask_metrics(empty, cube, ANISO)
    assert miss_p["status"] == "missing in prediction" and miss_p["dice"] == 0.0
    assert math.isinf(miss_p["hd95_mm"]) and math.isinf(miss_p["msd_mm"]) and miss_p["rel_volume_diff"] == -1.0
    miss_r = mask_metrics(cube, empty, ANISO)
    assert miss_r["status"] == "missing in reference" and miss_r["dice"] == 0.0
    assert math.isinf(miss_r["hd95_mm"]) and math.isinf(miss_r["rel_volume_diff"])
    for m in (both, miss_p, miss_r):
        assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())


# ---------------------------------------------------------------------------------------------------------------
# Files: .seg.nrrd and labelmaps, matching, grids


def ijk_to_lps(spacing, origin, direction) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)[None, :]
    m[:3, 3] = origin
    return m


def write_seg(path: Path, labels_kji: np.ndarray, segments: list, spacing=ANISO, origin=(10.0, -20.0, 30.0),
              direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)) -> Path:
    """A Slicer .seg.nrrd written with slicerio: ``segments`` = [(value, name, type_triplet or None)]."""
    segs = []
    for value, name, code in segments:
        term = {"contextName": "test", "category": ["SCT", "123037004", "Anatomical Structure"],
                "type": list(code) if code else ["SCT", "85756007", "Tissue"]}
        segs.append({"id": f"Segment_{value}", "labelValue": value, "layer": 0, "name": name,
                     "color": [0.8, 0.3, 0.2], "terminology": term})
    slicerio.write_segmentation(str(path), {"voxels": np.ascontiguousarray(labels_kji.transpose(2, 1, 0)),
                                            "ijkToLPS": ijk_to_lps(spacing, origin, direction), "segments": segs})
    return path


def write_labelmap(path: Path, labels_kji: np.ndarray, spacing=ANISO, origin=(10.0, -20.0, 30.0),
                   direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), names=None) -> Path:
    image = sitk.GetImageFromArray(labels_kji)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), True)
    if names is not None:
        import json
        Path(str(path) + ".labels.json").write_text(json.dumps(names))
    return path


def perturbed_multilabel(lits: np.ndarray) -> np.ndarray:
    """Liver eroded and shifted, tumour dilated: a plausible imperfect prediction."""
    pred = np.zeros_like(lits)
    pred[perturb(lits > 0, "shift") & ~perturb(lits == 2, "dilate")] = 1
    pred[perturb(lits == 2, "dilate")] = 2
    return pred


def test_seg_nrrd_files_match_monai_per_segment(tmp_path, lits):
    pred = perturbed_multilabel(lits)
    p = write_seg(tmp_path / "pred.seg.nrrd", pred, [(1, "liver", LIVER), (2, "tumor", TUMOUR)])
    r = write_seg(tmp_path / "ref.seg.nrrd", lits, [(1, "Liver", LIVER), (2, "Liver tumour", TUMOUR)])
    report = compare_files(p, r)
    assert not report.resampled
    assert [(x.segment, x.reference_segment, x.matched_by) for x in report.rows] == \
        [("liver", "Liver", "terminology"), ("tumor", "Liver tumour", "terminology")]
    for row, value in zip(report.rows, (1, 2)):
        oracle = monai_metrics(pred == value, lits == value, ANISO)
        assert_matches_monai(vars(row), oracle, ANISO)
        assert row.volume_ref_ml == pytest.approx((lits == value).sum() * np.prod(ANISO) / 1000.0)
        assert row.status == "ok"


def nearest_sample(src: np.ndarray, src_m: np.ndarray, dst_shape, dst_m: np.ndarray) -> np.ndarray:
    """Numpy nearest-neighbour resampling in physical space (the test's own oracle, no SimpleITK).
    ``*_m`` are 4x4 ijk->LPS matrices; arrays are (k, j, i); outside the source -> 0."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in dst_shape], indexing="ij")
    ijk1 = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    src_ijk = (np.linalg.inv(src_m) @ dst_m @ ijk1)[:3]
    idx = np.floor(src_ijk + 0.5).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(src.shape[::-1])[:, None]), axis=0)
    out = np.zeros(idx.shape[1], dtype=src.dtype)
    out[inside] = src[idx[2, inside], idx[1, inside], idx[0, inside]]
    return out.reshape(dst_shape)


def test_reference_on_a_coarser_shifted_grid(tmp_path, lits):
    """Prediction on an LPS-flipped 0.8x0.8x2.5 mm grid; reference on an identity-direction grid with twice the
    spacing, origin off by a fraction of a voxel. compare_files must equal MONAI on the numpy-resampled reference."""
    pred_dir = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    pred_origin = (10.0, -20.0, 30.0)
    pred_m = ijk_to_lps(ANISO, pred_origin, pred_dir)
    coarse = tuple(2 * s for s in ANISO)
    # the coarse grid covers the prediction's box; its origin is off by 0.37 of a fine voxel (no rounding ties)
    lo = np.array(pred_origin) + np.array([-(63 * ANISO[0]), -(63 * ANISO[1]), 0.0])
    ref_origin = lo - 0.37 * np.array(ANISO)
    ref_m = ijk_to_lps(coarse, ref_origin, np.eye(3).ravel())
    ref_shape = (34, 34, 34)
    truth = perturb(lits > 0, "erode+blob").astype(np.uint8)
    ref_coarse = nearest_sample(truth, pred_m, ref_shape, ref_m)
    p = write_labelmap(tmp_path / "pred.nii.gz", (lits > 0).astype(np.uint8), ANISO, pred_origin, pred_dir,
                       names={"1": "liver"})
    r = write_labelmap(tmp_path / "ref.nrrd", ref_coarse, coarse, tuple(ref_origin), tuple(np.eye(3).ravel()),
                       names={"1": "Liver"})
    report = compare_files(p, r)
    assert report.resampled
    (row,) = report.rows
    assert (row.segment, row.reference_segment, row.matched_by) == ("liver", "Liver", "name")
    ref_fine = nearest_sample(ref_coarse, ref_m, lits.shape, pred_m) > 0
    assert ref_fine.sum() > 1000 and (ref_fine != (lits > 0)).any()
    assert_matches_monai(vars(row), monai_metrics(lits > 0, ref_fine, ANISO), ANISO)


def test_reference_outside_the_prediction_is_an_error(tmp_path, lits):
    p = write_labelmap(tmp_path / "pred.nii.gz", lits)
    r = write_labelmap(tmp_path / "ref.nii.gz", lits, origin=(900.0, 900.0, 900.0))
    with pytest.raises(UXNetError, match="does not overlap"):
        compare_files(p, r)


def test_matching_by_value_when_nothing_else_is_known(tmp_path, lits):
    pred = perturbed_multilabel(lits)
    report = compare_files(write_labelmap(tmp_path / "p.nii.gz", pred), write_labelmap(tmp_path / "r.nii.gz", lits))
    assert [(x.pred_value, x.ref_value, x.matched_by) for x in report.rows] == [(1, 1, "value"), (2, 2, "value")]
    assert report.rows[1].dice == pytest.approx(monai_metrics(pred == 2, lits == 2, ANISO)["dice"], abs=1e-6)


def test_matching_by_name_across_different_values(tmp_path, lits):
    """Reference stores liver as 7 and tumour as 3; names differ only in case and separators."""
    ref = np.zeros_like(lits)
    ref[lits == 1], ref[lits == 2] = 7, 3
    p = write_labelmap(tmp_path / "p.nii.gz", lits, names={"1": "Liver", "2": "liver_tumor"})
    r = write_labelmap(tmp_path / "r.nii.gz", ref, names={"7": "liver", "3": "Liver - Tumor"})
    report = compare_files(p, r)
    assert [(x.pred_value, x.ref_value, x.matched_by, x.dice) for x in report.rows] == \
        [(1, 7, "name", 1.0), (2, 3, "name", 1.0)]


def test_engine_sidecar_format_is_read(tmp_path, lits):
    """The engine writes ``out.labels.json`` beside ``out.nii.gz`` with a "segments" list carrying codes."""
    import json
    path = write_labelmap(tmp_path / "out.nii.gz", lits)
    (tmp_path / "out.labels.json").write_text(json.dumps({
        "model": "x", "labels": {"1": "liver", "2": "tumour"},
        "segments": [{"value": 1, "name": "liver", "color": [221, 130, 101], "type": LIVER},
                     {"value": 2, "name": "tumour", "color": [1, 2, 3], "type": TUMOUR}]}))
    segs = read_label_set(path).segments
    assert [(s.value, s.name, s.type_code, s.color) for s in segs] == \
        [(1, "liver", ("SCT", "10200004"), (221, 130, 101)), (2, "tumour", ("SCT", "108369006"), (1, 2, 3))]


def test_files_written_by_the_engine(tmp_path, lits):
    """The engine's own writers (imageio.write_output): .seg.nrrd with SNOMED codes from the catalogue, and a
    labelmap with its ``.labels.json``. A label without a SNOMED code gets the engine's private per-value code,
    which must not pair different structures across models."""
    from UXNetSegmentLib.catalogue import spec_from_dict
    from UXNetSegmentLib.imageio import write_output
    spec = spec_from_dict({"name": "t", "labels": {"1": "liver", "2": "lesion"}, "intensity_window": [0, 1]})
    other = spec_from_dict({"name": "u", "labels": {"1": "liver", "2": "cyst"}, "intensity_window": [0, 1]})
    pred = perturbed_multilabel(lits)
    pred_image = sitk.GetImageFromArray(pred)
    pred_image.SetSpacing(ANISO)
    ref_image = sitk.GetImageFromArray(lits)
    ref_image.CopyInformation(pred_image)
    p = write_output(pred_image, spec, tmp_path / "pred.seg.nrrd")
    r = write_output(ref_image, spec, tmp_path / "ref.nii.gz")
    rows = compare_files(p, r).rows
    assert [(x.segment, x.matched_by) for x in rows] == [("liver", "terminology"), ("lesion", "name")]
    assert rows[0].dice == pytest.approx(monai_metrics(pred == 1, lits == 1, ANISO)["dice"], abs=1e-6)
    o = write_output(ref_image, other, tmp_path / "other.seg.nrrd")
    rows = compare_files(p, o).rows
    assert [(x.segment, x.reference_segment, x.matched_by) for x in rows] == \
        [("liver", "liver", "terminology"), ("lesion", "cyst", "value")]


def test_matching_rules_terminology_then_name_then_value():
    pred = [SegmentInfo("hepar", 1, type_code=("SCT", "10200004")),
            SegmentInfo("spleen", 2),
            SegmentInfo("kidney", 3, type_code=("SCT", "64033007"), modifier_code=("SCT", "24028007")),
            SegmentInfo("label 4", 4, named=False),
            SegmentInfo("tissue a", 5, type_code=("SCT", "85756007")),
            SegmentInfo("extra", 9)]
    ref = [SegmentInfo("Liver", 6, type_code=("SCT", "10200004")),
           SegmentInfo("Spleen", 1),
           SegmentInfo("kidney", 3, type_code=("SCT", "64033007"), modifier_code=("SCT", "7771000")),
           SegmentInfo("label 4", 4, named=False),
           SegmentInfo("Tissue_A", 8, type_code=("SCT", "85756007")),
           SegmentInfo("lost", 12)]
    got = [(p.name if p else None, r.name if r else None, how) for p, r, how in match_segments(pred, ref)]
    assert got == [("hepar", "Liver", "terminology"),     # same SNOMED code, different names
                   ("spleen", "Spleen", "name"),          # no codes: case-insensitive name
                   ("kidney", "kidney", "name"),          # right vs left kidney: codes differ, names agree
                   ("label 4", "label 4", "value"),       # made-up names are not used, the value is
                   ("tissue a", "Tissue_A", "name"),      # Slicer's generic "Tissue" code is not evidence
                   ("extra", None, "unmatched"),
                   (None, "lost", "unmatched")]


def test_unmatched_and_empty_segments_in_a_report():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:6, 2:6, 2:6] = 1
    pred_segments = [SegmentInfo("liver", 1), SegmentInfo("spleen", 2), SegmentInfo("stomach", 3)]
    ref_segments = [SegmentInfo("liver", 1), SegmentInfo("spleen", 2), SegmentInfo("aorta", 4)]
    ref = lab.copy()
    ref[7:9, 7:9, 7:9] = 4
    report = compare_label_arrays([lab], pred_segments, [ref], ref_segments, (1.0, 1.0, 2.0))
    rows = {(r.segment, r.reference_segment): r for r in report.rows}
    assert rows[("liver", "liver")].status == "ok" and rows[("liver", "liver")].dice == 1.0
    spleen = rows[("spleen", "spleen")]
    assert (spleen.status, spleen.dice, spleen.hd95_mm, spleen.msd_mm) == ("both empty", 1.0, 0.0, 0.0)
    stomach = rows[("stomach", "")]
    assert (stomach.matched_by, stomach.status, stomach.dice) == ("unmatched", "both empty", 1.0)
    aorta = rows[("", "aorta")]
    assert (aorta.matched_by, aorta.status, aorta.dice) == ("unmatched", "missing in prediction", 0.0)
    assert math.isinf(aorta.hd95_mm) and aorta.volume_ref_ml == pytest.approx(8 * 2.0 / 1000)
    assert aorta.rel_volume_diff == -1.0
    text = report.to_table()
    assert "missing in prediction" in text and "inf" in text and "nan" not in text.lower()


def test_memory_stays_with_the_segment_not_the_volume():
    """Two small cubes in a 256^3 volume: numpy peak while comparing stays far below one volume copy."""
    shape = (256, 256, 256)
    lab = np.zeros(shape, np.uint8)
    lab[10:30, 10:30, 10:30] = 1
    lab[200:220, 200:220, 200:220] = 2
    ref = np.roll(lab, 2, axis=2)
    segs = [SegmentInfo("a", 1), SegmentInfo("b", 2)]
    tracemalloc.start()
    report = compare_label_arrays([lab], segs, [ref], segs, (1.0, 1.0, 1.0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.rows[0].hd95_mm == pytest.approx(2.0, rel=1e-5)
    assert peak < lab.nbytes / 4, f"peak {peak / 1e6:.1f} MB for a {lab.nbytes / 1e6:.1f} MB volume"


# ---------------------------------------------------------------------------------------------------------------
# CLI, CSV, plot, overlay


def test_cli_compare_writes_table_csv_plot_and_overlay(tmp_path, lits, capsys):
    pred = perturbed_multilabel(lits)
    p = write_seg(tmp_path / "pred.seg.nrrd", pred, [(1, "liver", LIVER), (2, "tumor", TUMOUR)])
    r = write_seg(tmp_path / "ref.seg.nrrd", lits, [(1, "liver", LIVER), (2, "tumor", TUMOUR)])
    image = read_mrc(lits_file("img_117.mrc"))[::2, ::2, ::2].astype(np.float32)
    vol = write_labelmap(tmp_path / "ct.nrrd", image)
    out_csv, out_png, out_overlay = tmp_path / "m.csv", tmp_path / "plot.png", tmp_path / "overlay.png"
    code = cli.main(["compare", str(p), str(r), "--csv", str(out_csv), "--plot", str(out_png),
                     "--overlay", str(out_overlay), "--volume", str(vol)])
    assert code == 0
    table = capsys.readouterr().out
    assert "liver" in table and "tumor" in table and "Dice" in table and "terminology" in table
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    report = compare_files(p, r)
    assert [row["segment"] for row in rows] == ["liver", "tumor"]
    for row, ref_row in zip(rows, report.rows):
        assert float(row["dice"]) == ref_row.dice and float(row["hd95_mm"]) == ref_row.hd95_mm
        assert row["matched_by"] == "terminology" and row["status"] == "ok"
    for png in (out_png, out_overlay):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        picture = sitk.GetArrayFromImage(sitk.ReadImage(str(png)))
        assert picture.shape[0] > 200 and picture.shape[1] > 300 and picture.std() > 10
    assert not [x.name for x in tmp_path.iterdir() if x.name.startswith(".")]  # atomic writes leave no temp files
    for written in (out_csv, out_png):  # the temp file's 0600 must not leak into the result
        assert written.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_cli_compare_errors_are_one_line(tmp_path, lits, capsys):
    p = write_labelmap(tmp_path / "p.nii.gz", lits)
    assert cli.main(["compare", str(p), str(tmp_path / "nope.nii.gz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not exist" in err and "\n" not in err
    assert cli.main(["compare", str(p), str(p), "--overlay", str(tmp_path / "o.png")]) == 1
    assert "--volume" in capsys.readouterr().err


def test_plot_marks_missing_segments(tmp_path):
    from UXNetSegmentLib.compare_plot import plot_report
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:6, 2:6, 2:6] = 1
    ref = lab.copy()
    ref[7:9, 7:9, 7:9] = 2
    report = compare_label_arrays([lab], [SegmentInfo("a", 1), SegmentInfo("b", 2)], [ref],
                                  [SegmentInfo("a", 1), SegmentInfo("b", 2)], (1.0, 1.0, 1.0))
    assert math.isinf(report.rows[1].hd95_mm)
    out = plot_report(report, tmp_path / "c.png")
    assert out.is_file() and out.stat().st_size > 5000
    with pytest.raises(UXNetError, match=r"\.png"):
        plot_report(report, tmp_path / "c.jpg")
