"""The master's stats server (``--stats``): uWSGI's master document for uwsgitop, and with ``--stats-http``
Prometheus metrics on ``GET /metrics``.

The socket is bound with the others, before privileges are dropped. Each client is accepted without
blocking and served by a ``StatsExchange`` (stats/exchange.py), which the master's loop drives through
``filenos``/``writable_filenos`` and ``next_due``: a client that does not read is dropped at its deadline,
and the loop never waits for one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from uwsgirouter.services.base import Service
from uwsgirouter.sock import Listener
from uwsgirouter.stats.document import MasterStats, StatsSocket
from uwsgirouter.stats.exchange import (
    JSON_TYPE,
    MAX_CLIENTS,
    METRICS_PATH,
    METRICS_TYPE,
    READING,
    WRITING,
    StatsExchange,
    encode_json,
    http_response,
)
from uwsgirouter.stats.prometheus import instance_metrics

if TYPE_CHECKING:
    from uwsgirouter.arbiter import Arbiter
    from uwsgirouter.config import Config
    from uwsgirouter.heartbeat import HeartbeatTable
    from uwsgirouter.pause import PauseSwitch
    from uwsgirouter.sockets import Sockets

log = logging.getLogger("uwsgirouter.master")

#: Clients accepted per wakeup, so a flood of stats clients cannot hold the loop.
ACCEPT_BURST = 16


class StatsServer(Service):
    name = "the stats server"

    def __init__(self, listener: Listener, stats: MasterStats, http: bool, minified: bool) -> None:
        self.listener = listener
        self.stats = stats
        self.http = http
        self.minified = minified
        self.clients: dict[int, StatsExchange] = {}

    def answer(self, path: str) -> bytes:
        doc = self.stats.document()
        if not self.http:
            return encode_json(doc, self.minified)
        if path == METRICS_PATH:
            return http_response(instance_metrics(doc), METRICS_TYPE)
        return http_response(encode_json(doc, self.minified), JSON_TYPE)

    def filenos(self) -> Sequence[int]:
        return [self.listener.fileno(), *(fd for fd, c in self.clients.items() if c.state == READING)]

    def writable_filenos(self) -> Sequence[int]:
        return [fd for fd, client in self.clients.items() if client.state == WRITING]

    def next_due(self) -> float | None:
        return min((client.deadline for client in self.clients.values()), default=None)

    def on_readable(self, fd: int, now: float) -> None:
        if fd == self.listener.fileno():
            self._accept(now)
        elif fd in self.clients:
            self.clients[fd].on_readable(now)
            self._settle(fd)

    def on_writable(self, fd: int, now: float) -> None:
        if fd in self.clients:
            self.clients[fd].on_writable(now)
            self._settle(fd)

    def tick(self, now: float) -> None:
        for fd, client in list(self.clients.items()):
            if client.deadline <= now:
                client.on_deadline(now)
                self._settle(fd)

    def _accept(self, now: float) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                sock, _ = self.listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("stats server: cannot accept a client: %s", exc.strerror or exc)
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                continue
            client = StatsExchange(sock, self.http, self.answer, time.monotonic())
            self.clients[sock.fileno()] = client
            self._settle(sock.fileno())

    def _settle(self, fd: int) -> None:
        client = self.clients[fd]
        if client.state not in (READING, WRITING):
            del self.clients[fd]
            client.close()

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()


def build_stats_server(
    config: Config, sockets: Sockets, arbiter: Arbiter, heartbeats: HeartbeatTable, pause: PauseSwitch
) -> StatsServer | None:
    """The service when --stats is set (its socket was bound by the master with the others); the document
    reads the workers from ``arbiter`` and ``heartbeats``, and the instance's ``pause`` switch."""
    listener = sockets.master_stats
    if listener is None:
        return None
    entries: list[StatsSocket] = []
    seen: set[int] = set()
    for group, shared in ((sockets.shared, True), (sockets.app, False), (sockets.router, False)):
        for sock in group:
            if id(sock) not in seen:
                seen.add(id(sock))
                entries.append(StatsSocket(sock, shared))
    stats = MasterStats(arbiter, heartbeats, entries, config.listen, pause)
    return StatsServer(listener, stats, config.stats_http, config.stats_minified)
