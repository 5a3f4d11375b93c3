"""The Slicer-side logic on real MRML (slicer-core 5.13, headless) with the real engine in a child process.

Every engine run here is the real CLI (``python -m UXNetSegmentLib segment ...``) with the real small
checkpoint ``Testing/Data/uxnet_small_seed7.pth`` (official UX-Net layout, 5 classes) on tiny volumes,
so each run takes seconds.
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from conftest_slicer import MODULE_DIR, REPO, mrml_scene, node_ids, slicer_app  # noqa: F401 (fixtures)

import slicer  # noqa: E402  (after conftest_slicer put the module folder on sys.path)
import vtk  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from UXNetSegmentLib.catalogue import load_spec  # noqa: E402
from UXNetSegmentLib.errors import Cancelled, UXNetError  # noqa: E402
from UXNetSegmentLib.imageio import write_seg_nrrd  # noqa: E402
from UXNetSegmentSlicer.InstallLogic import (  # noqa: E402
    DEVICE_QUERY_SCRIPT, InstallLogic, Requirement, parseDeviceQuery)
from UXNetSegmentSlicer.Parameters import SegmentationParameters  # noqa: E402
from UXNetSegmentSlicer.ProcessRunner import LogLine, ProcessRunner, ProgressEvent, parseProgressLine  # noqa: E402
from UXNetSegmentSlicer.SegmentationLogic import (  # noqa: E402
    CHILD_ENVIRONMENT, REVIEW_SEGMENT_ID, UNCERTAINTY_COLOR_NODE_IDS, UNCERTAINTY_HIDDEN_BELOW, SegmentationLogic,
    State, addReviewSegment, terminologyEntry)
from UXNetSegmentSlicer.CompareLogic import CompareLogic  # noqa: E402

CHECKPOINT = REPO / "Testing" / "Data" / "uxnet_small_seed7.pth"
SIZE_IJK = (40, 36, 24)
SPACING = (0.9, 1.3, 2.2)
ORIGIN_LPS = (-12.5, 20.25, -7.0)
TEST_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # tiny inputs; share the CPU politely

# Four foreground labels for the 5-class checkpoint: two SNOMED-coded from the catalogue's terms table,
# one with explicit codes, one with no code at all (gets the engine's private 99UXNET code).
SPEC = {
    "name": "test_small",
    "title": "Small test model",
    "labels": {
        "1": "liver",
        "2": "spleen",
        "3": {"name": "left kidney", "color": [10, 200, 30],
              "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                              "type": ["SCT", "64033007", "Kidney"], "modifier": ["SCT", "7771000", "Left"]}},
        "4": {"name": "mystery blob", "color": [250, 0, 250]},
    },
    "spacing": None,
    "intensity_window": [0.0, 1.0],
    "roi_size": [32, 32, 32],
    "overlap": 0.25,
    "modality": "MR",
}


# ---------------------------------------------------------------------------------------------------------
# helpers


def oblique_direction() -> np.ndarray:
    """A proper rotation (det +1) about a tilted axis: no axis of the grid is aligned with LPS."""
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    angle = np.deg2rad(27.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def phantom_kji() -> np.ndarray:
    """Smooth blobs in [0, 1] (k, j, i order) so the network sees structure, not noise."""
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in SIZE_IJK[::-1]), indexing="ij")
    image = 0.8 * np.exp(-((i - 0.3) ** 2 + j ** 2 + (k + 0.2) ** 2) / 0.25)
    image += 0.6 * np.exp(-((i + 0.5) ** 2 + (j - 0.4) ** 2 + k ** 2) / 0.08)
    image += 0.15 * (i + 1) + 0.05
    return np.clip(image, 0, 1).astype(np.float32)


def write_lps_nrrd(path: Path) -> sitk.Image:
    image = sitk.GetImageFromArray(phantom_kji())
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    image.SetDirection(tuple(oblique_direction().ravel()))
    sitk.WriteImage(image, str(path))
    return image


def write_ras_nrrd(path: Path) -> None:
    """The same grid and voxels, stored in RAS ('right-anterior-superior') instead of LPS."""
    import nrrd

    flip = np.diag([-1.0, -1.0, 1.0])
    columns = flip @ oblique_direction() @ np.diag(SPACING)  # column c: RAS step of index axis c
    header = {"space": "right-anterior-superior", "space directions": columns.T,
              "space origin": flip @ np.array(ORIGIN_LPS), "kinds": ["domain"] * 3, "encoding": "raw"}
    nrrd.write(str(path), phantom_kji().transpose(2, 1, 0).copy(), header, index_order="F")


def load_volume(scene, path: Path, name: str):
    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetName(name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(volume)
    scene.AddNode(volume)
    volume.CreateDefaultDisplayNodes()
    return volume


def put_in_folder(scene, node, folderName: str) -> int:
    """Put ``node`` under a new subject-hierarchy folder (as Slicer's Data module would); returns the folder."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), folderName)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, folder)
    else:
        sh.CreateItem(folder, node)
    return folder


def segment_voxels_ras(segmentationNode, segmentId) -> np.ndarray:
    """RAS centres (N, 3) of the voxels set in one segment, read from its binary labelmap geometry."""
    labelmap = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
    extent = labelmap.GetExtent()
    if extent[1] < extent[0]:
        return np.zeros((0, 3))
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    values = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1])
    k, j, i = np.nonzero(values)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    m = slicer.util.arrayFromVTKMatrix(matrix)
    ijk1 = np.c_[i + extent[0], j + extent[2], k + extent[4], np.ones(len(i))]
    return (m @ ijk1.T).T[:, :3]


