"""Logging in uWSGI's spirit: one line per event, naming the process it comes from."""

from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s [%(label)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

_label = "master"


class _LabelFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.label = _label
        return True


def set_process_label(label: str) -> None:
    """Name this process in every later line ('master', 'fastrouter 1', 'worker 2')."""
    global _label
    _label = label


def setup_logging(logto: str | None = None) -> None:
    """Log to stderr, or append to ``logto``; replaces any handler set before (idempotent)."""
    handler: logging.Handler
    if logto:
        handler = logging.FileHandler(logto, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    handler.addFilter(_LabelFilter())
    root = logging.getLogger("uwsgirouter")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def reopen_logs(logto: str | None, daemonize_log: str | None) -> None:
    """Open the log files again by name (on SIGHUP), so that after ``mv router.log router.log.1`` the router
    writes a new ``router.log`` instead of the renamed file. ``OSError`` if a file cannot be opened."""
    if daemonize_log:
        fd = os.open(daemonize_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if logto:
        setup_logging(logto)
