"""The router worker process: one epoll loop serving every listener and session.

Chosen over asyncio (and uvloop) because the per-request path is a handful of syscalls and a few dict
lookups: accept, recv the head, connect, send, relay, close, with no task, future or callback objects
in between. The loop reads the clock once per wakeup; timeouts are swept once a second.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import resource
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import FrameType

from uwsgirouter.config import Config
from uwsgirouter.heartbeat import CHEAP
from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router.connector import WAITING
from uwsgirouter.router.mappers import Mapper, static_nodes
from uwsgirouter.router.nodes import Node
from uwsgirouter.router.session import Session
from uwsgirouter.router.stats import render
from uwsgirouter.sock import Listener
from uwsgirouter.stats.exchange import DONE, MAX_CLIENTS, READING, StatsExchange
from uwsgirouter.workers.base import BaseWorker, Beat

log = logging.getLogger("uwsgirouter.router")

EPOLLIN = select.EPOLLIN
SWEEP_INTERVAL_S = 1.0
#: How often the loop tells the master it is alive (--fastrouter-harakiri compares against it).
BEAT_INTERVAL_S = 0.5
ACCEPT_BURST = 64
#: Descriptors kept free for logging, the stats server and the like when sizing the session cap.
SPARE_FDS = 16
#: Descriptors kept for backend connections when deciding whether to accept one more client: idle clients
#: may use the rest, but sessions that route always find a descriptor for their node (at most this many).
BACKEND_HEADROOM = 256
#: After EMFILE/ENFILE on accept, wait this long before accepting again (never spin).
ACCEPT_PAUSE_S = 0.1


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


def own_addresses(listeners: Sequence[Listener]) -> frozenset[object]:
    """The socket addresses that reach this router itself: a node announced with one of them would make
    the router connect to itself, request after request, until its descriptors run out."""
    found: set[object] = set()
    for listener in listeners:
        try:
            address = listener.sock.getsockname()
        except OSError:
            continue
        if isinstance(address, tuple):
            host, port = address[0], address[1]
            found.add((host, port))
            if host in ("0.0.0.0", "127.0.0.1", "::", "::1"):
                # a wildcard or loopback listener is reached through any of these
                found.update((("0.0.0.0", port), ("127.0.0.1", port), ("::", port), ("::1", port)))
        elif address:
            found.add(address.encode() if isinstance(address, str) else address)
    return frozenset(found)


def client_limit(budget: int) -> int:
    """How many descriptors clients and backends may hold before the router stops accepting."""
    return max(1, budget - min(BACKEND_HEADROOM, budget // 4))


class RouterWorker(BaseWorker):
    """Accepts on the listeners, runs sessions, stops accepting at the event cap, drains on SIGTERM."""

    kind = "fastrouter"
    RECORDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR2)
    IGNORED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE, signal.SIGTSTP)  # never paused, as uWSGI's gateways

    def __init__(
        self,
        config: Config,
        listeners: Sequence[Listener],
        mapper: Mapper,
        number: int = 1,
        beat: Beat | None = None,
        stats: Listener | None = None,
        stats_names: Sequence[str] = (),
        local_address: str | None = None,
    ) -> None:
        super().__init__(config, number, beat)
        self.stats_listener = stats
        self.stats_names = list(stats_names) or [listener.name for listener in listeners]
        self.stats_http = config.stats_http
        self.stats_minified = config.stats_minified
        self.stats_clients: dict[int, StatsExchange] = {}
        self.listeners = list(listeners)
        self.own_addresses = own_addresses(self.listeners)
        self.mapper = mapper
        self.read_size = config.fastrouter_buffer_size
        self.high_water = config.fastrouter_buffer_size
        self.timeout = float(config.fastrouter_timeout)
        self.max_retries = config.fastrouter_max_retries
        self.fallbacks: list[Node] = static_nodes(config.fastrouter_fallback)
        self.fallback_on_no_key = config.fastrouter_fallback_on_no_key
        self.force_key = (config.fastrouter_force_key or "").encode("utf-8", "surrogateescape")
        self.quiet = config.fastrouter_quiet
        # Cheap mode: accept only while the subscription table has a live node (docs/differences.md, "Cheap mode when
        # the last node goes": sessions in
        # flight are never cut; going cheap only stops accepting, so a shared socket's app workers answer).
        self.cheap_mode = config.fastrouter_cheap and mapper.live_nodes() is not None
        self.is_cheap = False
        #: In cheap mode, the shared socket's own address: a request that finds no live node is sent
        #: there, once the router has stopped accepting, so the local app workers answer it.
        self.local_node: Node | None = None
        if self.cheap_mode and local_address:
            self.local_node = static_nodes([local_address])[0]
        self.post_buffering = config.fastrouter_post_buffering
        self.post_buffering_dir = config.fastrouter_post_buffering_dir
        self.mercy = float(config.worker_reload_mercy)
        #: on a graceful stop, heads still arriving when the last proxied request is done get this long
        self.head_grace = float(config.socket_timeout)
        #: --fastrouter-events: an explicit cap on sessions (0: only the descriptor limit bounds them)
        self.max_sessions = config.fastrouter_events or (1 << 30)
        #: descriptors clients and backends may use before accepting pauses (set in run())
        self.fd_limit = 1 << 30
        #: descriptors this process may use for clients and backends (set in run())
        self.fd_budget = 1 << 30
        #: sessions whose backend socket could not be created (EMFILE): resumed as descriptors free up
        self.fd_waiters: deque[Session] = deque()
        #: backend connections open now (client connections are len(sessions))
        self.backends = 0
        #: per-request and per-client lines (no node, refused key, invalid request, broken node)
        self.notes = LogLimiter(log)
        #: "limit reached" lines: at most one a second however long the router stays at its limit
        self.limit_notes = LogLimiter(log, per_second=1)
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.sessions: set[Session] = set()
        self.now = time.monotonic()
        self.accepting = False
        self.accept_paused_until = 0.0
        self.shutting_down = False
        self.stop_deadline = 0.0
        self.door_closed_at = 0.0  # when a stopping worker stopped accepting for good

    # -- registration helpers used by sessions ---------------------------------------------------

    def add_fd(self, fd: int, handler: Callable[[int], None], mask: int) -> None:
        """Watch a session's backend connection (counted against the descriptor budget)."""
        self.handlers[fd] = handler
        self.ep.register(fd, mask)
        self.backends += 1

    def remove_backend_fd(self, fd: int) -> None:
        """Forget a backend connection, which the caller closes next."""
        self.handlers.pop(fd, None)
        self.backends -= 1

    def modify(self, fd: int, mask: int) -> None:
        self.ep.modify(fd, mask)

    def remove_fd(self, fd: int) -> None:
        """Forget ``fd``, which the caller closes next: closing removes it from epoll, no syscall needed."""
        self.handlers.pop(fd, None)

    def session_ended(self, session: Session) -> None:
        self.sessions.discard(session)
        if session.head is not None:  # a request, for the master's stats (uwsgitop's REQ, TX, AVG)
            self.requests_served += 1
            self.counters.request_done(self.now - session.started, session.sent)
        if session.node is not None:
            self.mapper.done(session.node)
        if not self.accepting:
            self._resume_accepting()

    def _full(self) -> bool:
        """At --fastrouter-events sessions, at the descriptor budget, or with requests waiting for a descriptor."""
        sessions = len(self.sessions)
        return sessions >= self.max_sessions or sessions + self.backends >= self.fd_limit or bool(self.fd_waiters)

    def _room_to_accept(self) -> bool:
        """Whether one more client fits; if not, say why (at most once a second)."""
        if not self._full():
            return True
        if len(self.sessions) >= self.max_sessions:
            self.limit_notes.warning(
                "%d sessions (--fastrouter-events): not accepting until one ends", self.max_sessions
            )
        else:
            self.limit_notes.warning(
                "descriptor limit reached (%d sessions, %d backend connections): not accepting until one ends",
                len(self.sessions),
                self.backends,
            )
        return False

    # -- accepting -------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        if self.cheap_mode:
            # The table may have emptied since the last look: a cheap router must not take this
            # connection (the app workers on a shared socket will).
            self._check_cheap()
            if self.is_cheap:
                return
        for _ in range(ACCEPT_BURST):
            if not self._room_to_accept():
                self._pause_accepting()
                return
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.limit_notes.error("cannot accept a connection: %s; pausing accepts briefly", exc.strerror)
                    self._pause_accepting(ACCEPT_PAUSE_S)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            session = Session(self, client)
            self.sessions.add(session)
            fd = session.cfd
            self.handlers[fd] = session.on_client
            self.ep.register(fd, EPOLLIN)
            # With deferred accept the request is usually already here: read it without a poll round.
            session.on_client(EPOLLIN)

    def wait_for_descriptor(self, session: Session) -> None:
        """``session`` found no free descriptor for its backend: it waits (accepting pauses meanwhile)
        instead of failing, and is resumed by the loop once sessions end (``_resume_fd_waiters``)."""
        self.fd_waiters.append(session)
        self._pause_accepting()
        self.notes.warning(
            "descriptor limit reached (%d sessions, %d backend connections): %d request(s) wait for a descriptor",
            len(self.sessions),
            self.backends,
            len(self.fd_waiters),
        )

    def _resume_fd_waiters(self) -> None:
        waiters = self.fd_waiters
        for _ in range(len(waiters)):
            if len(self.sessions) + self.backends >= self.fd_budget:
                return
            session = waiters.popleft()
            if session.state == WAITING:
                session.resume_connect()

    def _live_nodes(self) -> int:
        return self.mapper.live_nodes() or 0

    def _go_cheap(self) -> None:
        log.info("no more nodes available. Going cheap...")
        self.is_cheap = True
        self._pause_accepting()

    def no_live_node(self) -> Node | None:
        """A session found no node: in cheap mode go cheap now and offer the local app instead."""
        if not self.cheap_mode or self._live_nodes():
            return None
        if not self.is_cheap:
            self._go_cheap()
        return self.local_node

    def _check_cheap(self) -> None:
        live = self._live_nodes()
        if self.is_cheap and live:
            log.info("leaving cheap mode...")
            self.is_cheap = False
            self._resume_accepting()
        elif not self.is_cheap and not live and not self.stopping:
            self._go_cheap()

    def _pause_accepting(self, pause: float = 0.0) -> None:
        if self.accepting:
            for listener in self.listeners:
                self.ep.modify(listener.fileno(), 0)
            self.accepting = False
        if pause:
            self.accept_paused_until = self.now + pause

    def _resume_accepting(self) -> None:
        if self.accepting or self.is_cheap or self.door_closed_at or self.now < self.accept_paused_until:
            return
        if self._full():
            return
        for listener in self.listeners:
            self.ep.modify(listener.fileno(), EPOLLIN)
        self.accepting = True

    # -- signals ---------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Only record; the loop acts on it.

        SIGUSR2 (from the master, on reload): retire: stop accepting, finish in-flight sessions.
        SIGTERM (graceful stop): keep accepting but answer 503 (docs/differences.md, "Routing failure"), finish
        in-flight sessions.
        SIGINT, SIGQUIT: leave at once.
        """
        if signum == signal.SIGUSR2:
            self.stopping = True
        elif signum == signal.SIGTERM:
            self.stopping = self.shutting_down = True
        else:
            self.exit_now = True

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until told to stop; returns the process exit status."""
        # Everything created before now lives as long as the process: keep the cyclic garbage
        # collector from walking it again and again (it costs per request; also spares copy-on-write).
        gc.freeze()
        baseline = len(os.listdir("/proc/self/fd"))
        self.fd_budget = fd_budget(baseline)
        self.fd_limit = client_limit(self.fd_budget)
        self.handlers[self._wakeup_r] = self.drain_wakeup
        self.ep.register(self._wakeup_r, EPOLLIN)
        for listener in self.listeners:
            sock = listener.sock
            self.handlers[listener.fileno()] = lambda events, sock=sock: self._accept(sock)  # type: ignore[misc]
            self.ep.register(listener.fileno(), EPOLLIN)
        if self.stats_listener is not None:
            self.handlers[self.stats_listener.fileno()] = self._serve_stats
            self.ep.register(self.stats_listener.fileno(), EPOLLIN)
        self.accepting = True
        if self.cheap_mode and not self._live_nodes():
            self._go_cheap()
        self.heartbeat()
        next_sweep = self.now + SWEEP_INTERVAL_S
        next_beat = self.now + BEAT_INTERVAL_S
        handlers = self.handlers
        poll = self.ep.poll
        while not self.exit_now:
            # A cheap-mode router wakes often: it must notice the first (or last) live node soon.
            timeout = SWEEP_INTERVAL_S if self.accepting and not self.cheap_mode else ACCEPT_PAUSE_S
            ready = poll(timeout, 512)
            # The clock is read once per wake-up, before the handlers: what they stamp (a session's start and
            # last activity, dead marks, pauses) is the time of the wake-up, not of the wait before it.
            self.now = now = time.monotonic()
            for fd, events in ready:
                handler = handlers.get(fd)
                if handler is not None:
                    handler(events)
            if now >= next_beat:
                next_beat = now + BEAT_INTERVAL_S
                self.heartbeat()
            if now >= next_sweep:
                next_sweep = now + SWEEP_INTERVAL_S
                self._sweep()
            if self.fd_waiters:
                self._resume_fd_waiters()
            if self.cheap_mode:
                self._check_cheap()
            if not self.accepting:
                self._resume_accepting()
            if self.stopping and self._drained():
                break
        self._close_all()
        self.heartbeat()  # the last requests' counters, for the master's stats
        return 0

    def heartbeat(self) -> None:
        self.counters.in_flight = len(self.sessions)
        self.counters.flags = CHEAP if self.is_cheap else 0
        super().heartbeat()

    def _serve_stats(self, events: int) -> None:
        """A stats client connected: serve it as its socket becomes ready (stats/exchange.py)."""
        assert self.stats_listener is not None
        try:
            client, _ = self.stats_listener.sock.accept()
        except OSError:
            return
        if len(self.stats_clients) >= MAX_CLIENTS:
            client.close()
            return

        def answer(path: str) -> bytes:
            return render(self, self.stats_names, self.stats_http, self.is_cheap, path, self.stats_minified)

        fd = client.fileno()
        self.stats_clients[fd] = StatsExchange(client, self.stats_http, answer, self.now)
        self.handlers[fd] = lambda events: self._stats_ready(fd)
        self.ep.register(fd, 0)
        self._settle_stats(fd)

    def _stats_ready(self, fd: int) -> None:
        exchange = self.stats_clients[fd]
        if exchange.state == READING:
            exchange.on_readable(self.now)
        else:
            exchange.on_writable(self.now)
        self._settle_stats(fd)

    def _settle_stats(self, fd: int) -> None:
        exchange = self.stats_clients[fd]
        if exchange.state == DONE:
            del self.stats_clients[fd]
            self.remove_fd(fd)
            exchange.close()
        else:
            self.ep.modify(fd, EPOLLIN if exchange.state == READING else select.EPOLLOUT)

    def _sweep(self) -> None:
        """Once a second: idle sessions time out (a request head must be complete within the timeout of
        its accept, however it trickles); a worker whose master died leaves."""
        self.notes.flush(self.now)
        self.limit_notes.flush(self.now)
        for fd, exchange in list(self.stats_clients.items()):
            if exchange.deadline <= self.now:
                exchange.on_deadline(self.now)
                self._settle_stats(fd)
        deadline = self.now - self.timeout
        for session in [s for s in self.sessions if s.last_active < deadline]:
            session.timed_out()
        if self.master_gone():
            self.exit_now = True

    def _drained(self) -> bool:
        """Whether a retiring or stopping worker may leave now."""
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
            cut = len(self.sessions)
            log.warning("%d session(s) cut after %.0f s of mercy", cut, self.mercy)
            return True
        if self.shutting_down and not self.door_closed_at and not any(s.node is not None for s in self.sessions):
            # Every proxied request is done: accept no more, and give heads still arriving a
            # moment to complete (they get their 503) before leaving.
            self._close_door()
        if not self.sessions:
            return True
        return self.shutting_down and bool(self.door_closed_at) and self.now - self.door_closed_at > self.head_grace

    def _close_door(self) -> None:
        self._pause_accepting()
        self.door_closed_at = self.now

    def _close_all(self) -> None:
        for session in list(self.sessions):
            session._finish()
        for exchange in self.stats_clients.values():
            exchange.close()
        self.stats_clients.clear()
        self.ep.close()