def engine_labels_at(reference: sitk.Image, ras: np.ndarray):
    """Continuous indices of RAS points in ``reference`` and the label found there."""
    lps = ras * np.array([-1.0, -1.0, 1.0])
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    scale = direction @ np.diag(reference.GetSpacing())
    index = np.linalg.solve(scale, (lps - np.array(reference.GetOrigin())).T).T
    rounded = np.rint(index).astype(int)
    array = sitk.GetArrayFromImage(reference)
    labels = array[rounded[:, 2], rounded[:, 1], rounded[:, 0]] if len(rounded) else np.zeros(0)
    return index, labels


def run_cli(args, **kwargs) -> subprocess.CompletedProcess:
    env = SegmentationLogic(extraEnvironment=TEST_ENV).childEnvironment()
    return subprocess.run([sys.executable, "-m", "UXNetSegmentLib"] + [str(a) for a in args], env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


def make_logic() -> SegmentationLogic:
    return SegmentationLogic(pythonExecutable=sys.executable, extraEnvironment=TEST_ENV)


def existing_segmentation(scene, name: str):
    """A user's segmentation with one painted segment; returns (node, snapshot of its content)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, 9, 0, 9, 0, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk_to_numpy(image.GetPointData().GetScalars())[:] = 0
    vtk_to_numpy(image.GetPointData().GetScalars())[:50] = 1
    node.AddSegmentFromBinaryLabelmapRepresentation(image, "user tumour", [1.0, 1.0, 0.0])
    return node, snapshot(node)


def snapshot(node) -> dict:
    seg = node.GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    return {"ids": ids, "names": [seg.GetSegment(s).GetName() for s in ids],
            "voxels": [segment_voxels_ras(node, s).round(4).tolist() for s in ids],
            "identity": (node.GetName(), node.GetID())}


# ---------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slicer-logic")
    (folder / "spec.json").write_text(json.dumps(SPEC))
    return folder


@pytest.fixture(scope="module")
def spec_path(workdir) -> Path:
    return workdir / "spec.json"


@pytest.fixture(scope="module")
def params(spec_path) -> SegmentationParameters:
    assert CHECKPOINT.is_file(), f"copy ../shared/reference/uxnet_small_seed7.pth to {CHECKPOINT}"
    return SegmentationParameters(weightsPath=str(CHECKPOINT), specPath=str(spec_path), device="cpu",
                                  show3D=True)


@pytest.fixture(scope="module")
def lps_file(workdir) -> Path:
    """The oblique, anisotropic phantom stored as an LPS NRRD (SimpleITK's convention)."""
    path = workdir / "oblique_lps.nrrd"
    write_lps_nrrd(path)
    return path


@pytest.fixture(scope="module")
def engine_reference(workdir, params, lps_file) -> sitk.Image:
    """The engine CLI's own labelmap for the LPS file: what the Slicer result must reproduce voxel by voxel."""
    out = workdir / "engine_labels.nrrd"
    done = run_cli(["segment", lps_file, "-o", out, *params.asArgList(), "--progress", "none"])
    assert done.returncode == 0, done.stderr
    return sitk.ReadImage(str(out))


@pytest.fixture(scope="module")
def runs(slicer_app, workdir, params, engine_reference):
    """Two real runs through the logic: the LPS file into a new node, the RAS file into a chosen node.

    Before the runs the scene holds a user's segmentation that must stay untouched, and a second one
    that the user picks as output for the RAS run (its segments must be replaced).
    """
    scene = slicer_app.scene
    before = set(node_ids(scene))
    write_ras_nrrd(workdir / "oblique_ras.nrrd")
    lpsVolume = load_volume(scene, workdir / "oblique_lps.nrrd", "oblique LPS")
    rasVolume = load_volume(scene, workdir / "oblique_ras.nrrd", "oblique RAS")
    folder = put_in_folder(scene, lpsVolume, "Patient folder")
    untouched, untouchedBefore = existing_segmentation(scene, "user segmentation")
    chosen, _ = existing_segmentation(scene, "chosen output")
    chosenId = chosen.GetID()
    events = []
    logic = make_logic()
    lpsResult = logic.segmentBlocking(lpsVolume, params, progressCallback=lambda *e: events.append(e), timeout=600)
    withUncertainty = dataclasses.replace(params, uncertainty=True)
    rasResult = logic.segmentBlocking(rasVolume, withUncertainty, outputSegmentation=chosen, timeout=600)
    yield {"scene": scene, "lpsVolume": lpsVolume, "rasVolume": rasVolume, "lps": lpsResult, "ras": rasResult,
           "folder": folder, "untouched": untouched, "untouchedBefore": untouchedBefore, "chosen": chosen,
           "chosenId": chosenId, "events": events, "spec": load_spec(params.specPath)}
    for node_id in node_ids(scene):
        node = scene.GetNodeByID(node_id)
        if node_id not in before and node is not None:
            scene.RemoveNode(node)


# ---------------------------------------------------------------------------------------------------------
# end to end with the engine


def assert_on_engine_voxels(segmentationNode, spec, reference: sitk.Image) -> None:
    segmentation = segmentationNode.GetSegmentation()
    counts = np.bincount(sitk.GetArrayFromImage(reference).ravel(), minlength=max(spec.labels) + 1)
    assert segmentation.GetNumberOfLayers() == 1  # one shared labelmap, label value = model value
    for value in spec.labels:
        segmentId = next(segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                         if segmentation.GetNthSegment(i).GetLabelValue() == value)
        ras = segment_voxels_ras(segmentationNode, segmentId)
        assert len(ras) == counts[value], f"label {value}: {len(ras)} voxels in Slicer, {counts[value]} by the engine"
        index, labels = engine_labels_at(reference, ras)
        if len(ras):
            assert np.abs(index - np.rint(index)).max() < 1e-3, "segment voxels are off the input's voxel centres"
            assert (labels == value).all(), f"label {value}: voxels land on other engine labels"


def test_oblique_anisotropic_lps_volume_segments_on_input_voxels(runs, engine_reference):
    assert_on_engine_voxels(runs["lps"].segmentationNode, runs["spec"], engine_reference)
    present = set(np.unique(sitk.GetArrayFromImage(engine_reference))) - {0}
    assert len(present) >= 2, "the phantom should give at least two labels (else the check is weak)"


def test_ras_source_file_gives_the_same_segments(runs, engine_reference):
    lpsIjk = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(runs["lpsVolume"]))
    rasIjk = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(runs["rasVolume"]))
    np.testing.assert_allclose(lpsIjk, rasIjk, atol=1e-6)  # both files describe one grid
    assert_on_engine_voxels(runs["ras"].segmentationNode, runs["spec"], engine_reference)


