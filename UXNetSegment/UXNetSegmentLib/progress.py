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


class TqdmPrinter:
    """Progress as a tqdm bar on stderr, one bar per stage; ``close()`` clears the line (e.g. before an error)."""

    def __init__(self):
        self.stage = None
        self.bar = None

    def __call__(self, stage: str, fraction: float, detail: str = "") -> None:
        from tqdm import tqdm

        if stage == "warning":
            self.close()
            sys.stderr.write(f"warning: {detail}\n")
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=1000, desc=stage, leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self.bar.n = int(round(fraction * 1000))
        self.bar.set_postfix_str(detail, refresh=False)
        self.bar.refresh()
        if fraction >= 1.0:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.stage, self.bar = None, None


def tqdm_printer() -> TqdmPrinter:
    return TqdmPrinter()
