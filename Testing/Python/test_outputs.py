"""Outputs: .seg.nrrd read by slicerio and by real slicer-core, labelmaps with sidecars, atomic writes."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest_slicer import slicer_app  # noqa: F401 (fixture: headless Slicer logics)
from engine_helpers import rotation_direction, save_tiny_checkpoint, synthetic_ct
from UXNetSegmentLib.catalogue import get_model, spec_from_dict
from UXNetSegmentLib.cli import main
from UXNetSegmentLib.imageio import sidecar_path, write_output

SPEC = {"name": "tiny", "labels": {"1": "liver", "2": "kidney", "3": "spleen", "4": "pancreas"},
        "spacing": [1.5, 1.5, 2.0], "intensity_window": [-125, 275], "roi_size": [32, 32, 32], "overlap": 0.25}


def oblique_labels():
    """Labels 1 and 3 present, 2 and 4 empty, on an oblique anisotropic grid."""
    image = synthetic_ct(size=(20, 16, 12), spacing=(0.7, 1.2, 2.5), direction=rotation_direction(30, axis=1))
    arr = np.zeros((12, 16, 20), np.uint8)
    arr[2:6, 3:9, 4:12] = 1
    arr[7:10, 10:14, 2:5] = 3
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(image)
    return labels, arr


def test_seg_nrrd_with_slicerio(tmp_path):
    import slicerio
    labels, arr = oblique_labels()
    spec = get_model("flare2021")
    write_output(labels, spec, tmp_path / "out.seg.nrrd")
    seg = slicerio.read_segmentation(str(tmp_path / "out.seg.nrrd"))
    names = [s["name"] for s in seg["segments"]]
    assert names == ["liver", "kidney", "spleen", "pancreas"]  # every label, empty ones too
    assert [s["labelValue"] for s in seg["segments"]] == [1, 2, 3, 4]
    liver = seg["segments"][0]
    assert liver["terminology"]["type"][1] == "10200004" and liver["terminology"]["category"][1] == "123037004"
    assert np.allclose(liver["color"], np.array(spec.labels[1].color) / 255.0, atol=1e-3)
    assert np.array_equal(seg["voxels"], arr.transpose(2, 1, 0))
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    expected = np.eye(4)
    expected[:3, :3] = direction * np.array(labels.GetSpacing())
    expected[:3, 3] = labels.GetOrigin()
    assert np.allclose(seg["ijkToLPS"], expected, atol=1e-4)


def test_seg_nrrd_in_real_slicer_segmentation_node(tmp_path, slicer_app):
    import slicer
    from vtk.util.numpy_support import vtk_to_numpy
    labels, arr = oblique_labels()
    spec = get_model("flare2021")
    path = tmp_path / "out.seg.nrrd"
    write_output(labels, spec, path)
    node = slicer_app.segmentations.LoadSegmentationFromFile(str(path), False, "result")
    try:
        segmentation = node.GetSegmentation()
        assert segmentation.GetNumberOfSegments() == 4
        seen = {}
        for i in range(4):
            segment = segmentation.GetNthSegment(i)
            seen[segment.GetName()] = segment
        assert set(seen) == {"liver", "kidney", "spleen", "pancreas"}
        assert "10200004" in seen["liver"].GetTerminology()
        # The liver's voxels sit at the same physical points as in our labelmap.
        ras_pts = []
        for k, j, i in np.argwhere(arr == 1)[::7]:
            lps = labels.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
            ras_pts.append((-lps[0], -lps[1], lps[2]))
        oriented = slicer.vtkOrientedImageData()
        node.GetBinaryLabelmapRepresentation(segmentation.GetSegmentIdBySegmentName("liver"), oriented)
        dims = oriented.GetDimensions()
        mask = vtk_to_numpy(oriented.GetPointData().GetScalars()).reshape(dims[::-1])
        assert mask.sum() > 0 and np.count_nonzero(mask) == np.count_nonzero(arr == 1)
        world_to_ijk = np.linalg.inv(slicer.util.arrayFromVTKMatrix(_image_to_world(oriented)))
        extent = oriented.GetExtent()
        for p in ras_pts:
            i, j, k = np.round(world_to_ijk @ np.array([*p, 1.0]))[:3].astype(int)
            assert mask[k - extent[4], j - extent[2], i - extent[0]] != 0
    finally:
        slicer_app.scene.RemoveNode(node)


def _image_to_world(oriented):
    import vtk
    m = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(m)
    return m


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_labelmaps_with_sidecar(tmp_path, suffix):
    labels, arr = oblique_labels()
    spec = spec_from_dict(SPEC)
    path = write_output(labels, spec, tmp_path / f"labels{suffix}")
    back = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    assert np.allclose(back.GetDirection(), labels.GetDirection(), atol=1e-5)
    assert np.allclose(back.GetOrigin(), labels.GetOrigin(), atol=1e-4)
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["labels"] == {"1": "liver", "2": "kidney", "3": "spleen", "4": "pancreas"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, sidecar_path(path).name])


def test_cli_end_to_end_with_json_progress(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path / "tiny.pth")
    (tmp_path / "tiny.json").write_text(json.dumps(SPEC))
    image = synthetic_ct(direction=rotation_direction(15))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "seg.seg.nrrd"
    code = main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(out), "--weights", str(tmp_path / "tiny.pth"),
                 "--spec", str(tmp_path / "tiny.json"), "--progress", "json", "--uncertainty",
                 str(tmp_path / "unc.nrrd"), "--device", "cpu", "--snapshot", str(tmp_path / "seg.png")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert {e["stage"] for e in events} >= {"load", "preprocess", "inference", "postprocess", "write"}
    assert all(0.0 <= e["fraction"] <= 1.0 for e in events)
    assert out.is_file() and (tmp_path / "unc.nrrd").is_file()
    unc = sitk.ReadImage(str(tmp_path / "unc.nrrd"))
    assert unc.GetSize() == image.GetSize()
    # --snapshot with --uncertainty: the label montage and, beside it, the uncertainty heat montage
    assert (tmp_path / "seg.png").stat().st_size > 10_000 and (tmp_path / "seg-uncertainty.png").stat().st_size > 10_000


def test_models_command_lists_catalogue(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("flare2021", "amos2022", "feta2021"):
        assert name in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["classes"] for r in rows}["amos2022"] == 15