def _ijk_to_ras(volume):
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix


def test_segments_named_coloured_coded_and_complete(runs):
    spec = runs["spec"]
    node = runs["lps"].segmentationNode
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(spec.labels)
    for index, (value, label) in enumerate(sorted(spec.labels.items())):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == label.name
        assert segment.GetLabelValue() == value
        np.testing.assert_allclose(segment.GetColor(), [c / 255 for c in label.color], atol=1e-6)
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
        assert segment.GetTerminology() == terminologyEntry(label)
    entries = [segmentation.GetNthSegment(i).GetTerminology() for i in range(4)]
    assert "~SCT^10200004^Liver~" in entries[0]
    assert "~SCT^64033007^Kidney~SCT^7771000^Left~" in entries[2]
    assert "99UXNET^label-4^mystery blob" in entries[3]
    assert node.GetName().startswith("oblique LPS")
    assert segmentation.ContainsRepresentation("Closed surface")  # show3D
    assert node.GetDisplayNode() is not None


def test_reference_geometry_and_subject_hierarchy(runs):
    node = runs["lps"].segmentationNode
    volume = runs["lpsVolume"]
    expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(_geometry_of(volume))
    actual = node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert actual == expected
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(runs["scene"])
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == runs["folder"]


def _geometry_of(volume):
    image = slicer.vtkOrientedImageData()
    image.SetExtent(volume.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def test_existing_segmentation_untouched_and_chosen_output_replaced(runs):
    assert snapshot(runs["untouched"]) == runs["untouchedBefore"]
    chosen = runs["chosen"]
    assert runs["ras"].segmentationNode is chosen and chosen.GetID() == runs["chosenId"]
    names = [chosen.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(chosen.GetSegmentation().GetNumberOfSegments())]
    assert names == [label.name for _, label in sorted(runs["spec"].labels.items())]
    # The LPS run made a new node; nothing else appeared.
    assert runs["lps"].segmentationNode.GetID() not in (chosen.GetID(), runs["untouched"].GetID())


def test_uncertainty_volume_beside_the_input_on_its_grid(runs):
    assert runs["lps"].uncertaintyVolumeNode is None
    volume = runs["ras"].uncertaintyVolumeNode
    assert volume is not None and volume.GetScene() is runs["scene"]
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume)),
                               slicer.util.arrayFromVTKMatrix(_ijk_to_ras(runs["rasVolume"])), atol=1e-6)
    values = slicer.util.arrayFromVolume(volume)
    assert values.shape == SIZE_IJK[::-1] and np.isfinite(values).all()
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(runs["scene"])
    assert sh.GetItemParent(sh.GetItemByDataNode(volume)) == sh.GetItemParent(sh.GetItemByDataNode(runs["rasVolume"]))


