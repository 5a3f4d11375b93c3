"""The words the panel shows: model summary, weights state, progress and device lines (no Qt here)."""
import html
from pathlib import Path
from typing import Dict, List, Optional

from UXNetSegmentLib.catalogue import ModelSpec

STAGE_NAMES = {
    "load": "Loading the model",
    "read": "Reading the volume",
    "preprocess": "Preprocessing",
    "compile": "Compiling the network (first run only)",
    "inference": "Running the network",
    "postprocess": "Mapping back to the input grid",
    "write": "Writing the result",
    "import": "Loading into the scene",
    "download": "Downloading weights",
}


def stageTitle(stage: str) -> str:
    return STAGE_NAMES.get(stage, stage[:1].upper() + stage[1:])


def progressText(stage: str, fraction: float, detail: str = "") -> str:
    """``"Running the network: window 5/12 (42%)"`` for a JSON progress event of the engine."""
    text = f"{stageTitle(stage)}: {detail}" if detail else stageTitle(stage)
    return f"{text} ({100 * fraction:.0f}%)"


def modelInfoHtml(spec: ModelSpec) -> str:
    """Description, expected modality and the label list of ``spec`` as rich text for a QLabel."""
    labels = ", ".join(f"{value} {html.escape(label.name)}" for value, label in sorted(spec.labels.items()))
    parts = [f"<b>{html.escape(spec.title or spec.name)}</b>"]
    if spec.description:
        parts.append(html.escape(spec.description))
    spacing = "native" if spec.spacing is None else " x ".join(f"{s:g}" for s in spec.spacing) + " mm"
    parts.append(f"<b>Modality:</b> {html.escape(spec.modality)} &nbsp; <b>Resampled to:</b> {spacing}")
    parts.append(f"<b>Labels:</b> {labels}")
    return "<br>".join(parts)


def weightsStatus(spec: ModelSpec, localFile: str = "") -> str:
    """One short line: where the weights come from, or that they are missing and how to get them."""
    if localFile:
        return f"local file {Path(localFile).name}"
    path = spec.weights_path()
    if path is not None:
        return "bundled with the extension" if spec.bundled else f"present ({path.name})"
    if spec.weights_url:
        return "missing: click Download, or Use local file..."
    return "missing: choose a local file"


def deviceText(gpus: Dict[str, str], torchPresent: bool) -> str:
    """The line under the device selector."""
    if not torchPresent:
        return "GPU: unknown until PyTorch is installed (it is installed on the first Segment)"
    if gpus.get("cuda"):
        return f"GPU: {gpus['cuda']}"
    return "GPU: none found; Auto runs on the CPU"


def resultSummary(segmentName: str, seconds: float, uncertaintyName: Optional[str] = None) -> str:
    extra = f" and '{uncertaintyName}'" if uncertaintyName else ""
    return f"Done in {seconds:.1f} s: result in '{segmentName}'{extra}."


def reviewTableCells(rows) -> List[List[str]]:
    """The review list's cells for :class:`CompareLogic.ReviewRow` rows: name, score, share above threshold."""
    return [[row.name, f"{row.score:.3f}", "-" if row.share is None else f"{100 * row.share:.1f} %"] for row in rows]
