"""Progress reporting and cancellation shared by the API, the CLI and the Slicer module."""
import json
import sys
import threading
from typing import Callable, Optional

from .errors import Cancelled

# A progress callback receives (stage, fraction in [0, 1], detail text).
ProgressCallback = Callable[[str, float, str], None]


class CancelToken:
    """Thread-safe flag checked between sliding windows; ``cancel()`` stops the run at the next check."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def report(callback: Optional[ProgressCallback], stage: str, fraction: float, detail: str = "") -> None:
    if callback is not None:
        callback(stage, float(fraction), detail)


def json_lines_printer(stream=None) -> ProgressCallback:
    """Progress as one JSON object per line: ``{"stage": ..., "fraction": ..., "detail": ...}``."""

    def emit(stage: str, fraction: float, detail: str = "") -> None:
        out = stream or sys.stdout
        out.write(json.dumps({"stage": stage, "fraction": round(fraction, 4), "detail": detail}) + "\n")
        out.flush()

    return emit


def tqdm_printer() -> ProgressCallback:
    """Progress as a tqdm bar on stderr, one bar per stage."""
    from tqdm import tqdm

    state = {"stage": None, "bar": None}

    def emit(stage: str, fraction: float, detail: str = "") -> None:
        if stage != state["stage"]:
            if state["bar"] is not None:
                state["bar"].close()
            state["stage"] = stage
            state["bar"] = tqdm(total=1000, desc=stage, unit="‰", leave=False,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        bar = state["bar"]
        bar.n = int(round(fraction * 1000))
        bar.set_postfix_str(detail, refresh=False)
        bar.refresh()
        if fraction >= 1.0:
            bar.close()
            state["stage"], state["bar"] = None, None

    return emit