def test_uncertainty_volume_is_shown_as_a_heat_overlay(runs):
    display = runs["ras"].uncertaintyVolumeNode.GetDisplayNode()
    # a heat colour map that exists in this scene (headless: the built-in Iron table)
    assert display.GetColorNodeID() in UNCERTAINTY_COLOR_NODE_IDS
    assert runs["scene"].GetNodeByID(display.GetColorNodeID()) is not None
    assert not display.GetAutoWindowLevel() and (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0, 1)
    assert display.GetApplyThreshold() and not display.GetAutoThreshold()
    assert display.GetLowerThreshold() == pytest.approx(UNCERTAINTY_HIDDEN_BELOW)


def test_run_with_uncertainty_lists_segments_least_certain_first(runs):
    node, uncertainty = runs["ras"].segmentationNode, runs["ras"].uncertaintyVolumeNode
    rows = CompareLogic.reviewRows(node)
    # the scores were stored as tags by the run itself; recompute them independently from the volume
    fresh = CompareLogic(runs["scene"]).reviewScoresFromVolume(node, uncertainty, writeTags=False)
    assert rows and {r.segmentId for r in rows} == set(fresh)  # empty segments get no score, no row
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    for row in rows:
        assert row.score == pytest.approx(fresh[row.segmentId].score, abs=5e-4)  # tags keep 3 decimals
        assert row.share == pytest.approx(fresh[row.segmentId].share_above, abs=5e-4)
        assert row.name == node.GetSegmentation().GetSegment(row.segmentId).GetName()


