"""Where in a run the resident set peaks: a sampling thread, read out at each progress event.

A daemon thread reads ``/proc/self/statm`` every few milliseconds (through one open descriptor, so it
allocates next to nothing on the main heap) and keeps the highest value since the last read-out. The
benchmark's worker calls :meth:`RssTrace.mark` from its progress callback; each mark records the stage,
its detail, the resident set now and the highest one since the previous mark, and glibc's heap span and
bytes in use (``allocator.heap_usage``). ``tools/benchmark.py --rss-trace`` prints the marks around the peak.
"""
import os
import threading
import time
from typing import List

from UXNetSegmentLib.allocator import heap_usage


class RssTrace(threading.Thread):
    def __init__(self, period: float = 0.005):
        super().__init__(daemon=True)
        self.period = period
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.fd = os.open("/proc/self/statm", os.O_RDONLY)
        self.high = self.now()
        self.marks: List[dict] = []
        self.t0 = time.perf_counter()
        self.stopped = False

    def now(self) -> int:
        return int(os.pread(self.fd, 128, 0).split()[1]) * self.page

    def run(self) -> None:
        while not self.stopped:
            rss = self.now()
            if rss > self.high:
                self.high = rss
            time.sleep(self.period)

    def mark(self, stage: str, detail: str = "") -> None:
        now = self.now()
        high, self.high = max(self.high, now), now
        heap = heap_usage()
        arena, used, mapped = (heap.span, heap.in_use, heap.mapped) if heap else (None, None, None)
        self.marks.append({"t": round(time.perf_counter() - self.t0, 3), "stage": stage, "detail": detail,
                           "rss": now, "high_since_last": high, "heap_span": arena, "heap_used": used,
                           "mapped": mapped})

    def stop(self) -> None:
        self.stopped = True
        self.join()
        os.close(self.fd)


def summarize(marks: List[dict], around: int = 3) -> List[str]:
    """Lines for the marks around the highest ``high_since_last``."""
    if not marks:
        return []
    peak = max(range(len(marks)), key=lambda i: marks[i]["high_since_last"])
    gib = 2.0 ** 30
    lines = []
    for i in range(max(0, peak - around), min(len(marks), peak + around + 1)):
        m = marks[i]
        span = "?" if m["heap_span"] is None else f"{m['heap_span'] / gib:.2f}"
        used = "?" if m["heap_used"] is None else f"{m['heap_used'] / gib:.2f}"
        mapped = "?" if m["mapped"] is None else f"{m['mapped'] / gib:.2f}"
        lines.append(f"{'*' if i == peak else ' '} {m['t']:8.1f} s  {m['stage']:<12} {m['detail'][:28]:<28} "
                     f"rss {m['rss'] / gib:.2f}  high {m['high_since_last'] / gib:.2f}  heap {span} "
                     f"(used {used})  mapped {mapped} GiB")
    return lines
