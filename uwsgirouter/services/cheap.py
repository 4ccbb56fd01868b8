"""uWSGI's cheap mode for app workers (``--cheap``, the master fifo's ``C``): while no app worker runs, the
master watches the app sockets and spawns the workers when a connection waits on one.

The arbiter holds the state (``Arbiter.cheap``): it retires the app workers on ``C`` (each finishes its request
in hand; uWSGI 2.0 kills them) and spawns none until told to leave. This service only watches: the app
listeners are in the master's ``select`` while the instance is cheap, and the first one readable asks the
master for the workers. The connection itself stays in the listen queue, where the first new worker accepts
it: it is served, not dropped. With TCP_DEFER_ACCEPT a client that connects without sending anything wakes
nobody, as it would wake no worker. Router workers are never cheaped (uWSGI's ``--fastrouter-cheap`` is a
different thing: a router that stops accepting while no node is live).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from uwsgirouter.services.base import MasterControl, Service

if TYPE_CHECKING:
    from uwsgirouter.arbiter import Arbiter
    from uwsgirouter.sock import Listener

log = logging.getLogger("uwsgirouter.master")


class CheapWatch(Service):
    """Readable app sockets, while cheap: spawn the app workers."""

    name = "the cheap mode's socket watch"

    def __init__(self, arbiter: Arbiter, listeners: Sequence[Listener], control: MasterControl) -> None:
        self.arbiter = arbiter
        self.fds = sorted({listener.fileno() for listener in listeners})
        self.control = control

    def filenos(self) -> Sequence[int]:
        return self.fds if self.arbiter.cheap and not self.arbiter.stopping else ()

    def on_readable(self, fd: int, now: float) -> None:
        self.control.request_cheap(False)


def build_cheap_watch(arbiter: Arbiter, listeners: Sequence[Listener], control: MasterControl) -> CheapWatch | None:
    """Any instance with app workers may go cheap (``C`` at any time), so the watch is always there for it;
    ``listeners`` are the app sockets."""
    if not arbiter.apps:
        return None
    return CheapWatch(arbiter, listeners, control)