def test_review_segment_marks_uncertain_voxels_and_keeps_the_others(runs):
    node, uncertainty = runs["ras"].segmentationNode, runs["ras"].uncertaintyVolumeNode
    segmentation = node.GetSegmentation()
    modelIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    before = [len(segment_voxels_ras(node, s)) for s in modelIds]
    values = slicer.util.arrayFromVolume(uncertainty)
    threshold = float(np.quantile(values, 0.8))
    try:
        assert addReviewSegment(node, uncertainty, threshold) == REVIEW_SEGMENT_ID
        assert addReviewSegment(node, uncertainty, threshold) == REVIEW_SEGMENT_ID  # replaced, not doubled
        assert segmentation.GetNumberOfSegments() == len(modelIds) + 1
        review = segment_voxels_ras(node, REVIEW_SEGMENT_ID)
        assert len(review) == int((values > threshold).sum()) > 0
        index, _ = engine_labels_at(_as_sitk_grid(uncertainty), review)
        rounded = np.rint(index).astype(int)
        assert (values[rounded[:, 2], rounded[:, 1], rounded[:, 0]] > threshold).all()
        assert [len(segment_voxels_ras(node, s)) for s in modelIds] == before
        # rescoring (the threshold slider does) never scores or lists the review segment itself
        stats = CompareLogic(runs["scene"]).reviewScoresFromVolume(node, uncertainty, threshold)
        assert REVIEW_SEGMENT_ID not in stats
        assert REVIEW_SEGMENT_ID not in [r.segmentId for r in CompareLogic.reviewRows(node)]
    finally:
        segmentation.RemoveSegment(REVIEW_SEGMENT_ID)
    with pytest.raises(UXNetError, match="no uncertainty map"):
        addReviewSegment(node, None, 0.5)


def _as_sitk_grid(volume) -> sitk.Image:
    """An empty SimpleITK image on ``volume``'s grid (LPS), for physical-to-index mapping."""
    m = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))
    lps = np.diag([-1.0, -1.0, 1.0]) @ m[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image = sitk.Image([int(n) for n in volume.GetImageData().GetDimensions()], sitk.sitkUInt8)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).ravel().tolist())
    image.SetOrigin((np.array([-1.0, -1.0, 1.0]) * m[:3, 3]).tolist())
    return image


def test_progress_comes_from_engine_json_lines(runs):
    stages = [e[0] for e in runs["events"]]
    assert "inference" in stages and stages[-1] == "import"
    fractions = [e[1] for e in runs["events"] if e[0] == "inference"]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("/" in e[2] for e in runs["events"] if e[0] == "inference"), "window i/n detail expected"


def test_cancel_mid_run_leaves_scene_unchanged_and_no_process(mrml_scene, lps_file, params):
    volume = load_volume(mrml_scene, lps_file, "cancel me")
    before = node_ids(mrml_scene)
    task = make_logic().start(volume, params)
    deadline = time.monotonic() + 300
    while task.poll() == State.RUNNING and task.lastProgress is None:
        assert time.monotonic() < deadline, "the engine printed no progress"
        time.sleep(0.02)
    assert task.state == State.RUNNING, task.errorMessage
    family = [psutil.Process(task.runner.pid)] + psutil.Process(task.runner.pid).children(recursive=True)
    task.cancel()
    assert task.state == State.CANCELLED
    assert node_ids(mrml_scene) == before
    assert not task.workDir.exists()
    alive = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    with pytest.raises(Cancelled):
        task.wait()


def test_engine_error_surfaces_as_its_one_line_message(mrml_scene, workdir, spec_path, lps_file):
    broken = workdir / "broken.pth"  # an interrupted download: the first 100 kB of the real checkpoint
    broken.write_bytes(CHECKPOINT.read_bytes()[:100_000])
    volume = load_volume(mrml_scene, lps_file, "error case")
    before = node_ids(mrml_scene)
    bad = SegmentationParameters(weightsPath=str(broken), specPath=str(spec_path), device="cpu")
    with pytest.raises(UXNetError) as caught:
        make_logic().segmentBlocking(volume, bad, timeout=300)
    # The same failure straight from the CLI: the panel must show exactly its error line.
    cli = run_cli(["segment", lps_file, "-o", workdir / "x.seg.nrrd", *bad.asArgList(),
                   "--progress", "none"])
    line = [t for t in cli.stderr.splitlines() if t.startswith("error: ")][-1]
    assert str(caught.value) == line[len("error: "):]
    assert "\n" not in str(caught.value) and "broken.pth is truncated" in str(caught.value)
    assert node_ids(mrml_scene) == before


