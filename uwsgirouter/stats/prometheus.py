"""The stats documents in Prometheus' text exposition format (version 0.0.4), for ``GET /metrics``.

Built from the same JSON documents the stats servers send, so the two never disagree: ``router_metrics``
from a router's (``--fastrouter-stats``: per key and node), ``instance_metrics`` from the master's
(``--stats``: per worker). Names and labels are listed in docs/monitoring.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PREFIX = "uwsgirouter_"
Sample = tuple[Mapping[str, str], float]


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Exposition:
    """Families in the order added; each with its HELP and TYPE lines, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str, samples: Iterable[Sample]) -> None:
        name = PREFIX + name
        self.lines.append(f"# HELP {name} {help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                text = ",".join(f'{key}="{_label_value(str(val))}"' for key, val in labels.items())
                self.lines.append(f"{name}{{{text}}} {_number(value)}")
            else:
                self.lines.append(f"{name} {_number(value)}")

    def gauge(self, name: str, help: str, value: float) -> None:
        self.family(name, "gauge", help, [({}, value)])

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def router_metrics(doc: Mapping[str, Any]) -> bytes:
    """A router's stats document (router/stats.py) as metrics: sessions, and per key and node requests,
    failures, bytes and liveness. Static nodes (--fastrouter-to) have the key ''."""
    out = Exposition()
    out.gauge("router_active_sessions", "Client connections the router process serves now.", doc["active_sessions"])
    out.gauge("router_cheap", "1 while the router is in cheap mode (accepting nothing).", doc.get("cheap", 0))
    nodes: list[tuple[dict[str, str], Mapping[str, Any]]] = []
    for node in doc.get("static_nodes", ()):
        nodes.append(({"key": "", "node": node["name"]}, node))
    keys = doc.get("subscriptions", ())
    for entry in keys:
        for node in entry["nodes"]:
            nodes.append(({"key": entry["key"], "node": node["name"]}, node))
    if "subscriptions" in doc:
        out.family(
            "key_requests_total",
            "counter",
            "Requests routed to each subscription key.",
            [({"key": entry["key"]}, entry["hits"]) for entry in keys],
        )
    counters = (
        ("node_requests_total", "Requests sent to the node.", "requests", "hits"),
        ("node_failures_total", "Failed connections to (or requests on) the node.", "failcnt", ""),
        ("node_received_bytes_total", "Bytes received from the node.", "tx", ""),
        ("node_sent_bytes_total", "Bytes sent to the node.", "rx", ""),
    )
    for name, help, field, other in counters:
        out.family(name, "counter", help, [(labels, node.get(field, node.get(other, 0))) for labels, node in nodes])
    out.family(
        "node_up",
        "gauge",
        "1 while the node is live, 0 while it is marked dead.",
        [(labels, 0 if node.get("death_mark") else 1) for labels, node in nodes],
    )
    live = sum(1 for _, node in nodes if not node.get("death_mark"))
    out.family(
        "nodes",
        "gauge",
        "Nodes the router knows, live and dead.",
        [({"state": "live"}, live), ({"state": "dead"}, len(nodes) - live)],
    )
    if "subscription_packets_rejected" in doc:
        out.family(
            "subscription_packets_rejected_total",
            "counter",
            "Subscription packets refused (malformed, badly signed, replayed).",
            [({}, doc["subscription_packets_rejected"])],
        )
    return out.text()


#: (metric, type, help, field of a worker entry, scale)
_WORKER_METRICS = (
    ("worker_requests_total", "counter", "Requests served by the worker id (all its processes).", "requests", 1),
    ("worker_exceptions_total", "counter", "Exceptions raised by the app in the worker id.", "exceptions", 1),
    ("worker_tx_bytes_total", "counter", "Response bytes sent by the worker id.", "tx", 1),
    ("worker_running_seconds_total", "counter", "Time spent in requests by the worker id.", "running_time", 1e-6),
    ("worker_avg_response_seconds", "gauge", "Running average of the response time (uWSGI's).", "avg_rt", 1e-6),
    ("worker_respawns_total", "counter", "Processes started for the worker id.", "respawn_count", 1),
    ("worker_harakiri_total", "counter", "Processes of the worker id killed by harakiri.", "harakiri_count", 1),
    ("worker_rss_bytes", "gauge", "Resident memory of the worker's process.", "rss", 1),
    ("worker_vsz_bytes", "gauge", "Virtual memory of the worker's process.", "vsz", 1),
    ("worker_accepting", "gauge", "1 while the worker accepts connections.", "accepting", 1),
    ("worker_pid", "gauge", "Process id of the worker (0 while it is being respawned).", "pid", 1),
)
STATUSES = ("idle", "busy", "cheap", "pause")


def _workers(doc: Mapping[str, Any]) -> list[tuple[dict[str, str], Mapping[str, Any]]]:
    found: list[tuple[dict[str, str], Mapping[str, Any]]] = []
    for key in ("workers", "fastrouters"):
        for worker in doc.get(key, ()):
            found.append(({"kind": worker.get("kind", "worker"), "worker": str(worker["id"])}, worker))
    return found


def instance_metrics(doc: Mapping[str, Any]) -> bytes:
    """The master's stats document (stats/master.py) as metrics: the listen queue and each worker id."""
    out = Exposition()
    out.gauge("listen_queue", "Connections waiting in the fullest listen queue.", doc["listen_queue"])
    sockets = doc.get("sockets", ())
    out.family(
        "socket_listen_queue",
        "gauge",
        "Connections waiting to be accepted on the socket.",
        [({"socket": s["name"]}, s["queue"]) for s in sockets],
    )
    out.family(
        "socket_listen_queue_max",
        "gauge",
        "The socket's listen backlog.",
        [({"socket": s["name"]}, s["max_queue"]) for s in sockets],
    )
    workers = _workers(doc)
    for name, kind, help, field, scale in _WORKER_METRICS:
        out.family(name, kind, help, [(labels, worker[field] * scale) for labels, worker in workers])
    out.family(
        "worker_status",
        "gauge",
        "1 for the worker's current status (idle, busy, cheap, pause).",
        [
            ({**labels, "status": status}, 1 if worker["status"] == status else 0)
            for labels, worker in workers
            for status in STATUSES
        ],
    )
    return out.text()
