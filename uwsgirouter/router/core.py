"""The router's event loop: one epoll set serving every listener and session of one router process.

Chosen over asyncio (and uvloop) because the per-request path is a handful of system calls and a few dict lookups:
accept, read the head, connect, send, relay, close, with no task, future or callback objects in between
(docs/benchmarks.md). The loop reads the clock once per wake-up, before the handlers; timeouts are swept once a
second. It implements ``loop.Loop`` for the sessions and knows nothing of the process around it: the router worker
(worker.py) builds it, sets its flags from signals and gets a call every ``tick_interval`` seconds.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router import sysio
from uwsgirouter.router.loop import Callback, Handler, Loop, Settings, Timed, Watcher
from uwsgirouter.router.routing import Routing
from uwsgirouter.router.session import Session
from uwsgirouter.router.sysio import EPOLL_CTL_ADD, EPOLL_CTL_MOD

log = logging.getLogger("uwsgirouter.router")

# The clock and the system calls as Final names: compiled, each call reads a C static instead of looking the name up
# in the module's dictionary.
monotonic: Final = sysio.monotonic
sysio_accept: Final = sysio.accept
epoll_create: Final = sysio.epoll_create
epoll_close: Final = sysio.epoll_close
epoll_ctl: Final = sysio.epoll_ctl
epoll_wait: Final = sysio.epoll_wait

EPOLLIN: Final = select.EPOLLIN
_EAGAIN: Final = errno.EAGAIN
SWEEP_INTERVAL_S: Final = 1.0
_SWEEP_INTERVAL_MS: Final = 1000
#: Descriptors kept free for logging, the stats server and the like when sizing the session cap.
SPARE_FDS: Final = 16
#: Descriptors kept for backend connections when deciding whether to accept one more client: idle clients may use
#: the rest, but sessions that route always find a descriptor for their node (at most this many).
BACKEND_HEADROOM: Final = 256
#: After EMFILE/ENFILE on accept, wait this long before accepting again (never spin).
ACCEPT_PAUSE_S: Final = 0.1
_ACCEPT_PAUSE_MS: Final = 100
#: Events taken from the kernel per wake-up.
MAX_EVENTS: Final = 512
#: Connections a busy router (a wake-up with several events) takes from one listener at once.
ACCEPT_BURST: Final = 16
_RESOURCE_ERRORS: Final = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_CLIENT_GONE: Final = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM)


def fd_budget(baseline_fds: int) -> int:
    """Descriptors this process may give to clients and backends, within RLIMIT_NOFILE.

    The soft limit is first raised to the hard one, as uWSGI's sessions are bounded by descriptors only.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(2, soft - baseline_fds - SPARE_FDS)


