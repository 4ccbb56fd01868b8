"""The master's side of the log file: ``--logto2`` once privileges are dropped, and rotation by size.

uWSGI's ``--log-maxsize``: once a second the master compares the log file's size with the limit; past it,
the file is renamed (to ``--log-backupname``, else FILE.<unix time>) and a new FILE is started. The master
is the only process that rotates; the workers need no message, since every process follows the file by
name before each line (``uwsgirouter.logs``). As in uWSGI the file can pass the limit by what is written
within that second.
"""

from __future__ import annotations

import logging
import time

from uwsgirouter.config import Config
from uwsgirouter.logs import log_file, switch_log_file
from uwsgirouter.services.base import Service

log = logging.getLogger("uwsgirouter.master")

#: uWSGI checks the size once a second, in the master's loop
CHECK_EVERY_S = 1.0


class LogRotation(Service):
    """Rotates the log file when it grows past ``maxsize`` bytes."""

    name = "the log rotation"

    def __init__(self, maxsize: int, backup: str | None) -> None:
        self.maxsize = maxsize
        self.backup = backup
        self.due = time.monotonic() + CHECK_EVERY_S
        #: the last failure, so that a rename refused every second is logged once
        self.failure: str | None = None

    def next_due(self) -> float | None:
        return self.due

    def tick(self, now: float) -> None:
        self.due = now + CHECK_EVERY_S
        current = log_file()
        if current is None or current.size() <= self.maxsize:
            return
        try:
            current.rotate(self.backup)
        except OSError as exc:
            failure = f"cannot rotate the log file {current.path}: {exc.strerror}; it keeps growing"
            if failure != self.failure:
                log.warning("%s", failure)
            self.failure = failure
        else:
            self.failure = None


def build_log_file(config: Config) -> Service | None:
    """Runs when the master starts supervising, after privileges are dropped: opens ``--logto2`` (as the
    new user), and returns the rotation when ``--log-maxsize`` asks for one."""
    if config.logto2:
        log.info("logging to %s from now on", config.logto2)
        switch_log_file("logto2", config.logto2, config.logdate)
    if not config.log_maxsize:
        return None
    if log_file() is None:
        log.warning("--log-maxsize: there is no log file to rotate (give --logto, --logto2 or --daemonize)")
        return None
    return LogRotation(config.log_maxsize, config.log_backupname)