# ---------------------------------------------------------------------------------------------------------
# without the engine: import step, process handling, parameters, install


def test_import_makes_every_label_a_segment_even_empty_ones(mrml_scene, tmp_path, spec_path):
    """The engine's own writer, a labelmap without label 3: the segment still exists, empty."""
    write_lps_nrrd(tmp_path / "in.nrrd")
    volume = load_volume(mrml_scene, tmp_path / "in.nrrd", "import case")
    reference = sitk.ReadImage(str(tmp_path / "in.nrrd"))
    labels = np.zeros(SIZE_IJK[::-1], np.uint8)
    labels[2:10, 5:20, 3:30] = 1
    labels[12:20, 5:20, 3:30] = 2
    labels[0, 0, 0] = 4
    labelImage = sitk.GetImageFromArray(labels)
    labelImage.CopyInformation(reference)
    spec = load_spec(spec_path)
    write_seg_nrrd(labelImage, spec, tmp_path / "result.seg.nrrd")
    before = len(node_ids(mrml_scene))
    node, uncertainty = make_logic().importResult(tmp_path, spec, volume, None,
                                                  SegmentationParameters(show3D=False))
    assert uncertainty is None
    assert len(node_ids(mrml_scene)) == before + 2  # the segmentation and its display node
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(4)] == \
        ["liver", "spleen", "left kidney", "mystery blob"]
    sizes = [len(segment_voxels_ras(node, segmentation.GetNthSegmentID(i))) for i in range(4)]
    assert sizes == [int((labels == v).sum()) for v in (1, 2, 3, 4)] and sizes[2] == 0
    assert segmentation.GetNumberOfLayers() == 1  # one shared labelmap, as Segment Editor expects
    assert not segmentation.ContainsRepresentation("Closed surface")


def test_failed_import_adds_nothing(mrml_scene, tmp_path, spec_path):
    write_lps_nrrd(tmp_path / "in.nrrd")
    volume = load_volume(mrml_scene, tmp_path / "in.nrrd", "bad import")
    labels = sitk.Image(SIZE_IJK, sitk.sitkUInt8)
    labels.CopyInformation(sitk.ReadImage(str(tmp_path / "in.nrrd")))
    labels[5, 5, 5] = 1
    write_seg_nrrd(labels, load_spec(spec_path), tmp_path / "result.seg.nrrd")
    whole = (tmp_path / "result.seg.nrrd").read_bytes()
    (tmp_path / "result.seg.nrrd").write_bytes(whole[:-40])  # truncated: Slicer's ITK reader would abort here
    before = node_ids(mrml_scene)
    with pytest.raises(UXNetError) as caught:
        make_logic().importResult(tmp_path, load_spec(spec_path), volume, None, SegmentationParameters())
    assert "could not be read" in str(caught.value) and "\n" not in str(caught.value)
    assert node_ids(mrml_scene) == before


CHILD_SCRIPT = textwrap.dedent("""
    import json, subprocess, sys, time
    print(json.dumps({"stage": "inference", "fraction": 0.25, "detail": "window 1/4"}), flush=True)
    print("plain output", flush=True)
    if sys.argv[1] == "fail":
        print("a warning first", file=sys.stderr)
        print("error: model spec x.json has no 'labels'; see README 'Custom models'", file=sys.stderr)
        sys.exit(1)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(json.dumps({"grandchild": grandchild.pid}), flush=True)
    time.sleep(120)
""")


def _drain(runner: ProcessRunner, until, timeout: float = 30.0):
    events, deadline = [], time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, events
        events += runner.poll()
        time.sleep(0.01)
    return events