def client_limit(budget: int) -> int:
    """How many descriptors clients and backends may hold before the router stops accepting."""
    return max(1, budget - min(BACKEND_HEADROOM, budget // 4))


class Acceptor(Watcher):
    """The watcher of one listener: the loop takes its connections."""

    __slots__ = ("listener_fd", "loop")

    def __init__(self, loop: RouterLoop, listener_fd: int) -> None:
        self.loop = loop
        self.listener_fd = listener_fd

    def ready(self, fd: int, events: int) -> None:
        self.loop.accept(self.listener_fd)


class RouterLoop(Loop):
    """Accepts on the listeners, runs sessions, stops accepting at the session cap, drains on a stop."""

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        routing: Routing,
        settings: Settings,
        notes: LogLimiter,
        max_sessions: int = 0,
        mercy: float = 60.0,
        head_grace: float = 4.0,
    ) -> None:
        super().__init__(monotonic())
        self.listeners = list(listeners)
        self.routing = routing
        self.settings = settings
        #: per-request and per-client lines (shared with the sessions through ``routing``)
        self.notes = notes
        #: "limit reached" lines: at most one a second however long the router stays at its limit
        self.limit_notes = LogLimiter(log, per_second=1)
        #: --fastrouter-events: an explicit cap on sessions (0: only the descriptor limit bounds them)
        self.max_sessions = max_sessions or (1 << 30)
        self.mercy = mercy
        #: on a graceful stop, heads still arriving when the last proxied request is done get this long
        self.head_grace = head_grace
        #: descriptors clients and backends may use before accepting pauses (``size_to``)
        self.fd_limit = 1 << 30
        #: descriptors clients and backends may use at all (``size_to``)
        self.fd_budget = 1 << 30
        epfd = epoll_create()
        if epfd < 0:
            raise OSError(-epfd, os.strerror(-epfd))
        #: the epoll set, a bare descriptor (sysio): no select.epoll object between the loop and the kernel
        self.epfd = epfd
        #: the watcher of each watched descriptor, indexed by the descriptor (small dense numbers: no hashing)
        self.handlers: list[Watcher | None] = []
        self.sessions: set[Session] = set()
        #: client and backend descriptors registered by sessions
        self.descriptors = 0
        #: sessions whose backend socket could not be created (EMFILE), resumed as descriptors free up
        self.fd_waiters: deque[Callable[[], None]] = deque()
        self.accepting = False
        #: the last wake-up brought several events (accept in bursts)
        self.busy = False
        self.accept_paused_until = 0.0
        #: cheap mode: the router stops accepting while no node is live (a shared socket's app workers answer)
        self.is_cheap = False
        #: a retire (reload) or a graceful stop is under way: finish what is in hand, then leave
        self.stopping = False
        #: leave at once
        self.exit_now = False
        self.stop_deadline = 0.0
        #: when a stopping loop stopped accepting for good
        self.door_closed_at = 0.0
        #: requests served, with their total time in microseconds, uWSGI's running average of it and the bytes
        #: sent to clients: the worker's heartbeat carries them to the master's stats
        self.requests = 0
        self.running_us = 0
        self.avg_rt_us = 0
        self.bytes_sent = 0

    def size_to(self, baseline_fds: int) -> None:
        """Size the descriptor budget once the process's own descriptors are open."""
        self.fd_budget = fd_budget(baseline_fds)
        self.fd_limit = client_limit(self.fd_budget)

    # -- loop.Loop, for the sessions ----------------------------------------------------------------

    def register(self, fd: int, watcher: Watcher, mask: int) -> None:
        self._add(fd, watcher, mask)
        self.descriptors += 1

    def modify(self, fd: int, mask: int) -> None:
        err = epoll_ctl(self.epfd, EPOLL_CTL_MOD, fd, mask)
        if err:
            raise OSError(-err, os.strerror(-err))

    def unregister(self, fd: int) -> None:
        self.handlers[fd] = None
        self.descriptors -= 1

    def _add(self, fd: int, watcher: Watcher, mask: int) -> None:
        handlers = self.handlers
        if fd >= len(handlers):
            handlers.extend([None] * max(fd + 1 - len(handlers), len(handlers)))
        err = epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, mask)
        if err:
            raise OSError(-err, os.strerror(-err))
        handlers[fd] = watcher

    def wait_for_descriptor(self, resume: Callable[[], None]) -> None:
        """A session found no free descriptor for its node: it waits (accepting pauses meanwhile) instead of
        failing, and is resumed once sessions end."""
        self.fd_waiters.append(resume)
        self._pause_accepting()
        self.notes.warning(
            "descriptor limit reached (%d sessions, %d descriptors): %d request(s) wait for a descriptor",
            len(self.sessions),
            self.descriptors,
            len(self.fd_waiters),
        )

    def session_ended(self, session: Timed, request: bool, sent: int, started: float) -> None:
        self.sessions.discard(session)
        if request:  # for the master's stats (uwsgitop's REQ, TX, AVG)
            micros = max(0, int((self.now - started) * 1_000_000))
            self.requests += 1
            self.running_us += micros
            self.avg_rt_us = (self.avg_rt_us + micros) // 2
            self.bytes_sent += sent
        if not self.accepting:
            self._resume_accepting()

    # -- the process's own descriptors (listeners, the signal pipe, the stats server) ---------------------

    def watch(self, fd: int, handler: Handler, mask: int = EPOLLIN) -> None:
        """Watch a descriptor that is not a session's (not counted against the session budget)."""
        self._add(fd, Callback(handler), mask)

    def watched(self) -> set[int]:
        """The descriptors that have a watcher now."""
        return {fd for fd, handler in enumerate(self.handlers) if handler is not None}

    def forget(self, fd: int) -> None:
        """Stop watching one of ``watch``'s descriptors, which the caller closes next."""
        if fd < len(self.handlers):
            self.handlers[fd] = None

    # -- accepting --------------------------------------------------------------------------------

    def _full(self) -> bool:
        """At the session cap, at the descriptor budget, or with requests waiting for a descriptor."""
        sessions = len(self.sessions)
        return sessions >= self.max_sessions or self.descriptors >= self.fd_limit or bool(self.fd_waiters)

    def _say_full(self) -> None:
        if len(self.sessions) >= self.max_sessions:
            self.limit_notes.warning(
                "%d sessions (--fastrouter-events): not accepting until one ends", self.max_sessions
            )
        else:
            self.limit_notes.warning(
                "descriptor limit reached (%d sessions, %d descriptors): not accepting until one ends",
                len(self.sessions),
                self.descriptors,
            )

    def accept(self, listener_fd: int, accept_fd: Callable[[int], int] = sysio_accept) -> None:
        """Take the connections waiting on a listener (non-blocking, as every listener of the router is);
        ``accept_fd`` is sysio.accept but for tests.

        When the loop woke for this listener alone (a quiet router) one connection is taken: the readiness event
        promised one, and the loop comes back while more wait (level-triggered), so no accept is made just to learn
        that the queue is empty. When the wake-up brought several events (a busy router), up to ``ACCEPT_BURST``
        are taken at once, which saves poll rounds and their latency; the one that finds the queue empty is then a
        small share. A connection is a bare descriptor (sysio.accept): no socket object, no address."""
        routing = self.routing
        if routing.cheap:
            # The table may have emptied since the last look: a cheap router must not take this connection (the
            # app workers on a shared socket will).
            self.check_cheap()
            if self.is_cheap:
                return
        for _ in range(ACCEPT_BURST if self.busy else 1):
            if self._full():
                break
            fd = accept_fd(listener_fd)
            if fd < 0:
                err = -fd
                if err == _EAGAIN:
                    break  # the queue is empty (or another router process took it)
                if err in _RESOURCE_ERRORS:
                    self.limit_notes.error("cannot accept a connection: %s; pausing accepts briefly", os.strerror(err))
                    self._pause_accepting(ACCEPT_PAUSE_S)
                    return
                if err not in _CLIENT_GONE:
                    raise OSError(err, os.strerror(err))
                continue
            session = Session(self, routing, self.settings, fd)
            self.sessions.add(session)
            session.start()
        if self._full():
            # at the limit (before or after these connections): stop listening rather than wake for each one
            self._say_full()
            self._pause_accepting()

    def _resume_fd_waiters(self) -> None:
        waiters = self.fd_waiters
        for _ in range(len(waiters)):
            if self.descriptors >= self.fd_budget:
                return
            waiters.popleft()()

    def go_cheap(self) -> None:
        if not self.is_cheap:
            log.info("no more nodes available. Going cheap...")
            self.is_cheap = True
            self._pause_accepting()

    def check_cheap(self) -> None:
        live = self.routing.mapper.live_nodes()
        if self.is_cheap and live:
            log.info("leaving cheap mode...")
            self.is_cheap = False
            self._resume_accepting()
        elif not self.is_cheap and not live and not self.stopping:
            self.go_cheap()

    def _pause_accepting(self, pause: float = 0.0) -> None:
        if self.accepting:
            for listener in self.listeners:
                self.modify(listener.fileno(), 0)
            self.accepting = False
        if pause:
            self.accept_paused_until = self.now + pause

    def _resume_accepting(self) -> None:
        if self.accepting or self.is_cheap or self.door_closed_at or self.now < self.accept_paused_until:
            return
        if self._full():
            return
        for listener in self.listeners:
            self.modify(listener.fileno(), EPOLLIN)
        self.accepting = True

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, tick: Callable[[], None], tick_interval: float) -> None:
        """Serve until ``exit_now`` or a finished drain; ``tick`` runs every ``tick_interval`` seconds."""
        for listener in self.listeners:
            self._add(listener.fileno(), Acceptor(self, listener.fileno()), EPOLLIN)
        self.accepting = True
        if self.routing.cheap and not self.routing.mapper.live_nodes():
            self.go_cheap()
        self.now = monotonic()
        next_sweep = self.now + SWEEP_INTERVAL_S
        next_tick = self.now + tick_interval
        epfd = self.epfd
        cheap = self.routing.cheap
        while not self.exit_now:
            # A cheap-mode router wakes often: it must notice the first (or last) live node soon.
            timeout = _SWEEP_INTERVAL_MS if self.accepting and not cheap else _ACCEPT_PAUSE_MS
            ready = epoll_wait(epfd, timeout, MAX_EVENTS)  # (fd, events, fd, events, ...)
            self.busy = len(ready) > 2
            # The clock is read once per wake-up, before the handlers: what they stamp (a session's start and last
            # activity, dead marks, pauses) is the time of the wake-up, not of the wait before it.
            self.now = now = monotonic()
            # A watcher unregistered by an earlier one of this wake-up is None here: its event is stale, skipped.
            for i in range(0, len(ready), 2):
                fd = ready[i]
                watcher = self.handlers[fd]
                if watcher is not None:
                    watcher.ready(fd, ready[i + 1])
            if now >= next_tick:
                next_tick = now + tick_interval
                tick()
            if now >= next_sweep:
                next_sweep = now + SWEEP_INTERVAL_S
                self.sweep()
            if self.fd_waiters:
                self._resume_fd_waiters()
            if cheap:
                self.check_cheap()
            if not self.accepting:
                self._resume_accepting()
            if self.stopping and self.drained():
                break

    def sweep(self) -> None:
        """Once a second: idle sessions time out (a request head must be complete within the timeout of its
        accept, however it trickles)."""
        self.notes.flush(self.now)
        self.limit_notes.flush(self.now)
        deadline = self.now - self.settings.timeout
        for session in [s for s in self.sessions if s.last_active < deadline]:
            session.timed_out()

    def drained(self) -> bool:
        """Whether a retiring or stopping loop may end now."""
        if not self.stop_deadline:
            self.stop_deadline = self.now + self.mercy
            if not self.shutting_down:
                self._close_door()
            log.info(
                "%s, %d session(s) in flight",
                "graceful stop (new requests get 503)" if self.shutting_down else "retiring (reload)",
                len(self.sessions),
            )
        if self.now >= self.stop_deadline:
            log.warning("%d session(s) cut after %.0f s of mercy", len(self.sessions), self.mercy)
            return True
        if self.shutting_down and not self.door_closed_at and not any(s.node is not None for s in self.sessions):
            # Every proxied request is done: accept no more, and give heads still arriving a moment to complete
            # (they get their 503) before leaving.
            self._close_door()
        if not self.sessions:
            return True
        return self.shutting_down and bool(self.door_closed_at) and self.now - self.door_closed_at > self.head_grace

    def _close_door(self) -> None:
        self._pause_accepting()
        self.door_closed_at = self.now

    def close(self) -> None:
        """End every session and release the epoll set."""
        for session in list(self.sessions):
            session.close()
        if self.epfd >= 0:
            epoll_close(self.epfd)
            self.epfd = -1
