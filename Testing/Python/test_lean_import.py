"""The segment command imports MONAI without the optional packages it would load for nothing."""
import json
import subprocess
import sys

import SimpleITK as sitk

from engine_helpers import REPO, save_tiny_checkpoint, synthetic_ct

SPEC = {"name": "tiny", "labels": {"1": "liver", "2": "kidney", "3": "spleen", "4": "pancreas"},
        "spacing": [2.0, 2.0, 2.5], "intensity_window": [-125, 275], "roi_size": [32, 32, 32],
        "overlap": 0.25, "modality": "CT"}


def run_python(code: str) -> list:
    env_path = str(REPO / "UXNetSegment")
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r})\n" + code],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_segment_command_runs_without_monais_unused_extras(tmp_path):
    sitk.WriteImage(synthetic_ct(), str(tmp_path / "ct.nrrd"))
    weights = save_tiny_checkpoint(tmp_path / "tiny.pth")
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    args = ["segment", str(tmp_path / "ct.nrrd"), "-o", str(tmp_path / "out.nii.gz"), "--weights", str(weights),
            "--spec", str(tmp_path / "spec.json"), "--device", "cpu", "--progress", "none"]
    code, loaded, matplotlib_ok = run_python(
        "import json\nfrom UXNetSegmentLib import cli\nfrom UXNetSegmentLib.lean_import import NOT_NEEDED\n"
        f"code = cli.main({args!r})\nloaded = [m for m in NOT_NEEDED if m in sys.modules]\n"
        "import matplotlib.figure\nprint(json.dumps([code, loaded, True]))")
    assert code == 0 and (tmp_path / "out.nii.gz").exists()
    assert loaded == []                 # none of them was imported for the segmentation...
    assert matplotlib_ok                # ...and they are importable afterwards (the snapshot's matplotlib)


def test_lean_import_leaves_an_imported_monai_alone():
    again, scipy_loaded = run_python(
        "import json, monai\nfrom UXNetSegmentLib.lean_import import import_monai_lean\n"
        "print(json.dumps([import_monai_lean(), 'scipy' in sys.modules]))")
    assert again is False and scipy_loaded  # a plain ``import monai`` loaded SciPy, and it stays