def test_process_runner_streams_progress_and_keeps_the_error_line(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    runner = ProcessRunner([sys.executable, str(script), "fail"])
    runner.start()
    events = _drain(runner, lambda e: runner.finished)
    events += runner.poll()
    assert ProgressEvent("inference", 0.25, "window 1/4") in events
    assert LogLine("stdout", "plain output") in events
    assert runner.returncode == 1
    assert runner.failureMessage() == "model spec x.json has no 'labels'; see README 'Custom models'"


def test_kill_takes_the_whole_process_tree(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    runner = ProcessRunner([sys.executable, str(script), "hang"])
    runner.start()
    events = _drain(runner, lambda e: any(isinstance(x, LogLine) and "grandchild" in x.text for x in e))
    grandchild = json.loads(next(x.text for x in events if isinstance(x, LogLine) and "grandchild" in x.text))
    assert psutil.pid_exists(grandchild["grandchild"])
    runner.kill()
    time.sleep(0.2)
    for pid in (runner.pid, grandchild["grandchild"]):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert runner.finished


def test_child_environment_leaves_the_parent_alone():
    parent = dict(os.environ)
    env = SegmentationLogic(extraEnvironment={"OMP_NUM_THREADS": "1"}).childEnvironment()
    assert dict(os.environ) == parent
    for key, value in CHILD_ENVIRONMENT.items():
        assert env[key] == value
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(MODULE_DIR)


def test_command_line_is_the_engine_cli(tmp_path, params):
    cmd = make_logic().buildCommand(tmp_path / "in.nrrd", tmp_path / "out.seg.nrrd", params)
    assert cmd[:4] == [sys.executable, "-m", "UXNetSegmentLib", "segment"]
    assert cmd[cmd.index("-o") + 1] == str(tmp_path / "out.seg.nrrd")
    assert cmd[-2:] == ["--progress", "json"]
    parsed = __import__("UXNetSegmentLib.cli", fromlist=["build_parser"]).build_parser().parse_args(cmd[3:])
    assert parsed.weights == params.weightsPath and parsed.spec == params.specPath and parsed.device == "cpu"


def test_parameters_validate_with_one_line_reasons(tmp_path):
    assert SegmentationParameters(model="flare2021").isValid() == (True, "")
    cases = [SegmentationParameters(), SegmentationParameters(model="m", device="tpu"),
             SegmentationParameters(model="m", overlap=1.0), SegmentationParameters(model="m", weightsPath="/nope.pth"),
             SegmentationParameters(model="m", reviewThreshold=1.5),
             SegmentationParameters(weightsPath=str(CHECKPOINT))]
    for case in cases:
        ok, reason = case.isValid()
        assert not ok and reason and "\n" not in reason and ";" in reason  # problem; fix
    args = SegmentationParameters(model="amos2022", device="cuda", overlap=0.25, fast=True, tta=True).asArgList()
    assert args == ["--model", "amos2022", "--device", "cuda", "--overlap", "0.25", "--fast", "--tta"]


def test_invalid_inputs_are_refused_before_any_process(mrml_scene):
    logic = make_logic()
    with pytest.raises(UXNetError, match="no input volume"):
        logic.start(None, SegmentationParameters(model="flare2021"))
    label = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    with pytest.raises(UXNetError, match="not a grey-scale volume"):
        logic.start(label, SegmentationParameters(model="flare2021"))


def test_progress_line_parsing():
    assert parseProgressLine('{"stage": "inference", "fraction": 0.5, "detail": "window 3/6"}') == \
        ProgressEvent("inference", 0.5, "window 3/6")
    assert parseProgressLine('{"stage": "x", "fraction": 7}') == ProgressEvent("x", 1.0, "")
    for text in ("plain", "{not json}", '{"stage": "x"}', "[1, 2]"):
        assert parseProgressLine(text) is None


def test_install_logic_protects_slicer_packages(tmp_path):
    constraints = InstallLogic.constraints()
    assert f"numpy=={np.__version__}" in constraints
    assert any(c.lower().startswith("simpleitk==") for c in constraints)
    logic = InstallLogic(requirements=[Requirement("monai", "monai==1.6.1"),
                                       Requirement("no_such_module_uxnet", "no-such-module-uxnet==1.0")])
    assert [r.importName for r in logic.missing()] == ["no_such_module_uxnet"]  # torch, monai present here
    args = logic.pipArguments(logic.missing(), str(tmp_path / "c.txt"))
    assert args == ["no-such-module-uxnet==1.0", "--constraint", str(tmp_path / "c.txt")]
    asked = []
    with pytest.raises(UXNetError, match="not installed"):
        logic.ensure(lambda text: asked.append(text) or False)
    assert len(asked) == 1 and "no-such-module-uxnet==1.0" in asked[0] and "numpy" in asked[0]
    assert InstallLogic().ensure(lambda text: pytest.fail("nothing to install here"))
    for req in InstallLogic().requirements:
        assert "==" in req.pipSpec and not req.pipSpec.lower().startswith(("numpy", "simpleitk", "requests"))


def test_device_query_runs_in_the_engine_interpreter():
    task = make_logic().startDeviceQuery()
    task.wait(timeout=120)
    gpus = parseDeviceQuery(task.stdout)
    assert gpus == {} or set(gpus) == {"cuda"}
    assert parseDeviceQuery(['{"cuda": "NVIDIA H100 (80 GB)"}']) == {"cuda": "NVIDIA H100 (80 GB)"}
    assert DEVICE_QUERY_SCRIPT.startswith("import json, torch")


def test_engine_warnings_go_to_the_log_not_the_progress_bar():
    script = ("import json\n"
              "print(json.dumps({'stage': 'load', 'fraction': 1.0, 'detail': 'CPU'}))\n"
              "print(json.dumps({'stage': 'warning', 'fraction': 0.0, 'detail': 'GPU out of memory; using the CPU'}))\n"
              "print(json.dumps({'stage': 'inference', 'fraction': 0.5, 'detail': 'window 1/2'}))\n")
    events, lines = [], []
    task = make_logic().startCommand(["-c", script], progressCallback=lambda *e: events.append(e),
                                     logCallback=lines.append)
    task.wait(timeout=60)
    assert events == [("load", 1.0, "CPU"), ("inference", 0.5, "window 1/2")]
    assert "Warning: GPU out of memory; using the CPU" in lines


def test_panel_texts_from_the_catalogue():
    from UXNetSegmentLib.catalogue import get_model
    from UXNetSegmentSlicer import PanelText

    assert PanelText.progressText("inference", 0.42, "window 5/12") == "Running the network: window 5/12 (42%)"
    assert PanelText.progressText("somethingnew", 1.0) == "Somethingnew (100%)"
    flare = get_model("flare2021")
    info = PanelText.modelInfoHtml(flare)
    assert "<b>Modality:</b> CT" in info and "4 pancreas" in info and "1 x 1 x 1.2 mm" in info
    status = PanelText.weightsStatus(flare)
    assert status.startswith("present") if flare.weights_path() else status.startswith("missing: click Download")
    assert PanelText.weightsStatus(flare, "/some/where/my.pth") == "local file my.pth"
    assert PanelText.deviceText({"cuda": "NVIDIA H100 (80 GB)"}, True) == "GPU: NVIDIA H100 (80 GB)"
    assert "PyTorch" in PanelText.deviceText({}, False)
    from UXNetSegmentSlicer.CompareLogic import ReviewRow

    rows = [ReviewRow("Segment_2", "spleen", 0.41234, 0.125), ReviewRow("Segment_1", "liver", 0.05, None)]
    assert PanelText.reviewTableCells(rows) == [["spleen", "0.412", "12.5 %"], ["liver", "0.050", "-"]]


DEMO_WEIGHTS = REPO / "Resources" / "Weights" / "demo_brain.pth"
SAMPLE = REPO / "Resources" / "SampleData" / "colin27_t1_2mm.nrrd"


@pytest.mark.skipif(not DEMO_WEIGHTS.is_file(), reason="bundled demo_brain weights not built yet")
def test_bundled_demo_model_on_the_bundled_sample(mrml_scene):
    """What the in-Slicer self-test does first, here headless: demo_brain on the Colin27 sample."""
    volume = load_volume(mrml_scene, SAMPLE, "Colin27 T1")
    result = make_logic().segmentBlocking(volume, SegmentationParameters(model="demo_brain", device="cpu",
                                                                         show3D=False), timeout=900)
    segmentation = result.segmentationNode.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["cerebrospinal fluid", "grey matter", "white matter"]
    sizes = [len(segment_voxels_ras(result.segmentationNode, segmentation.GetNthSegmentID(i))) for i in range(3)]
    brain = int((slicer.util.arrayFromVolume(volume) > 0).sum())
    assert all(s > 0 for s in sizes) and sum(sizes) <= brain * 1.2
