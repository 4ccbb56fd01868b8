"""The Emperor's stats server (``--emperor-stats``): uWSGI's Emperor document, one entry per vassal.

The keys, their order and their types are those of uWSGI 2.0's ``emperor_send_stats`` (core/emperor.c):
``version``, ``pid``, ``uid``, ``gid``, ``cwd``, ``emperor`` (the --emperor values), ``emperor_tyrant`` and
``throttle_level`` (always 0 in uWSGI 2.0), ``vassals`` (on-demand vassals waiting for a connection included,
with pid -1) and ``blacklist`` (the throttled vassals). Times are whole seconds of the wall clock, flags 0 or
1. uwsgitop shows such a document as its vassal list. Clients are served as the master's stats server serves
them (stats/exchange.py): plain JSON, or an HTTP reply with ``--stats-http``; ``--stats-minified`` applies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from uwsgirouter.address import Address, FdAddress, SharedSocketRef
from uwsgirouter.emperor.scanner import Scanner
from uwsgirouter.emperor.throttle import Blacklisted
from uwsgirouter.emperor.vassal import Vassal
from uwsgirouter.errors import ConfigError
from uwsgirouter.services.stats import StatsServer
from uwsgirouter.sock import Listener, bind_listener
from uwsgirouter.stats.document import UWSGI_VERSION
from uwsgirouter.stats.exchange import JSON_TYPE, encode_json, http_response


class EmperorState(Protocol):
    """What the document reads of the Emperor (``service.Emperor``)."""

    @property
    def scanners(self) -> Sequence[Scanner]: ...
    @property
    def vassals(self) -> Mapping[str, Vassal]: ...
    @property
    def sleeping(self) -> Mapping[str, Vassal]: ...
    @property
    def blacklist(self) -> Mapping[str, Blacklisted]: ...


def emperor_document(emperor: EmperorState) -> dict[str, Any]:
    """uWSGI's Emperor stats document, from what the Emperor knows now."""
    wall, mono = time.time(), time.monotonic()
    specs = {str(scanner): scanner.spec for scanner in emperor.scanners}

    def vassal(item: Vassal) -> dict[str, Any]:
        cursed = int(wall - (mono - item.cursed_at)) if item.cursed_at else 0  # kept on the monotonic clock
        return {
            "id": item.name,
            "pid": item.pid,
            "born": int(item.born),
            "last_mod": item.last_mod // 1_000_000_000,
            "last_heartbeat": int(item.last_heartbeat),
            "loyal": int(item.loyal),
            "ready": int(item.ready),
            "accepting": int(item.accepting),
            "last_loyal": int(item.last_loyal),
            "last_ready": int(item.last_ready),
            "last_accepting": int(item.last_accepting),
            "first_run": int(item.first_run),
            "last_run": int(item.last_run),
            "cursed": cursed,
            "zerg": 0,
            "on_demand": item.listener.name if item.listener is not None else "",
            "uid": 0,  # uWSGI fills these in Tyrant mode only
            "gid": 0,
            "monitor": specs.get(item.monitor, item.monitor),
            "respawns": item.respawns,
        }

    return {
        "version": UWSGI_VERSION,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": _cwd(),
        "emperor": [scanner.spec for scanner in emperor.scanners],
        "emperor_tyrant": 0,
        "throttle_level": 0,
        "vassals": [vassal(item) for item in [*emperor.vassals.values(), *emperor.sleeping.values()]],
        "blacklist": [
            {
                "id": name,
                "throttle_level": int(record.level * 1000),  # milliseconds, as uWSGI shows it
                "attempt": record.attempt,
                "first_attempt": int(record.first_attempt),
                "last_attempt": int(record.last_attempt),
            }
            for name, record in emperor.blacklist.items()
        ],
    }


class EmperorStatsServer(StatsServer):
    """The master's stats server, serving the Emperor's document instead of the master's."""

    name = "the Emperor stats server"

    def __init__(self, listener: Listener, emperor: EmperorState, http: bool, minified: bool) -> None:
        # not StatsServer.__init__: it takes the master's document; everything else is the same
        self.listener = listener
        self.emperor = emperor
        self.http = http
        self.minified = minified
        self.clients = {}

    def answer(self, path: str) -> bytes:
        body = encode_json(emperor_document(self.emperor), self.minified)
        return http_response(body, JSON_TYPE) if self.http else body

    def close(self) -> None:
        super().close()
        self.listener.close()


def bind_emperor_stats(address: Address, backlog: int) -> Listener:
    """Bind ``--emperor-stats``: host:port, a UNIX path or @abstract, as --stats; a ``ConfigError`` names it."""
    if isinstance(address, (FdAddress, SharedSocketRef)):
        raise ConfigError(f"--emperor-stats {address}: an address to bind is needed (host:port, a path, @name)")
    try:
        return bind_listener(address, backlog=backlog)
    except ConfigError as exc:
        raise ConfigError(f"--emperor-stats: {exc}") from None


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""
