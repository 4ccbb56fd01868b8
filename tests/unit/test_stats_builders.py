"""The stats building blocks without processes: the master's document from the arbiter and heartbeats, the
Prometheus text (read back with prometheus_client's own parser), and one client exchange over a socketpair."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_arbiter import exited, make
from uwsgirouter.arbiter import APP, ROUTER
from uwsgirouter.heartbeat import Counters
from uwsgirouter.pause import PauseSwitch
from uwsgirouter.stats.document import MasterStats
from uwsgirouter.stats.exchange import DONE, READING, REPLY_WAIT_S, REQUEST_WAIT_S, WRITING, StatsExchange
from uwsgirouter.stats.prometheus import instance_metrics, router_metrics


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_worker_counters_go_on_across_respawns_and_add_up_live_processes() -> None:
    arbiter, fake = make(routers=0, apps=2)
    arbiter.spawn_all()
    first = next(pid for pid, w in arbiter.workers.items() if w.spec.number == 1)
    slot = arbiter.workers[first].spec.slot
    counters = Counters()
    counters.request_done(0.002, 100)
    counters.exceptions = 1
    arbiter.heartbeats.beat(slot, first, fake.now, 0.0, 3, counters)
    fake.now += 5
    fake.exits.append((first, exited(1)))
    arbiter.reap()
    arbiter.tick()  # respawns worker 1
    second = next(pid for pid, w in arbiter.workers.items() if w.spec.number == 1)
    busy = Counters()
    busy.request_done(0.001, 10)
    arbiter.heartbeats.beat(arbiter.workers[second].spec.slot, second, fake.now, fake.now, 2, busy)

    doc = MasterStats(arbiter, arbiter.heartbeats, [], 100).document()
    one, two = doc["workers"]
    assert (one["id"], one["pid"], one["requests"], one["delta_requests"]) == (1, second, 5, 2)
    assert (one["exceptions"], one["tx"], one["running_time"], one["respawn_count"]) == (1, 110, 3000, 2)
    assert one["status"] == "busy" and one["cores"][0]["in_request"] == 1
    assert one["avg_rt"] == 500  # uWSGI's (0 + 1000) // 2 for the live process
    assert (two["requests"], two["respawn_count"], two["status"]) == (0, 1, "idle")
    assert "fastrouters" not in doc
    json.dumps(doc)  # plain JSON types only


def test_router_only_master_lists_its_routers_as_workers() -> None:
    arbiter, _ = make(routers=1, apps=0)
    arbiter.spawn_all()
    doc = MasterStats(arbiter, arbiter.heartbeats, [], 100).document()
    assert [(w["id"], w["kind"]) for w in doc["workers"]] == [(1, ROUTER)]
    arbiter, _ = make(routers=1, apps=2)
    arbiter.spawn_all()
    doc = MasterStats(arbiter, arbiter.heartbeats, [], 100).document()
    assert [w["kind"] for w in doc["workers"]] == [APP, APP]
    assert [w["kind"] for w in doc["fastrouters"]] == [ROUTER]


def test_app_workers_show_cheap_and_pause_as_uwsgi_does() -> None:
    arbiter, fake = make(routers=1, apps=1)
    arbiter.spawn_all()
    pause = PauseSwitch()
    stats = MasterStats(arbiter, arbiter.heartbeats, [], 100, pause)
    pause.set(True)
    (worker,) = stats.document()["workers"]
    assert (worker["status"], worker["accepting"]) == ("pause", 0)
    assert stats.document()["fastrouters"][0]["status"] == "idle"  # routers are never paused
    pause.set(False)
    arbiter.go_cheap()
    fake.exits.append((next(pid for pid, w in arbiter.workers.items() if w.spec.kind == APP), exited(0)))
    arbiter.reap()
    (worker,) = stats.document()["workers"]
    assert (worker["status"], worker["pid"], worker["accepting"]) == ("cheap", 0, 0)


def test_listen_queue_reads_the_kernels_accept_queue() -> None:
    from uwsgirouter.sock import Listener
    from uwsgirouter.stats.document import StatsSocket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(7)
        clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
        try:
            arbiter, _ = make(routers=0, apps=1)
            listener = Listener(server, "127.0.0.1:x")
            doc = MasterStats(arbiter, arbiter.heartbeats, [StatsSocket(listener, False)], 100).document()
        finally:
            for client in clients:
                client.close()
    assert doc["sockets"][0]["queue"] == 3 and doc["sockets"][0]["max_queue"] == 7
    assert doc["listen_queue"] == 3 == doc["load"]


def test_instance_metrics_parse_and_carry_the_worker_counters() -> None:
    worker: dict[str, Any] = {
        "id": 2,
        "kind": "worker",
        "pid": 42,
        "accepting": 1,
        "requests": 7,
        "exceptions": 1,
        "tx": 350,
        "running_time": 2_500_000,
        "avg_rt": 1500,
        "respawn_count": 1,
        "harakiri_count": 0,
        "rss": 1 << 20,
        "vsz": 1 << 24,
        "status": "busy",
    }
    doc = {"listen_queue": 4, "sockets": [{"name": "127.0.0.1:3031", "queue": 4, "max_queue": 100}]}
    found = samples(instance_metrics({**doc, "workers": [worker]}))
    labels = (("kind", "worker"), ("worker", "2"))
    assert found["uwsgirouter_worker_requests_total", labels] == 7
    assert found["uwsgirouter_worker_running_seconds_total", labels] == 2.5
    assert found["uwsgirouter_worker_avg_response_seconds", labels] == 0.0015
    assert found["uwsgirouter_worker_rss_bytes", labels] == 1 << 20
    assert found["uwsgirouter_worker_status", tuple(sorted((*labels, ("status", "busy"))))] == 1
    assert found["uwsgirouter_worker_status", tuple(sorted((*labels, ("status", "idle"))))] == 0
    assert found["uwsgirouter_socket_listen_queue", (("socket", "127.0.0.1:3031"),)] == 4


def test_router_metrics_escape_keys_and_count_live_nodes() -> None:
    odd = 'a"b\\c\nd'
    doc = {
        "active_sessions": 3,
        "cheap": 0,
        "subscriptions": [
            {
                "key": odd,
                "hits": 9,
                "nodes": [
                    {"name": "127.0.0.1:1", "requests": 5, "failcnt": 1, "tx": 10, "rx": 20, "death_mark": 0},
                    {"name": "127.0.0.1:2", "requests": 4, "failcnt": 2, "tx": 0, "rx": 0, "death_mark": 1},
                ],
            }
        ],
        "subscription_packets_rejected": 6,
        "static_nodes": [{"name": "/tmp/n.sock", "hits": 2, "failcnt": 0, "tx": 1, "rx": 2, "death_mark": 0}],
    }
    found = samples(router_metrics(doc))
    node = (("key", odd), ("node", "127.0.0.1:1"))
    assert found["uwsgirouter_node_requests_total", node] == 5
    assert found["uwsgirouter_node_received_bytes_total", node] == 10
    assert found["uwsgirouter_node_sent_bytes_total", node] == 20
    assert found["uwsgirouter_node_up", (("key", odd), ("node", "127.0.0.1:2"))] == 0
    assert found["uwsgirouter_node_requests_total", (("key", ""), ("node", "/tmp/n.sock"))] == 2
    assert found["uwsgirouter_key_requests_total", (("key", odd),)] == 9
    assert found["uwsgirouter_nodes", (("state", "live"),)] == 2
    assert found["uwsgirouter_nodes", (("state", "dead"),)] == 1
    assert found["uwsgirouter_router_active_sessions", ()] == 3
    assert found["uwsgirouter_subscription_packets_rejected_total", ()] == 6


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    return ours, theirs


def test_plain_exchange_writes_at_once_and_http_reads_the_path_first() -> None:
    paths: list[str] = []

    def answer(path: str) -> bytes:
        paths.append(path)
        return b"doc:" + path.encode()

    ours, theirs = _pair()
    with ours, theirs:
        plain = StatsExchange(ours, False, answer, 0.0)
        assert plain.state == DONE and theirs.recv(100) == b"doc:"
    ours, theirs = _pair()
    with ours, theirs:
        http = StatsExchange(ours, True, answer, 0.0)
        assert http.state == READING
        theirs.sendall(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        http.on_readable(0.1)
        assert http.state == DONE and theirs.recv(100) == b"doc:/metrics"


def test_silent_http_client_gets_the_json_and_a_client_that_does_not_read_is_dropped() -> None:
    big = os.urandom(8 << 20)
    ours, theirs = _pair()
    with ours, theirs:
        exchange = StatsExchange(ours, True, lambda path: b"json" if not path else b"?", 0.0)
        assert exchange.deadline == REQUEST_WAIT_S
        exchange.on_deadline(REQUEST_WAIT_S)
        assert exchange.state == DONE and theirs.recv(100) == b"json"
    ours, theirs = _pair()
    with ours, theirs:
        exchange = StatsExchange(ours, False, lambda path: big, 0.0)
        assert exchange.state == WRITING  # the socket buffer is full; the reader reads nothing
        exchange.on_deadline(REPLY_WAIT_S - 0.1)
        assert exchange.state == WRITING
        exchange.on_deadline(REPLY_WAIT_S)
        assert exchange.state == DONE
