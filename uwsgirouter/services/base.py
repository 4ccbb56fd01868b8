"""The interface between the master's loop and each master-side feature.

The loop, once per turn: waits (``select``) on every service's ``filenos`` until the earliest
``next_due``; calls ``on_readable`` for each descriptor that became readable and ``tick`` for each
service that is due; tells every service of lifecycle changes with ``on_lifecycle``. Each call is
guarded: an exception a service did not expect is logged with its traceback and the master goes on
(one subsystem's bug must not stop the routing). A service asks the master for something (a reload, a
stop, a log reopen) through ``MasterControl``; it never reaches into the master.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol


class Lifecycle(enum.Enum):
    """What the master tells every service, in this order over an instance's life."""

    READY = "ready"  #: every socket bound and the first generation of workers up
    RELOADING = "reloading"  #: a graceful reload started (SIGHUP, fifo, touch-reload)
    RELOADED = "reloaded"  #: the new generation serves
    STOPPING = "stopping"  #: a stop started; workers are draining


class MasterControl(Protocol):
    """What a service may ask of the master; each call only records the wish, the loop acts on it."""

    def request_reload(self, brutal: bool = False) -> None:
        """Graceful reload, as SIGHUP; ``brutal``: the old workers leave at once, cutting their requests,
        instead of finishing them (uWSGI's brutal reload)."""

    def request_reload_workers(self, brutal: bool) -> None:
        """A new generation of workers, without reading the configuration again or reopening logs."""

    def request_stop(self, graceful: bool) -> None:
        """Graceful stop (as SIGTERM) or immediate stop (as SIGINT)."""

    def request_log_reopen(self) -> None:
        """Open the log files again by name."""

    def request_log_rotate(self) -> None:
        """Rename the log file (to --log-backupname, else FILE.<unix time>) and open a new one."""

    def request_block_subscriptions(self, blocked: bool | None) -> None:
        """Stop (True) or resume (False) sending subscriptions; None switches between the two."""

    def request_update_pidfiles(self) -> None:
        """Write the master's pid into its pidfiles again."""

    def request_stats_log(self) -> None:
        """Log one line per worker with its pid and requests served."""

    def request_cheap(self, cheap: bool) -> None:
        """True: retire the app workers until a connection arrives on an app socket (uWSGI's "go cheap");
        False: spawn them again (that connection came)."""

    def request_emperor_rescan(self) -> None:
        """The Emperor scans its vassal files now instead of at its next period."""

    def request_pause(self, paused: bool | None) -> None:
        """Pause (True) or resume (False) the app workers, None switching between the two: paused, they
        finish the request in hand and accept nothing more, and the subscriptions are withdrawn."""


class Service:
    """Base class with do-nothing defaults; a feature overrides what it uses."""

    #: named in the log line of an unexpected error ("unexpected error in the stats server")
    name = "a master service"

    def filenos(self) -> Sequence[int]:
        """Descriptors the loop waits on for reading."""
        return ()

    def on_readable(self, fd: int, now: float) -> None:
        """``fd`` (one of ``filenos``) is readable."""

    def writable_filenos(self) -> Sequence[int]:
        """Descriptors the loop waits on for writing (a reply that did not fit in the socket at once)."""
        return ()

    def on_writable(self, fd: int, now: float) -> None:
        """``fd`` (one of ``writable_filenos``) is writable."""

    def next_due(self) -> float | None:
        """The ``time.monotonic()`` at which ``tick`` wants to run next; None when it has nothing to do."""
        return None

    def tick(self, now: float) -> None:
        """Called once ``next_due`` has passed (and may be called more often)."""

    def on_lifecycle(self, event: Lifecycle) -> None:
        """The instance moved to a new phase of its life."""

    def child_exited(self, pid: int, status: int) -> bool:
        """A child of the master that is not one of its workers exited (the master reaps every child): True
        when it was this service's (the Emperor's vassals)."""
        return False

    def busy(self) -> bool:
        """While stopping: the master does not leave before this is False (vassals still on their way out)."""
        return False

    def close(self) -> None:
        """The master is leaving: release descriptors and files."""
