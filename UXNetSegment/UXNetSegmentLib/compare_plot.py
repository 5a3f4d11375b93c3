"""Bar chart of a :class:`~UXNetSegmentLib.compare.ComparisonReport`: Dice per segment, HD95 beside it.

Drawn with matplotlib's Agg canvas directly (no pyplot, so no global backend is touched, which keeps it safe
inside Slicer) and written atomically: a temporary PNG in the target folder, then ``os.replace``.
"""
import math
import os
from pathlib import Path
from typing import List

from .compare import ComparisonReport
from .errors import UXNetError

DICE_COLOUR = "#3b75af"
HD_COLOUR = "#ef8636"
MISSING_COLOUR = "#b0b0b0"


def plot_report(report: ComparisonReport, path, title: str = "Prediction vs reference") -> Path:
    """Write a PNG: per segment a Dice bar (left axis, 0-1) and an HD95 bar (right axis, mm).

    A segment missing on one side has no finite HD95: its HD95 bar is drawn grey and hatched at the top of
    the axis and labelled "missing"; a segment empty on both sides is labelled "both empty".
    Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UXNetError(f"plot file {path.name} must end in .png; choose a name like compare.png")
    rows = report.rows
    if not rows:
        raise UXNetError("nothing to plot: the comparison has no segments; check the two segmentations")
    names: List[str] = [_short(r.segment or r.reference_segment) for r in rows]
    dice = [r.dice for r in rows]
    finite = [r.hd95_mm for r in rows if not math.isinf(r.hd95_mm)]
    hd_top = max(finite + [1.0]) * 1.15

    width = max(5.0, 1.0 + 0.9 * len(rows))
    fig = Figure(figsize=(width, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax2 = ax.twinx()
    xs = list(range(len(rows)))
    bar_w = 0.38
    handles = [ax.bar([x - bar_w / 2 for x in xs], dice, bar_w, color=DICE_COLOUR)]
    labels = ["Dice"]
    for x, r in zip(xs, rows):
        if math.isinf(r.hd95_mm):
            ax2.bar(x + bar_w / 2, hd_top, bar_w, color=MISSING_COLOUR, hatch="//", edgecolor="white")
            ax2.text(x + bar_w / 2, hd_top * 0.5, "missing", rotation=90, ha="center", va="center", fontsize=8)
        else:
            bars = ax2.bar(x + bar_w / 2, r.hd95_mm, bar_w, color=HD_COLOUR)
            if len(handles) == 1:
                handles.append(bars)
                labels.append("HD95 (mm)")
        if r.status == "both empty":
            ax2.text(x + bar_w / 2, hd_top * 0.5, "both empty", rotation=90, ha="center", va="center", fontsize=8)
        ax.text(x - bar_w / 2, r.dice + 0.01, f"{r.dice:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0.0, 1.1)
    ax2.set_ylim(0.0, hd_top)
    ax.set_ylabel("Dice", color=DICE_COLOUR)
    ax2.set_ylabel("HD95 (mm)", color=HD_COLOUR)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=30 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_title(title)
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0.0, 0.06, 1.0, 1.0))

    path.parent.mkdir(parents=True, exist_ok=True)
    from .imageio import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png")
    return path


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"
