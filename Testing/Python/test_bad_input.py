"""Every bad input is refused with one line naming the problem and the fix, and leaves no output."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from engine_helpers import REPO, save_tiny_checkpoint, synthetic_ct, tiny_spec
from UXNetSegmentLib.cli import main

SPEC_JSON = """{"name": "tiny", "labels": {"1": "liver", "2": "kidney", "3": "spleen", "4": "pancreas"},
 "spacing": null, "intensity_window": [-125, 275], "roi_size": [32, 32, 32], "overlap": 0.25}"""


@pytest.fixture
def work(tmp_path):
    save_tiny_checkpoint(tmp_path / "tiny.pth")
    (tmp_path / "tiny.json").write_text(SPEC_JSON)
    sitk.WriteImage(synthetic_ct(size=(24, 20, 16)), str(tmp_path / "ct.nrrd"))
    return tmp_path


def run_cli(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def refused(capsys, work, args, *words, output="out.seg.nrrd"):
    """Run the CLI; assert a non-zero exit, exactly one `error:` line containing ``words``, and no output."""
    out = work / output
    code, err = run_cli(capsys, ["segment", *args, "-o", str(out), "--progress", "none"])
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word.lower() in err[0].lower(), err[0]
    assert not out.exists()
    assert not [p for p in work.iterdir() if ".part" in p.name]
    return err[0]


def custom(work):
    return ["--weights", str(work / "tiny.pth"), "--spec", str(work / "tiny.json")]


def test_missing_input(capsys, work):
    refused(capsys, work, [str(work / "nope.nrrd"), *custom(work)], "does not exist")


def test_2d_image(capsys, work):
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(work / "slice.nrrd"))
    refused(capsys, work, [str(work / "slice.nrrd"), *custom(work)], "not a 3d volume")


def test_rgb_image(capsys, work):
    sitk.WriteImage(sitk.Image([16, 16, 8], sitk.sitkVectorUInt8, 3), str(work / "rgb.nrrd"))
    refused(capsys, work, [str(work / "rgb.nrrd"), *custom(work)], "rgb", "grey")


def test_4d_series(capsys, work):
    sitk.WriteImage(sitk.Image([16, 16, 8, 5], sitk.sitkFloat32), str(work / "series.nii.gz"))
    msg = refused(capsys, work, [str(work / "series.nii.gz"), *custom(work)], "4d", "5 frames", "frame")
    assert "one 3d volume" in msg.lower()


def test_all_nan_volume(capsys, work):
    image = sitk.GetImageFromArray(np.full((8, 16, 16), np.nan, np.float32))
    sitk.WriteImage(image, str(work / "nan.nrrd"))
    refused(capsys, work, [str(work / "nan.nrrd"), *custom(work)], "nan")


def test_not_an_image(capsys, work):
    (work / "notes.nrrd").write_text("this is not an image\n")
    refused(capsys, work, [str(work / "notes.nrrd"), *custom(work)], "not an image")


def test_truncated_checkpoint(capsys, work):
    data = (work / "tiny.pth").read_bytes()
    (work / "cut.pth").write_bytes(data[: len(data) // 2])
    refused(capsys, work, [str(work / "ct.nrrd"), "--weights", str(work / "cut.pth"), "--spec",
                           str(work / "tiny.json")], "truncated")


def test_other_architecture(capsys, work):
    torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), work / "other.pth")
    refused(capsys, work, [str(work / "ct.nrrd"), "--weights", str(work / "other.pth"), "--spec",
                           str(work / "tiny.json")], "not a 3d ux-net")


def test_other_class_count(capsys, work):
    save_tiny_checkpoint(work / "three.pth", out_chans=3)
    refused(capsys, work, [str(work / "ct.nrrd"), "--weights", str(work / "three.pth"), "--spec",
                           str(work / "tiny.json")], "3 classes", "5")


def test_mismatched_keys_are_named(capsys, work):
    state = torch.load(work / "tiny.pth", weights_only=True)
    state["extra.weight"] = torch.zeros(3)
    del state["decoder1.layer.conv2.conv.weight"]
    torch.save(state, work / "edited.pth")
    msg = refused(capsys, work, [str(work / "ct.nrrd"), "--weights", str(work / "edited.pth"), "--spec",
                                 str(work / "tiny.json")], "decoder1.layer.conv2.conv.weight", "extra.weight")
    assert "missing" in msg and "unexpected" in msg


class _Exploit:
    """Unpickling this would create a marker file, were pickled code ever run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_never_runs(capsys, work):
    marker = work / "pwned"
    with open(work / "evil.pth", "wb") as fh:
        pickle.dump({"uxnet_3d.norm0.weight": _Exploit(marker)}, fh)
    torch.save({"payload": _Exploit(marker)}, work / "evil_zip.pth")
    for name in ("evil.pth", "evil_zip.pth"):
        refused(capsys, work, [str(work / "ct.nrrd"), "--weights", str(work / name), "--spec",
                               str(work / "tiny.json")], "refused")
    assert not marker.exists()


def test_unknown_model(capsys, work):
    refused(capsys, work, [str(work / "ct.nrrd"), "--model", "brainz"], "unknown model", "flare2021")


def test_unwritable_output(capsys, work):
    # /proc refuses new files even for root, so this holds in CI too.
    code, err = run_cli(capsys, ["segment", str(work / "ct.nrrd"), *custom(work), "-o", "/proc/out.seg.nrrd",
                                 "--progress", "none"])
    assert code != 0 and len(err) == 1 and "not writable" in err[0]
    code, err = run_cli(capsys, ["segment", str(work / "ct.nrrd"), *custom(work), "-o",
                                 str(work / "missing" / "out.seg.nrrd"), "--progress", "none"])
    assert code != 0 and len(err) == 1 and "does not exist" in err[0]


def test_unknown_output_type(capsys, work):
    refused(capsys, work, [str(work / "ct.nrrd"), *custom(work)], "unknown type", output="out.png")


def test_bad_overlap(capsys, work):
    refused(capsys, work, [str(work / "ct.nrrd"), *custom(work), "--overlap", "1.5"], "overlap")


def test_weights_without_spec(capsys, work):
    refused(capsys, work, [str(work / "ct.nrrd"), "--weights", str(work / "tiny.pth")], "--spec")


def test_existing_output_untouched_on_failure(capsys, work):
    out = work / "out.seg.nrrd"
    out.write_bytes(b"precious")
    code, _ = run_cli(capsys, ["segment", str(work / "nope.nrrd"), *custom(work), "-o", str(out)])
    assert code != 0 and out.read_bytes() == b"precious"


def test_real_process_exit_code_and_no_traceback(work):
    env = dict(os.environ, PYTHONPATH=str(REPO / "UXNetSegment"))
    proc = subprocess.run([sys.executable, "-m", "UXNetSegmentLib", "segment", str(work / "nope.nrrd"),
                           "-o", str(work / "o.seg.nrrd")], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "UXNetSegmentLib", "--debug", "segment", str(work / "nope.nrrd"),
                            "-o", str(work / "o.seg.nrrd")], capture_output=True, text=True, env=env)
    assert "Traceback" in debug.stderr


def test_random_bytes_checkpoint(capsys, work):
    (work / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    refused(capsys, work, [str(work / "ct.nrrd"), "--weights", str(work / "noise.pth"), "--spec",
                           str(work / "tiny.json")], "damaged")
