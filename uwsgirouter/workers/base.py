"""What every worker process shares, whatever it serves (gunicorn's ``workers/base.py`` is the model).

A worker kind (the router, the WSGI app worker) subclasses ``BaseWorker``: one constructor taking the
configuration, the worker's number and the heartbeat callable, and one ``init_process()`` that does the
common setup (the signal wakeup pipe, handlers that only record, the parent pid) then runs the kind's own
loop, ``run()``, and cleans up after it. Written once here: the parent-death check, the signal plumbing,
the retire/stop flags and the request count the heartbeat carries to the master.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import ClassVar

from uwsgirouter.config import Config
from uwsgirouter.heartbeat import Counters
from uwsgirouter.oscalls import release_held_signals

log = logging.getLogger("uwsgirouter.worker")

#: The heartbeat the master gives a worker: ``beat(busy_since, requests, counters)`` (see
#: ``heartbeat.HeartbeatTable``).
Beat = Callable[..., None]


def _no_beat(*args: object, **kwargs: object) -> None:
    """A worker run on its own (tests) has no master to tell."""


class BaseWorker:
    """One worker process. Subclasses set ``kind`` and the signal tables, and write ``on_signal`` and ``run``.

    ``stopping`` means "finish what is in hand, then leave" (a retire or a graceful stop), ``exit_now``
    means "leave at once"; only signal handlers and the loop set them.
    """

    #: the arbiter's name for this kind ("fastrouter", "worker"), used in log lines
    kind: ClassVar[str] = "worker"
    #: signals whose handler (``on_signal``) records them for the loop
    RECORDED: ClassVar[tuple[signal.Signals, ...]] = ()
    #: signals this kind ignores
    IGNORED: ClassVar[tuple[signal.Signals, ...]] = ()

    def __init__(self, config: Config, number: int, beat: Beat | None = None) -> None:
        self.config = config
        self.number = number
        self.beat: Beat = beat or _no_beat
        #: the master's pid; set by the master before the app loads (a master dying meanwhile is noticed),
        #: else taken by ``init_process``
        self.parent_pid: int | None = None
        self.stopping = False
        self.exit_now = False
        self.requests_served = 0
        #: monotonic start of the oldest request in hand, 0.0 when idle (the master's harakiri reads it)
        self.busy_since = 0.0
        #: what the master's stats server shows besides the request count (exceptions, bytes sent, times)
        self.counters = Counters()
        self._wakeup_r = self._wakeup_w = -1

    # -- what the master sees ------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Tell the master this worker is alive, whether it is busy, and how many requests it served."""
        self.beat(self.busy_since, self.requests_served, self.counters)

    def master_gone(self) -> bool:
        """Whether the master died (this process was reparented): then nobody supervises it, it must leave."""
        if os.getppid() == self.parent_pid:
            return False
        log.error("the master process is gone; %s %d exits", self.kind, self.number)
        return True

    # -- signals -------------------------------------------------------------------------------

    @property
    def wakeup_fd(self) -> int:
        """The read end of the wakeup pipe (-1 before ``init_process``), for a loop that waits on it."""
        return self._wakeup_r

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Record ``signum`` in the flags; the loop acts on it."""
        raise NotImplementedError

    def drain_wakeup(self, events: int = 0) -> None:
        """Empty the wakeup pipe (its bytes only woke the loop; the handlers recorded what happened)."""
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def wake(self) -> None:
        """Make the loop look at the flags now (for a thread that set one: signals wake it by themselves)."""
        try:
            os.write(self._wakeup_w, b"\0")
        except OSError:
            pass  # the pipe is full (the loop wakes anyway) or already closed (the loop is over)

    # -- the process ---------------------------------------------------------------------------

    def init_process(self) -> int:
        """Set up what every kind needs, run the kind's loop, clean up; returns the exit status."""
        if self.parent_pid is None:
            self.parent_pid = os.getppid()
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in self.RECORDED:
            signal.signal(signum, self.on_signal)
        for signum in self.IGNORED:
            signal.signal(signum, signal.SIG_IGN)
        release_held_signals()  # a stop sent since the fork is delivered now, to the handlers above
        try:
            return self.run()
        finally:
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)

    def run(self) -> int:
        """The kind's loop: serve until a flag or the master's death says stop; returns the exit status."""
        raise NotImplementedError
