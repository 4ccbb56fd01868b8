"""The stats server of router process 1 (``--fastrouter-stats``): one JSON document per connection.

The layout is uWSGI's (its corerouter stats server), so tools written for it keep working; it is always valid JSON
(docs/differences.md, "The stats JSON") and extra fields are only ever added. Counters are those of the serving process,
as in uWSGI. With ``--stats-http``, ``GET /metrics`` gets the same counters in Prometheus' text format. Each client is
a ``StatsExchange`` (stats/exchange.py) that the router's loop drives: a slow reader never blocks it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from uwsgirouter import __version__
from uwsgirouter.router.mappers import StaticMapper
from uwsgirouter.stats.exchange import JSON_TYPE, METRICS_PATH, METRICS_TYPE, encode_json, http_response
from uwsgirouter.stats.prometheus import router_metrics
from uwsgirouter.subscription.mapper import SubscriptionMapper

if TYPE_CHECKING:
    from uwsgirouter.router.worker import RouterWorker

UWSGI_VERSION = "2.0.31"


def djb33x_bucket(key: bytes) -> int:
    """uWSGI's hash bucket of a subscription key (``djb33x % 65535``), shown as "hash"."""
    value = 5381
    for byte in key:
        value = ((value * 33) ^ byte) & 0xFFFFFFFF
    return value % 65535


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def stats_document(worker: RouterWorker, names: Sequence[str], cheap: bool = False) -> dict[str, Any]:
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
    mapper = worker.mapper
    wall_offset = time.time() - time.monotonic()
    if isinstance(mapper, StaticMapper):
        doc["static_nodes"] = [
            {
                "name": n.name,
                "hits": n.stats.hits,
                "grace": int(n.dead_until + wall_offset) if n.dead_until else 0,
                "failcnt": n.stats.failures,
                "tx": n.stats.bytes_from_node,
                "rx": n.stats.bytes_to_node,
                "death_mark": 1 if n.dead_until > time.monotonic() else 0,
            }
            for n in mapper.nodes
        ]
    if isinstance(mapper, SubscriptionMapper):
        mapper.refresh()
        subscriptions = []
        for key, pool in mapper.all_pools().items():
            nodes = []
            for node in pool.nodes:
                cores, load, last_check, failcnt = (pool.details.get(node) or [0, 0, 0, 0])[:4]
                nodes.append(
                    {
                        "name": node.name,
                        "modifier1": node.modifier1,
                        "modifier2": node.modifier2,
                        "last_check": last_check,
                        "pid": 0,
                        "uid": 0,
                        "gid": 0,
                        "requests": node.stats.hits,
                        "last_requests": 0,
                        "tx": node.stats.bytes_from_node,
                        "rx": node.stats.bytes_to_node,
                        "cores": cores,
                        "load": load,
                        "weight": pool.weights.get(node, 1),
                        "wrr": mapper.current.get(node, 0),
                        "ref": mapper.references.get(node, 0),
                        "failcnt": max(failcnt, node.stats.failures),
                        "death_mark": 1 if node in pool.dead else 0,
                    }
                )
            subscriptions.append(
                {"key": _text(key), "hash": djb33x_bucket(key), "hits": pool.hits, "sni_enabled": 0, "nodes": nodes}
            )
        doc["subscriptions"] = subscriptions
        doc["subscription_packets_rejected"] = mapper.counters.get("rejected", 0)
        doc["subscription_keys_displaced"] = mapper.counters.get("displaced", 0)
    doc["cheap"] = 1 if cheap else 0
    return doc


def render(
    worker: RouterWorker,
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
