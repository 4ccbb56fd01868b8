"""Touch files (``--touch-reload``, ``--touch-logreopen``): ``touch FILE`` asks the master for an action.

Checked once a second, as uWSGI's master does in its cycle. A file counts as touched when its
modification time moves forward, when it appears, and when it disappears (uWSGI's three cases); a file
missing at start is fine and only logged. uWSGI compares whole seconds, so two touches within one
second are one event there; here the nanosecond times are compared, so each touch counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from uwsgirouter.services.base import MasterControl, Service

log = logging.getLogger("uwsgirouter.master")

CHECK_INTERVAL_S = 1.0


class TouchFile:
    """One watched path and what was last seen of it (None: missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen = self._look()
        if self.seen is None:
            log.info("unable to stat() %s, events will be triggered as soon as the file is created", path)

    def _look(self) -> int | None:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return None

    def touched(self) -> bool:
        now = self._look()
        before, self.seen = self.seen, now
        if now is None or before is None:
            return now is not before  # appeared or disappeared
        return now > before


class TouchWatcher(Service):
    """Watches files; each group of files triggers one action of the master."""

    name = "the touch files"

    def __init__(self, watches: Sequence[tuple[str, Sequence[str], Callable[[], None]]]) -> None:
        """``watches``: (option name, paths, action) triples."""
        self.watches = [(option, [TouchFile(p) for p in paths], action) for option, paths, action in watches]
        self.due = 0.0

    def next_due(self) -> float | None:
        return self.due

    def tick(self, now: float) -> None:
        self.due = now + CHECK_INTERVAL_S
        for option, files, action in self.watches:
            touched = [f.path for f in files if f.touched()]  # every file looked at, so one touch is one event
            if touched:
                log.info("%s touched (--%s)", touched[0], option)
                action()


def build_touch_watcher(control: MasterControl, reload: Sequence[str], logreopen: Sequence[str]) -> TouchWatcher | None:
    watches = [
        (option, paths, action)
        for option, paths, action in (
            ("touch-reload", reload, control.request_reload),
            ("touch-logreopen", logreopen, control.request_log_reopen),
        )
        if paths
    ]
    return TouchWatcher(watches) if watches else None
