"""The stats server of router process 1 (``--fastrouter-stats``): one JSON document per connection.

The layout is uWSGI's (its corerouter stats server), so tools written for it keep working; it is always valid JSON
(docs/differences.md, "The stats JSON") and extra fields are only ever added. Counters are those of the serving process,
as in uWSGI. With ``--stats-http``, ``GET /metrics`` gets the same counters in Prometheus' text format. Each client is
a ``StatsExchange`` (stats/exchange.py) that the router's loop drives: a slow reader never blocks it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Any, Protocol

from uwsgirouter import __version__
from uwsgirouter.stats.exchange import JSON_TYPE, METRICS_PATH, METRICS_TYPE, encode_json, http_response
from uwsgirouter.stats.prometheus import router_metrics


class MapperStats(Protocol):
    """A mapper's part of the document (its ``stats()`` hook): static nodes, or the subscriptions."""

    def stats(self) -> dict[str, Any]: ...


class Router(Protocol):
    """What the document reads of the router process that serves it."""

    @property
    def sessions(self) -> Collection[object]: ...

    @property
    def mapper(self) -> MapperStats: ...


UWSGI_VERSION = "2.0.31"


def stats_document(worker: Router, names: Sequence[str], cheap: bool = False) -> dict[str, Any]:
    """The whole document, keys in uWSGI's order."""
    doc: dict[str, Any] = {
        "version": UWSGI_VERSION,
        "uwsgirouter_version": __version__,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "active_sessions": len(worker.sessions),
        "fastrouter": list(names),
    }
    doc.update(worker.mapper.stats())  # the mapper's part: static_nodes, or the subscriptions
    doc["cheap"] = 1 if cheap else 0
    return doc


def render(
    worker: Router,
    names: Sequence[str],
    http: bool = False,
    cheap: bool = False,
    path: str = "",
    minified: bool = False,
) -> bytes:
    """What one stats client gets: the JSON document, or with HTTP a reply with it or (``/metrics``) the metrics."""
    doc = stats_document(worker, names, cheap)
    if not http:
        return encode_json(doc, minified)
    if path == METRICS_PATH:
        return http_response(router_metrics(doc), METRICS_TYPE)
    return http_response(encode_json(doc, minified), JSON_TYPE)
