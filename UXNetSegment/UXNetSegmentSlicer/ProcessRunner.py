"""Run the engine in a child process: stream its JSON progress lines, capture its ``error:`` line, kill its tree.

Two daemon threads read the child's stdout and stderr into a queue; they touch nothing else. The caller
(a QTimer in the widget, a sleep loop in scripts) drains the queue with :meth:`ProcessRunner.poll` on its
own thread, so no MRML or Qt object is ever touched from a worker thread.
"""
import json
import os
import queue
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

ERROR_PREFIX = "error: "


@dataclass
class ProgressEvent:
    """One ``{"stage", "fraction", "detail"}`` line of ``--progress json``; fraction in [0, 1]."""

    stage: str
    fraction: float
    detail: str = ""


@dataclass
class LogLine:
    """Any other output line; ``stream`` is ``"stdout"`` or ``"stderr"``."""

    stream: str
    text: str


Event = Union[ProgressEvent, LogLine]


def parseProgressLine(line: str) -> Optional[ProgressEvent]:
    """The progress event in ``line``, or ``None`` when it is not a JSON progress object."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or "stage" not in data or "fraction" not in data:
        return None
    try:
        fraction = min(1.0, max(0.0, float(data["fraction"])))
    except (TypeError, ValueError):
        return None
    return ProgressEvent(str(data["stage"]), fraction, str(data.get("detail", "") or ""))


def killProcessTree(pid: int, timeout: float = 5.0) -> None:
    """Terminate ``pid`` and all its descendants (then kill what is left after ``timeout`` seconds).

    Uses psutil when it is importable; otherwise falls back to the process group made by
    :meth:`ProcessRunner.start` (POSIX) or ``taskkill /T`` (Windows).
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        procs = parent.children(recursive=True) + [parent]
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=timeout)
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class ProcessRunner:
    """One child process whose output is read without blocking the caller.

    ``args`` is the full command line, ``env`` the child's complete environment (the parent's
    ``os.environ`` is never modified).
    """

    def __init__(self, args: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None):
        self.args = [str(a) for a in args]
        self.env = env
        self.cwd = cwd
        self.process: Optional[subprocess.Popen] = None
        self.errorLine: Optional[str] = None
        self.stderrTail: List[str] = []
        self._queue: "queue.Queue[Optional[Event]]" = queue.Queue()
        self._readers: List[threading.Thread] = []
        self._openStreams = 0

    def start(self) -> None:
        """Start the child; raises ``OSError`` if the executable cannot be started."""
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # its own process group: the fallback kill reaches grandchildren
        self.process = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr)):
            thread = threading.Thread(target=self._read, args=(name, stream), daemon=True,
                                      name=f"uxnet-{name}-reader")
            self._openStreams += 1
            thread.start()
            self._readers.append(thread)

    def _read(self, name: str, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                line = line.rstrip("\r\n")
                event = parseProgressLine(line) if name == "stdout" else None
                self._queue.put(event if event is not None else LogLine(name, line))
        finally:
            stream.close()
            self._queue.put(None)  # end-of-stream marker

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def poll(self) -> List[Event]:
        """Every event read since the last call (never blocks)."""
        events: List[Event] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._openStreams -= 1
                continue
            if isinstance(item, LogLine) and item.stream == "stderr":
                self._noteStderr(item.text)
            events.append(item)
        return events

    def _noteStderr(self, text: str) -> None:
        if text.startswith(ERROR_PREFIX):
            self.errorLine = text[len(ERROR_PREFIX):].strip()
        if text.strip():
            self.stderrTail = (self.stderrTail + [text])[-20:]

    @property
    def finished(self) -> bool:
        """True once the child has exited and both of its output streams are fully drained."""
        return self.process is not None and self.process.poll() is not None and self._openStreams == 0

    @property
    def returncode(self) -> Optional[int]:
        return self.process.poll() if self.process is not None else None

    def kill(self, timeout: float = 5.0) -> None:
        """Kill the child and all its descendants, then wait for the readers to finish."""
        if self.process is None:
            return
        if self.process.poll() is None:
            killProcessTree(self.process.pid, timeout)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        for thread in self._readers:
            thread.join(timeout)
        self.poll()

    def failureMessage(self) -> str:
        """One line saying why the child failed: its own ``error:`` line when it printed one."""
        if self.errorLine:
            return self.errorLine
        code = self.returncode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            reason = (" (probably out of memory; close other programs or use a smaller volume)"
                      if -code == 9 else "")
            return f"the engine process was killed by signal {name}{reason}"
        last = self.stderrTail[-1].strip() if self.stderrTail else "no output"
        return f"the engine exited with code {code} without an error line; its last output was: {last}"
