"""CompareLogic on real MRML (slicer-core, headless): segmentation nodes -> table, chart, outlines, review tags.

The segmentations are the LiTS liver/tumour label (see test_compare.py), written as .seg.nrrd and loaded with
Slicer's own segmentation reader; the table must hold the same numbers as the engine's ``compare_files`` on
the same files, including a reference on another grid (exported by Slicer onto the prediction's geometry).
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is a test requirement: pip install slicer-core")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_slicer import mrml_scene, slicer_app  # noqa: E402,F401  (pytest fixtures)

import slicer  # noqa: E402
import vtk  # noqa: E402
from test_compare import (ANISO, LIVER, TUMOUR, ijk_to_lps, lits, nearest_sample, perturb,  # noqa: E402,F401
                          perturbed_multilabel, write_seg)
from test_review import two_organ_scene  # noqa: E402

from UXNetSegmentLib.compare import compare_files  # noqa: E402
from UXNetSegmentLib.errors import UXNetError  # noqa: E402
from UXNetSegmentLib.review import review_stats  # noqa: E402
from UXNetSegmentSlicer.CompareLogic import REVIEW_SCORE_TAG, REVIEW_SHARE_TAG, CompareLogic  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_seg(app, path: Path, name: str):
    node = app.segmentations.LoadSegmentationFromFile(str(path), True, name)
    assert node is not None and node.GetSegmentation().GetNumberOfSegments() > 0
    return node


def table_rows(tableNode) -> list:
    table = tableNode.GetTable()
    names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, name in enumerate(names):
            column = table.GetColumn(c)
            row[name] = column.GetValue(r)
        rows.append(row)
    return rows


def assert_table_equals_report(tableNode, report, atol=0.0) -> None:
    rows = table_rows(tableNode)
    assert [r["segment"] for r in rows] == [x.segment or x.reference_segment for x in report.rows]
    for got, want in zip(rows, report.rows):
        assert got["matched by"] == want.matched_by and got["status"] == want.status
        for title, attr in (("Dice", "dice"), ("HD95 mm", "hd95_mm"), ("MSD mm", "msd_mm"),
                            ("volume pred ml", "volume_pred_ml"), ("volume ref ml", "volume_ref_ml"),
                            ("rel. volume diff", "rel_volume_diff")):
            assert got[title] == pytest.approx(getattr(want, attr), abs=atol, rel=1e-9), title


def test_table_chart_and_outline_equal_the_engine(tmp_path, lits, slicer_app, mrml_scene):
    pred = perturbed_multilabel(lits)
    p = write_seg(tmp_path / "pred.seg.nrrd", pred, [(1, "liver", LIVER), (2, "tumor", TUMOUR)])
    r = write_seg(tmp_path / "ref.seg.nrrd", lits, [(1, "Liver", LIVER), (2, "Liver tumour", TUMOUR)])
    predNode, refNode = load_seg(slicer_app, p, "prediction"), load_seg(slicer_app, r, "reference")
    result = CompareLogic(mrml_scene).compare(predNode, refNode)
    engine = compare_files(p, r)
    assert_table_equals_report(result.tableNode, engine)
    assert [row.matched_by for row in result.report.rows] == ["terminology", "terminology"]
    assert result.report.rows[0].dice < 1.0 and result.report.rows[0].hd95_mm > 0
    # plot nodes: a bar series of the Dice column, labelled by segment, inside a chart
    series, chart = result.seriesNode, result.chartNode
    assert series.IsA("vtkMRMLPlotSeriesNode") and chart.IsA("vtkMRMLPlotChartNode")
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
    assert (series.GetYColumnName(), series.GetLabelColumnName()) == ("Dice", "segment")
    assert series.GetTableNode() is result.tableNode and chart.GetPlotSeriesNode() is series
    assert mrml_scene.GetNodeByID(chart.GetID()) is chart
    # the reference is drawn as outlines only; its segments are untouched
    display = refNode.GetDisplayNode()
    assert not display.GetVisibility2DFill() and display.GetVisibility2DOutline()
    assert refNode.GetSegmentation().GetNumberOfSegments() == 2
    # no temporary nodes are left behind
    leftovers = [mrml_scene.GetNthNode(i).GetName() for i in range(mrml_scene.GetNumberOfNodes())]
    assert not [n for n in leftovers if "(temp)" in n]
    # running again reuses the given table and chart
    again = CompareLogic(mrml_scene).compare(predNode, refNode, tableNode=result.tableNode, chartNode=chart)
    assert again.tableNode is result.tableNode and again.seriesNode is series
    assert result.tableNode.GetTable().GetNumberOfRows() == 2


def test_reference_on_another_geometry(tmp_path, lits, slicer_app, mrml_scene):
    """Reference on an identity-direction grid with twice the spacing, origin off by a fraction of a voxel:
    Slicer's export onto the prediction's geometry must give the engine's numbers (nearest neighbour)."""
    pred_dir = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    origin = (10.0, -20.0, 30.0)
    pred_m = ijk_to_lps(ANISO, origin, pred_dir)
    coarse = tuple(2 * s for s in ANISO)
    ref_origin = np.array(origin) + np.array([-(63 * ANISO[0]), -(63 * ANISO[1]), 0.0]) - 0.37 * np.array(ANISO)
    ref_m = ijk_to_lps(coarse, ref_origin, np.eye(3).ravel())
    ref_coarse = nearest_sample(perturb(lits > 0, "erode+blob").astype(np.uint8), pred_m, (34, 34, 34), ref_m)
    p = write_seg(tmp_path / "pred.seg.nrrd", (lits > 0).astype(np.uint8), [(1, "liver", LIVER)])
    r = write_seg(tmp_path / "ref.seg.nrrd", ref_coarse, [(1, "liver", LIVER)], spacing=coarse,
                  origin=tuple(ref_origin), direction=tuple(np.eye(3).ravel()))
    result = CompareLogic(mrml_scene).compare(load_seg(slicer_app, p, "pred"), load_seg(slicer_app, r, "ref"))
    engine = compare_files(p, r)
    assert engine.resampled
    (row,) = result.report.rows
    assert row.dice == pytest.approx(engine.rows[0].dice, abs=1e-6)
    diagonal = float(np.linalg.norm(ANISO))
    assert abs(row.hd95_mm - engine.rows[0].hd95_mm) <= diagonal
    assert abs(row.msd_mm - engine.rows[0].msd_mm) <= diagonal
    assert_table_equals_report(result.tableNode, result.report)


