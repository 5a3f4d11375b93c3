"""``uxnet-segment``: the command-line face of the engine (also what the Slicer module runs).

Every failure prints one line ``error: ...`` on stderr and exits non-zero; ``--debug`` adds the traceback.
"""
import argparse
import os
import sys
import traceback
from typing import List, Optional

from .errors import Cancelled, UXNetError


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment a volume (NRRD, NIfTI, MHA, DICOM folder)")
    p.add_argument("input", help="input volume file or DICOM folder")
    p.add_argument("-o", "--output", required=True,
                   help="output .seg.nrrd (Slicer segmentation) or labelmap .nii.gz/.nii/.nrrd/.mha")
    p.add_argument("--model", help="catalogue model name (default: the first with weights present)")
    p.add_argument("--weights", help="local checkpoint (.pth state_dict) instead of the catalogue file")
    p.add_argument("--spec", help="model spec JSON for a custom checkpoint")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1) (default: the model's)")
    p.add_argument("--fast", action="store_true", help="reduced precision (bf16/fp16): faster, not bit-exact")
    p.add_argument("--uncertainty", metavar="FILE", help="also write a per-voxel uncertainty volume")
    p.add_argument("--tta", action="store_true", help="test-time augmentation with flips")
    p.add_argument("--snapshot", metavar="FILE.png",
                   help="also render an overlay montage PNG (with --uncertainty also X-uncertainty.png, a heat map)")
    p.add_argument("--progress", default="bar", choices=["bar", "json", "none"])
    p.set_defaults(func=_run_segment)


def _run_segment(args) -> None:
    from .lean_import import import_monai_lean
    import_monai_lean()  # before the engine imports MONAI: about 130 MiB less resident while segmenting
    from . import api
    args.progress_printer = _progress(args.progress)
    api.segment_file(args.input, args.output, model=args.model, weights=args.weights, spec=args.spec,
                     device=args.device, overlap=args.overlap, fast=args.fast,
                     uncertainty_path=args.uncertainty, tta=args.tta, snapshot_path=args.snapshot,
                     progress=args.progress_printer)


def _progress(kind: str):
    from .progress import json_lines_printer, tqdm_printer
    return {"bar": tqdm_printer, "json": json_lines_printer, "none": lambda: None}[kind]()


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list catalogue models and whether their weights are present")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run_models)


def _run_models(args) -> None:
    import json
    from .catalogue import list_models
    rows = []
    for m in list_models():
        path = m.weights_path()
        rows.append({"name": m.name, "modality": m.modality, "classes": len(m.labels), "title": m.title,
                     "weights": str(path) if path else None, "bundled": m.bundled})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'name':<12} {'modality':<8} {'labels':>6}  {'weights':<10} title")
    for r in rows:
        state = "bundled" if r["bundled"] else ("present" if r["weights"] else "missing")
        print(f"{r['name']:<12} {r['modality']:<8} {r['classes']:>6}  {state:<10} {r['title']}")


def _add_download(sub) -> None:
    p = sub.add_parser("download", help="download a catalogue model's weights into the cache")
    p.add_argument("name")
    p.add_argument("--progress", default="bar", choices=["bar", "json", "none"])
    p.set_defaults(func=_run_download)


def _run_download(args) -> None:
    from .catalogue import get_model
    from .download import fetch_weights
    path = fetch_weights(get_model(args.name), progress=_progress(args.progress))
    print(path)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare with a reference segmentation: Dice, HD95, MSD, volumes")
    p.add_argument("prediction", help="predicted segmentation (.seg.nrrd or labelmap + .labels.json)")
    p.add_argument("reference", help="reference segmentation; resampled onto the prediction's grid if needed")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.add_argument("--plot", metavar="FILE.png", help="also write a bar chart of Dice and HD95 per segment")
    p.add_argument("--overlay", metavar="FILE.png", help="also write a montage: prediction filled, reference outlined")
    p.add_argument("--volume", metavar="VOLUME", help="the image to draw the --overlay on")

    def run(args) -> None:
        from .compare import run_compare_command
        run_compare_command(args)
    p.set_defaults(func=run)


# Each entry adds one sub-command. Keep one function per command.
COMMANDS = [_add_segment, _add_models, _add_download, _add_compare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uxnet-segment", description="3D UX-Net segmentation engine")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _failure(exc: BaseException, debug: bool) -> int:
    """Print the one-line ``error:`` message for ``exc`` and return the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        message, code = "interrupted; nothing was written", 130
    elif isinstance(exc, UXNetError):
        message, code = str(exc), 130 if isinstance(exc, Cancelled) else 1
    else:
        message, code = f"unexpected {type(exc).__name__}: {exc} (rerun with --debug and report it)", 1
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code


def _restart_with_heap_settings() -> None:
    """Start ``segment`` again with the glibc settings that are read only at start-up (see
    ``allocator.restart_command``); returns (and runs with glibc's defaults) where they are set already,
    where the C library is not glibc, or if the restart fails."""
    from .allocator import restart_command
    restart = restart_command(sys.argv[1:])
    if restart is None:
        return
    command, env = restart
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(command[0], command, env)
    except OSError:
        pass


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command == "segment":  # run as a program, not called from Python
        _restart_with_heap_settings()
    try:
        args.func(args)
        return 0
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure becomes one line
        printer = getattr(args, "progress_printer", None)
        if hasattr(printer, "close"):
            printer.close()  # a half-drawn bar would swallow the error line
        return _failure(exc, args.debug)


if __name__ == "__main__":
    sys.exit(main())
