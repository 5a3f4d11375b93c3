"""The PNG montage renderer on real volumes: colours, fill/outline mode, orientation, errors."""
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from UXNetSegmentLib.errors import UXNetError
from UXNetSegmentLib.snapshot import FILL_ALPHA, HEAT_FLOOR, compose_panels, heat_rgba, render_montage

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "colin27_t1_2mm.nrrd"
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _ct_chest() -> sitk.Image:
    import slicerio
    return sitk.ReadImage(str(Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"), sitk.sitkFloat32)


def _labels_like(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(image)
    return out


def _read_png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg
    rgba = mpimg.imread(str(path))
    return np.rint(rgba[..., :3] * 255).astype(np.int32)


def _count(rgb: np.ndarray, colour) -> int:
    return int(np.all(rgb == np.array(colour), axis=-1).sum())


def _panels_area(rgb: np.ndarray) -> np.ndarray:
    """The image without the bottom legend strip (the legend swatches carry the exact colours too)."""
    return rgb[: int(rgb.shape[0] * 0.9)]


@pytest.fixture(scope="module")
def chest():
    ct = _ct_chest()
    hu = sitk.GetArrayFromImage(ct)
    labels = np.zeros(hu.shape, np.uint8)
    labels[(hu > -950) & (hu < -500)] = 1  # lung parenchyma
    labels[hu > 250] = 2                   # bone
    return ct, _labels_like(ct, labels)


def test_montage_shows_label_colours_and_legend(chest, tmp_path):
    ct, labels = chest
    info = {1: ("lung", RED), 2: ("bone", BLUE)}
    path = render_montage(ct, tmp_path / "chest.png", labels=labels, label_info=info, title="CTChest4")
    assert path == tmp_path / "chest.png" and path.is_file()
    assert 20_000 < path.stat().st_size < 3_000_000
    rgb = _read_png(path)
    assert 800 <= rgb.shape[1] <= 1600 and 900 <= rgb.shape[0] <= 1700
    panels = _panels_area(rgb)
    assert _count(panels, RED) > 200 and _count(panels, BLUE) > 200
    legend = rgb[int(rgb.shape[0] * 0.9):]
    assert _count(legend, RED) > 20 and _count(legend, BLUE) > 20
    assert [p.name for p in tmp_path.iterdir()] == ["chest.png"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    plain = _read_png(render_montage(ct, tmp_path / "plain.png"))
    assert _count(plain, RED) == 0 and _count(plain, BLUE) == 0


def test_fill_with_reference_outline_shows_both(chest, tmp_path):
    ct, labels = chest
    lung = sitk.BinaryThreshold(labels, 1, 1, 1, 0)
    reference = sitk.BinaryErode(lung, [3, 3, 1])  # a different, smaller "reference"
    path = render_montage(ct, tmp_path / "cmp.png", labels=lung, label_info={1: ("lung", RED)},
                          outline_labels=reference)
    panels = _panels_area(_read_png(path))
    assert _count(panels, RED) > 200  # reference outlines, drawn in the pure colour
    r, g, b = panels[..., 0], panels[..., 1], panels[..., 2]
    blended = (np.abs(r - g - FILL_ALPHA * 255) <= 2) & (np.abs(g - b) <= 1)  # grey*(1-a) + red*a
    assert int(blended.sum()) > 2000


def test_heat_map_is_drawn_where_uncertain_and_clear_where_certain(chest, tmp_path):
    ct, labels = chest
    hu = sitk.GetArrayFromImage(ct)
    heat = np.zeros(hu.shape, np.float32)
    heat[:, 40:90, 40:90] = 1.0  # an "uncertain" block through every slice
    heat_image = sitk.GetImageFromArray(heat)
    heat_image.CopyInformation(ct)
    plain = compose_panels(ct, labels)
    hot = compose_panels(ct, labels, heat=heat_image)
    changed = bright = total = 0
    for row_a, row_b in zip(plain.panels, hot.panels):
        for pa, pb in zip(row_a, row_b):
            diff = np.abs(pa.rgb - pb.rgb).max(axis=-1) > 1e-6
            changed += int(diff.sum())
            total += diff.size
            # where drawn, the pixel moved towards inferno's bright yellow: red and green above blue
            moved = pb.rgb[diff]
            bright += int(((moved[:, 0] > moved[:, 2]) & (moved[:, 1] > moved[:, 2])).sum())
    assert 0 < changed < 0.5 * total  # only the uncertain part is coloured
    assert bright > 0.7 * changed  # the rest: the block's interpolated edge, in inferno's darker colours
    # the colour map: clear at and below the floor, opaque-ish and yellow at 1
    rgba = heat_rgba(np.array([0.0, HEAT_FLOOR, 1.0, np.nan]))
    assert rgba[0, 3] == rgba[1, 3] == rgba[3, 3] == 0.0 and rgba[2, 3] > 0.5
    assert rgba[2, 0] > 0.9 and rgba[2, 1] > 0.9 and rgba[2, 2] < 0.8
    path = render_montage(ct, tmp_path / "heat.png", labels=labels, heat=heat_image)
    assert path.is_file()


def test_orientation_does_not_depend_on_storage():
    """The same anatomy stored LPS or flipped (RAS-like direction) renders the same panels,
    in the radiological convention: patient left on the image right."""
    lps = sitk.ReadImage(str(SAMPLE), sitk.sitkFloat32)
    direction = np.array(lps.GetDirection()).reshape(3, 3)
    arr = sitk.GetArrayFromImage(lps)
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(arr[:, ::-1, ::-1]))
    flipped.SetSpacing(lps.GetSpacing())
    flipped.SetDirection(tuple((direction @ np.diag([-1, -1, 1])).ravel()))
    flipped.SetOrigin(lps.TransformIndexToPhysicalPoint([lps.GetSize()[0] - 1, lps.GetSize()[1] - 1, 0]))

    marker = np.zeros(arr.shape, np.uint8)
    # blocks in the patient's left (LPS x > 20 mm, label 1) and right (x < -20 mm, label 2) hemispheres
    xs = np.array([lps.TransformIndexToPhysicalPoint([i, 0, 0])[0] for i in range(arr.shape[2])])
    marker[30:50, 40:60, :][:, :, xs > 20] = 1
    marker[30:50, 40:60, :][:, :, xs < -20] = 2
    info = {1: ("left", RED), 2: ("right", BLUE)}
    a = compose_panels(lps, _labels_like(lps, marker), info)
    b = compose_panels(flipped, _labels_like(flipped, np.ascontiguousarray(marker[:, ::-1, ::-1])), info)
    for row_a, row_b in zip(a.panels, b.panels):
        for pa, pb in zip(row_a, row_b):
            assert pa.view == pb.view and pa.index == pb.index
            np.testing.assert_allclose(pa.rgb, pb.rgb, atol=1e-5)
    for view in (0, 1):  # axial and coronal: patient left on the image right
        panel = a.panels[view][1].rgb
        left = np.nonzero(np.all(panel == np.array(RED) / 255.0, axis=-1))[1]
        right = np.nonzero(np.all(panel == np.array(BLUE) / 255.0, axis=-1))[1]
        assert left.size and right.size and left.min() > right.max()


def test_default_names_and_colours(chest):
    ct, labels = chest
    montage = compose_panels(ct, labels)
    assert montage.present == [1, 2]
    assert montage.info[1][0] == "label 1" and montage.info[1][1] != montage.info[2][1]
    assert [[p.view for p in row] for row in montage.panels] == [["axial"] * 3, ["coronal"] * 3, ["sagittal"] * 3]


def test_bad_inputs_fail_in_one_line(chest, tmp_path):
    ct, labels = chest
    with pytest.raises(UXNetError, match="does not exist"):
        render_montage(ct, tmp_path / "missing" / "x.png", labels=labels)
    with pytest.raises(UXNetError, match="3D"):
        render_montage(ct[:, :, 5], tmp_path / "x.png")
    far = sitk.Image(labels)
    far.SetOrigin([o + 5000.0 for o in labels.GetOrigin()])
    with pytest.raises(UXNetError, match="away from the volume"):
        render_montage(ct, tmp_path / "x.png", labels=far)