# ---------------------------------------------------------------------------------------------------------------
# Segmentations built in the scene: layers (overlap) and matching


def oriented(mask_kji: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask_kji.shape[2], mask_kji.shape[1], mask_kji.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    from vtk.util import numpy_support
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(mask_kji.shape)[:] = mask_kji
    m = np.eye(4)
    m[:3, :3] = np.diag(spacing)
    m[:3, 3] = origin
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(m))
    return image


def add_segmentation(scene, name, segments, terms=None):
    """``segments``: [(name, mask)]; each becomes a separate layer (Slicer does not merge them here)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    for seg_name, mask in segments:
        segment_id = node.AddSegmentFromBinaryLabelmapRepresentation(oriented(mask.astype(np.uint8)), seg_name,
                                                                     [0.5, 0.5, 0.5])
        if terms and seg_name in terms:
            node.GetSegmentation().GetSegment(segment_id).SetTerminology(terms[seg_name])
    return node


def term(code, meaning) -> str:
    return f"ctx~SCT^123037004^Anatomical Structure~SCT^{code}^{meaning}~^^~anat~^^~^^"


def test_overlapping_layers_keep_their_voxels_and_matching_is_reported(mrml_scene):
    shape = (12, 20, 20)
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    organ = (abs(k - 6) <= 4) & (abs(j - 10) <= 7) & (abs(i - 10) <= 7)
    lesion = (k - 6) ** 2 + (j - 10) ** 2 + (i - 10) ** 2 <= 9  # inside the organ: overlapping segments
    spleen = np.zeros(shape, bool)
    spleen[1:4, 1:4, 15:19] = True
    pred = add_segmentation(mrml_scene, "pred", [("hepar", organ), ("lesion", lesion), ("Spleen", spleen)],
                            terms={"hepar": term("10200004", "Liver")})
    ref = add_segmentation(mrml_scene, "ref", [("Liver", organ), ("Lesion", lesion), ("kidney", spleen)],
                           terms={"Liver": term("10200004", "Liver")})
    assert pred.GetSegmentation().GetNumberOfLayers() == 3
    result = CompareLogic(mrml_scene).compare(pred, ref)
    rows = {(r.segment, r.reference_segment): r for r in result.report.rows}
    assert rows[("hepar", "Liver")].matched_by == "terminology"
    assert rows[("lesion", "Lesion")].matched_by == "name"
    # the organ keeps the voxels the lesion also claims: a merged export would lose them and drop the Dice
    assert rows[("hepar", "Liver")].dice == 1.0 and rows[("lesion", "Lesion")].dice == 1.0
    assert rows[("hepar", "Liver")].volume_pred_ml == pytest.approx(organ.sum() * 2.0 / 1000)
    # the spleen and the kidney do not share a code or a name, but they share their label value (1 in their
    # own layer): value matching pairs them and says so
    assert rows[("Spleen", "kidney")].matched_by == "value"
    by_segment = {r["segment"]: r for r in table_rows(result.tableNode)}
    assert by_segment["hepar"]["matched by"] == "terminology" and by_segment["lesion"]["Dice"] == 1.0


def test_missing_segment_shows_inf_not_nan(mrml_scene):
    shape = (8, 10, 10)
    organ = np.zeros(shape, bool)
    organ[2:6, 2:8, 2:8] = True
    pred = add_segmentation(mrml_scene, "pred", [("liver", organ), ("spleen", np.zeros(shape, bool))])
    ref = add_segmentation(mrml_scene, "ref", [("liver", organ), ("spleen", np.zeros(shape, bool)),
                                               ("aorta", organ)])
    rows = {r["segment"]: r for r in table_rows(CompareLogic(mrml_scene).compare(pred, ref).tableNode)}
    assert rows["spleen"]["status"] == "both empty" and rows["spleen"]["Dice"] == 1.0
    assert rows["aorta"]["status"] == "missing in prediction" and math.isinf(rows["aorta"]["HD95 mm"])
    assert rows["aorta"]["matched by"] == "unmatched"
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows.values() for v in r.values())


def test_bad_inputs_are_one_line_errors(mrml_scene):
    organ = np.zeros((4, 4, 4), bool)
    organ[1:3, 1:3, 1:3] = True
    node = add_segmentation(mrml_scene, "s", [("a", organ)])
    with pytest.raises(UXNetError, match="no reference"):
        CompareLogic(mrml_scene).compare(node, None)
    with pytest.raises(UXNetError, match="same node"):
        CompareLogic(mrml_scene).compare(node, node)


# ---------------------------------------------------------------------------------------------------------------
# Review scores into segment tags


def test_review_scores_from_an_uncertainty_volume(mrml_scene):
    labels, unc = two_organ_scene()
    ijk_to_ras = np.diag([0.9, 0.9, 1.5, 1.0])
    ijk_to_ras[:3, 3] = (-5.0, 3.0, 7.0)
    unc_node = slicer.util.addVolumeFromArray(unc.astype(np.float32), ijk_to_ras, "uncertainty")
    label_node = slicer.util.addVolumeFromArray(labels, ijk_to_ras, "labels", "vtkMRMLLabelMapVolumeNode")
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, seg)
    segmentation = seg.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    by_value = {segmentation.GetSegment(i).GetLabelValue(): i for i in ids}
    stats = CompareLogic(mrml_scene).reviewScoresFromVolume(seg, unc_node, threshold=0.3)
    engine = review_stats(labels, unc.astype(np.float32), [1, 2], threshold=0.3)
    for value, segment_id in by_value.items():
        assert stats[segment_id].boundary_mean == pytest.approx(engine[value].boundary_mean, rel=1e-9)
        segment = segmentation.GetSegment(segment_id)
        tag = vtk.reference("")
        assert segment.GetTag(REVIEW_SCORE_TAG, tag) and str(tag) == f"{engine[value].score:.3f}"
        assert segment.GetTag(REVIEW_SHARE_TAG, tag) and float(str(tag)) == pytest.approx(
            engine[value].share_above, abs=1e-3)
    # the hesitant sphere (value 1) is listed first for review
    assert CompareLogic.segmentsForReview(seg) == [by_value[1], by_value[2]]


def test_set_review_scores_replaces_stale_tags(mrml_scene):
    organ = np.zeros((4, 4, 4), bool)
    organ[1:3, 1:3, 1:3] = True
    node = add_segmentation(mrml_scene, "s", [("a", organ), ("b", organ)])
    a, b = [node.GetSegmentation().GetNthSegmentID(n) for n in range(2)]
    CompareLogic.setReviewScores(node, {a: 0.1234, b: 0.5})
    assert CompareLogic.reviewScore(node.GetSegmentation().GetSegment(a)) == pytest.approx(0.123)
    assert CompareLogic.segmentsForReview(node) == [b, a]
    CompareLogic.setReviewScores(node, {a: 0.2})
    assert CompareLogic.reviewScore(node.GetSegmentation().GetSegment(b)) is None
    assert CompareLogic.segmentsForReview(node) == [a, b]
    with pytest.raises(UXNetError, match="no segment with ID"):
        CompareLogic.setReviewScores(node, {"nope": 0.3})
