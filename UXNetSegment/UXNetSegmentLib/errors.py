"""The one exception type users see: a one-line message naming the problem and the fix."""


class UXNetError(Exception):
    """A user-facing failure. ``str(err)`` is a single line: what is wrong, then how to fix it."""


class Cancelled(UXNetError):
    """Raised when a :class:`~UXNetSegmentLib.progress.CancelToken` was set during a run."""

    def __init__(self, message: str = "cancelled by the user; nothing was written"):
        super().__init__(message)
