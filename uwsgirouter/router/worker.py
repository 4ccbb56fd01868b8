"""The router worker process: signals, heartbeat and stats around one ``RouterLoop`` (core.py).

The process part (what every worker shares is in workers/base.py): build the loop from the configuration, turn
signals into the loop's flags, tell the master twice a second that it lives and what it served, serve the
``--fastrouter-stats`` clients, leave when the master is gone.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
from collections.abc import Sequence
from types import FrameType

from uwsgirouter.config import Config
from uwsgirouter.heartbeat import CHEAP
from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router.core import RouterLoop
from uwsgirouter.router.loop import Settings
from uwsgirouter.router.mappers import Mapper, static_nodes
from uwsgirouter.router.routing import Routing
from uwsgirouter.router.session import Session
from uwsgirouter.router.stats import render
from uwsgirouter.sock import Listener
from uwsgirouter.stats.exchange import DONE, MAX_CLIENTS, READING, StatsExchange
from uwsgirouter.workers.base import BaseWorker, Beat

log = logging.getLogger("uwsgirouter.router")

#: How often the loop tells the master it is alive (--fastrouter-harakiri compares against it).
BEAT_INTERVAL_S = 0.5
#: Stats clients and the master's presence are looked at this often.
HOUSEKEEPING_INTERVAL_S = 1.0


def own_addresses(listeners: Sequence[Listener]) -> frozenset[object]:
    """The socket addresses that reach this router itself: a node announced with one of them would make the router
    connect to itself, request after request, until its descriptors run out."""
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


def router_settings(config: Config) -> Settings:
    """The options a session reads, from the configuration."""
    return Settings(
        high_water=config.fastrouter_buffer_size,
        timeout=float(config.fastrouter_timeout),
        max_retries=config.fastrouter_max_retries,
        post_buffering=config.fastrouter_post_buffering,
        post_buffering_dir=config.fastrouter_post_buffering_dir,
        quiet=config.fastrouter_quiet,
        force_key=(config.fastrouter_force_key or "").encode("utf-8", "surrogateescape"),
        fallback_on_no_key=config.fastrouter_fallback_on_no_key,
    )


class RouterWorker(BaseWorker):
    """Runs the router loop in a worker process; drains on SIGTERM (503 for newcomers) and on SIGUSR2 (reload)."""

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
        self.mapper = mapper
        settings = router_settings(config)
        # Cheap mode: accept only while the subscription table has a live node (docs/differences.md, "Cheap mode
        # when the last node goes": sessions in flight are never cut; going cheap only stops accepting, so a
        # shared socket's app workers answer).
        cheap = config.fastrouter_cheap and mapper.live_nodes() is not None
        self.notes = LogLimiter(log)
        self.routing = Routing(
            mapper,
            self.notes,
            fallbacks=static_nodes(config.fastrouter_fallback),
            max_retries=settings.max_retries,
            fallback_on_no_key=settings.fallback_on_no_key,
            own_addresses=own_addresses(self.listeners),
            cheap=cheap,
            # in cheap mode, the shared socket's own address: a request that finds no live node is sent there once
            # the router stopped accepting, so that the local app workers answer it
            local=static_nodes([local_address])[0] if cheap and local_address else None,
        )
        self.loop = RouterLoop(
            [listener.sock for listener in self.listeners],
            self.routing,
            settings,
            self.notes,
            max_sessions=config.fastrouter_events,
            mercy=float(config.worker_reload_mercy),
            head_grace=float(config.socket_timeout),
        )
        self.routing.on_no_live_node = self.loop.go_cheap

    @property
    def sessions(self) -> set[Session]:
        """The sessions in flight (the stats document counts them)."""
        return self.loop.sessions

    # -- signals ----------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Only record; the loop acts on it.

        SIGUSR2 (from the master, on reload): retire: stop accepting, finish in-flight sessions.
        SIGTERM (graceful stop): keep accepting but answer 503 (docs/differences.md, "Routing failure"), finish
        in-flight sessions.
        SIGINT, SIGQUIT: leave at once.
        """
        loop = self.loop
        if signum == signal.SIGUSR2:
            self.stopping = loop.stopping = True
        elif signum == signal.SIGTERM:
            self.stopping = loop.stopping = loop.shutting_down = True
        else:
            self.exit_now = loop.exit_now = True

    # -- the process ------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until told to stop; returns the process exit status."""
        # Everything created before now lives as long as the process: keep the cyclic garbage collector from
        # walking it again and again (it costs per request; also spares copy-on-write).
        gc.freeze()
        loop = self.loop
        loop.size_to(len(os.listdir("/proc/self/fd")))
        loop.watch(self._wakeup_r, self.drain_wakeup)
        if self.stats_listener is not None:
            loop.watch(self.stats_listener.fileno(), self._serve_stats)
        self.heartbeat()
        self._next_housekeeping = 0.0
        try:
            loop.run(self._tick, BEAT_INTERVAL_S)
        finally:
            loop.close()
            for exchange in self.stats_clients.values():
                exchange.close()
            self.stats_clients.clear()
        self.heartbeat()  # the last requests' counters, for the master's stats
        return 0

    def _tick(self) -> None:
        self.heartbeat()
        now = self.loop.now
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
        for fd, exchange in list(self.stats_clients.items()):
            if exchange.deadline <= now:
                exchange.on_deadline(now)
                self._settle_stats(fd)
        if self.master_gone():
            self.exit_now = self.loop.exit_now = True

    def heartbeat(self) -> None:
        loop, counters = self.loop, self.counters
        self.requests_served = loop.requests
        counters.running_us, counters.avg_rt_us, counters.tx = loop.running_us, loop.avg_rt_us, loop.bytes_sent
        counters.in_flight = len(loop.sessions)
        counters.flags = CHEAP if loop.is_cheap else 0
        super().heartbeat()

    # -- the stats server -------------------------------------------------------------------------

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
            return render(self, self.stats_names, self.stats_http, self.loop.is_cheap, path, self.stats_minified)

        fd = client.fileno()
        self.stats_clients[fd] = StatsExchange(client, self.stats_http, answer, self.loop.now)
        self.loop.watch(fd, lambda events: self._stats_ready(fd), 0)
        self._settle_stats(fd)

    def _stats_ready(self, fd: int) -> None:
        exchange = self.stats_clients[fd]
        if exchange.state == READING:
            exchange.on_readable(self.loop.now)
        else:
            exchange.on_writable(self.loop.now)
        self._settle_stats(fd)

    def _settle_stats(self, fd: int) -> None:
        exchange = self.stats_clients[fd]
        if exchange.state == DONE:
            del self.stats_clients[fd]
            self.loop.forget(fd)
            exchange.close()
        else:
            self.loop.modify(fd, select.EPOLLIN if exchange.state == READING else select.EPOLLOUT)
