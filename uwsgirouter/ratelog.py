"""Rate-limited logging for lines that hostile traffic can trigger at will.

One line per event is uWSGI's habit and ours, but an event per bad request or per garbage datagram lets
a flood write gigabytes of log. Every such line goes through a ``LogLimiter``: at most ``per_second``
lines in each one-second window, then one line saying how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Lines per second and per limiter; a flood of 100 000 bad requests in 10 s logs about 500.
DEFAULT_LINES_PER_SECOND = 50


class LogLimiter:
    """Passes at most ``per_second`` lines a second to ``logger``; counts the rest and reports the count."""

    __slots__ = ("clock", "logged", "logger", "per_second", "suppressed", "window_start")

    def __init__(
        self,
        logger: logging.Logger,
        per_second: int = DEFAULT_LINES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.per_second = per_second
        self.clock = clock
        self.window_start = float("-inf")
        self.logged = 0
        self.suppressed = 0

    def log(self, level: int, message: str, *args: object, exc_info: bool = False) -> bool:
        """Log one line unless this second's budget is spent; True if it was written."""
        self.flush()
        if self.logged < self.per_second:
            self.logged += 1
            self.logger.log(level, message, *args, exc_info=exc_info)
            return True
        self.suppressed += 1
        return False

    def info(self, message: str, *args: object) -> bool:
        return self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args: object) -> bool:
        return self.log(logging.ERROR, message, *args)

    def exception(self, message: str, *args: object) -> bool:
        """An error line with the traceback of the exception being handled."""
        return self.log(logging.ERROR, message, *args, exc_info=True)

    def flush(self, now: float | None = None) -> None:
        """At the start of a new second, say how many lines the last one left out; called on every line and
        from the owner's periodic timer, so the count is written even when the flood stops."""
        if now is None:
            now = self.clock()
        if now - self.window_start < 1.0:
            return
        if self.suppressed == 1:
            self.logger.warning("1 more line like these in the last second was left out")
        elif self.suppressed:
            self.logger.warning("%d more lines like these in the last second were left out", self.suppressed)
        self.window_start, self.logged, self.suppressed = now, 0, 0
