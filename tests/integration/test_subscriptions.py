"""The subscription system: the seed's "Way 4" and "Mapping files", run as written, and what users rely on.

Addresses of the seed move to 127.0.0.1 and free ports. The combinations are real uWSGI 2.0.31
instances announcing to uwsgirouter, uwsgirouter instances announcing to uwsgirouter, and uwsgirouter
instances announcing to a real uWSGI fastrouter. Then load balancing by weight, a node killed with
-9 (and lrc/wlrc after a refused connect, with the stats' ref and failcnt), a router worker killed
with -9 (the table survives, docs/differences.md, "The node table on reload"), a flood of hostile datagrams
(docs/differences.md, "Subscription packets") and how rejections are
logged, unsubscribes at shutdown, and ``--fastrouter-resubscribe`` without the loop of uWSGI issue #871.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import pytest

from tests.support import (
    APPS,
    UWSGI,
    Proc,
    ProcessManager,
    Response,
    can_connect,
    connect,
    free_port,
    read_all,
    request_vars,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
INSTANCE_APP = str(APPS / "instance_app.py")
UWSGIROUTER = "uwsgirouter"
REAL_UWSGI = "uwsgi"
#: What an instance (uWSGI or uwsgirouter) logs when a request carries a modifier1 it has no plugin for.
UNAVAILABLE_MODIFIER_5 = "-- unavailable modifier requested: 5 --"
MIB = 1 << 20


# -- helpers --------------------------------------------------------------------------------------------------


def tcp_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held while choosing, so none repeats)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def instance_name(response: Response) -> str | None:
    """The NAME of ``instance=NAME ...`` in a 200 answer of tests/apps/instance_app.py, else None."""
    match = re.match(rb"instance=(\S+) ", response.body)
    return match.group(1).decode() if response.status == 200 and match else None


@dataclass
class Router:
    """A router with a subscription server and a stats server, uwsgirouter or real uWSGI."""

    proc: Proc
    port: int
    subscription_port: int
    stats_port: int

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    @property
    def server(self) -> str:
        """The subscription server as instances name it in ``--subscribe-to SERVER:KEY``."""
        return f"{LOOPBACK}:{self.subscription_port}"

    def request(self, host: str, timeout: float = 5.0) -> Response:
        return uwsgi_request(self.address, request_vars(host), timeout=timeout)

    def stats(self) -> dict[str, Any]:
        with connect((LOOPBACK, self.stats_port), 5.0) as sock:
            document: dict[str, Any] = json.loads(read_all(sock))
        return document

    def keys(self) -> dict[str, dict[str, dict[str, Any]]]:
        """key -> {node name -> node}, from the stats server."""
        return {
            pool["key"]: {node["name"]: node for node in pool["nodes"]}
            for pool in self.stats().get("subscriptions", [])
        }

    def nodes(self, key: str) -> dict[str, dict[str, Any]]:
        return self.keys().get(key, {})

    def log_has_new_node(self, key: str, address: str) -> bool:
        return bool(new_node_pattern(key, address).search(self.proc.log()))

    def wait_node(self, key: str, address: str, timeout: float = 10.0) -> None:
        """The router logged ``KEY => new node: ADDR``."""
        wait_until(
            lambda: self.log_has_new_node(key, address) or not self.proc.alive(),
            timeout,
            what=f"{key} => new node: {address}",
        )
        assert self.proc.alive(), self.proc.log()

    def wait_routing_view(self, key: str, addresses: Sequence[str], timeout: float = 10.0) -> dict[str, Any]:
        """The router's own view (its stats) lists exactly ``addresses`` for ``key``, all alive."""

        def ready() -> dict[str, Any] | None:
            nodes = self.nodes(key)
            if sorted(nodes) == sorted(addresses) and not any(n["death_mark"] for n in nodes.values()):
                return nodes
            return None

        nodes: dict[str, Any] = wait_until(ready, timeout, interval=0.05, what=f"{key} served by {addresses}")
        return nodes


def new_node_pattern(key: str, address: str = r"\S+") -> re.Pattern[str]:
    """``KEY => new node: ADDR``, as both uwsgirouter and uWSGI log it (ADDR may be a regex)."""
    escaped = address if address == r"\S+" else re.escape(address)
    return re.compile(rf"(?m)\s{re.escape(key)} => new node: ({escaped})$")


def start_router(procs: ProcessManager, kind: str = UWSGIROUTER, *extra: str) -> Router:
    """``--fastrouter 127.0.0.1:P --fastrouter-subscription-server 127.0.0.1:U --fastrouter-stats 127.0.0.1:S``."""
    port, stats_port = tcp_ports(2)
    subscription_port = free_port(socket.SOCK_DGRAM)
    args = [
        "--fastrouter",
        f"{LOOPBACK}:{port}",
        "--fastrouter-subscription-server",
        f"{LOOPBACK}:{subscription_port}",
        "--fastrouter-stats",
        f"{LOOPBACK}:{stats_port}",
        *extra,
    ]
    if kind == UWSGIROUTER:
        proc = procs.router(*args, wait_for=(LOOPBACK, port))
    else:
        assert UWSGI, "uWSGI 2.0.31 is not installed (scripts/install)"
        proc = procs.start([UWSGI, *args, "--master", "--die-on-term"], "uwsgi-fastrouter")
    wait_until(
        lambda: (can_connect((LOOPBACK, port)) and can_connect((LOOPBACK, stats_port))) or not proc.alive(),
        15,
        what=f"{kind} fastrouter on {port} with stats on {stats_port}",
    )
    assert proc.alive(), proc.log()
    return Router(proc, port, subscription_port, stats_port)


def start_instance(procs: ProcessManager, kind: str, name: str, socket_arg: str, *args: str) -> Proc:
    """An instance serving tests/apps/instance_app.py as NAME: ``--socket SOCKET_ARG ARGS`` (real uWSGI or ours).

    Waits until it listens when SOCKET_ARG names a fixed port.
    """
    host, _, port = socket_arg.rpartition(":")
    wait_for = (host or LOOPBACK, int(port)) if port.isdigit() and int(port) else None
    if kind == REAL_UWSGI:
        return procs.uwsgi_backend(socket_arg, name, *args, wait_for=wait_for)
    return procs.router(
        "--socket", socket_arg, *args, "--wsgi-file", INSTANCE_APP, env={"INSTANCE": name}, wait_for=wait_for
    )


def listening_ports(proc: Proc) -> set[int]:
    """TCP ports the process tree of ``proc`` listens on."""
    ports: set[int] = set()
    for member in [psutil.Process(proc.pid), *proc.children()]:
        try:
            connections = member.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        ports.update(c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN)
    return ports


def router_worker_pid(router: Router) -> int | None:
    """Pid of the ``uwsgirouter fastrouter 1`` process forked by the router's master."""
    for child in router.proc.children():
        try:
            if "fastrouter 1" in " ".join(child.cmdline()):
                return int(child.pid)
        except psutil.NoSuchProcess:
            continue
    return None


def announce(router: Router, key: str, address: str, unsubscribe: bool = False) -> None:
    """One subscription datagram as a uWSGI 2.0 node sends it (modifier1 224; modifier2 1 = unsubscribe)."""
    pairs = [("key", key), ("address", address), ("modifier1", "0"), ("modifier2", "0")]
    pairs += [("cores", "1"), ("load", "0"), ("weight", "0")]
    packet = uwsgi_packet(pairs, modifier1=224, modifier2=1 if unsubscribe else 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(packet, (LOOPBACK, router.subscription_port))


class RequestLoop:
    """Sequential requests for one key in a thread, each outcome recorded as (start time, instance or error)."""

    def __init__(self, router: Router, host: str = "example.com", pause: float = 0.004) -> None:
        self.router = router
        self.host = host
        self.pause = pause
        self.results: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-loop", daemon=True)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = self.router.request(self.host)
                outcome = instance_name(response) or f"error: {response.raw[:120]!r}"
            except OSError as exc:
                outcome = f"error: {exc!r}"
            self.results.append((started, outcome))
            self._stop.wait(self.pause)

    def served_by(self, name: str, since: float = 0.0) -> int:
        return sum(1 for started, outcome in list(self.results) if outcome == name and started >= since)

    def since(self, moment: float) -> list[str]:
        return [outcome for started, outcome in list(self.results) if started >= moment]

    def failures(self) -> list[tuple[float, str]]:
        """(start time, error) of every request that did not get an instance's answer."""
        return [(started, outcome) for started, outcome in list(self.results) if outcome.startswith("error")]


# -- 1. the seed's "Way 4" and "Mapping files", as written --------------------------------------------------

#: (instances, router): real uWSGI instances -> uwsgirouter, ours -> ours, ours -> real uWSGI fastrouter.
COMBINATIONS = [
    pytest.param(REAL_UWSGI, UWSGIROUTER, id="uwsgi-instances-to-uwsgirouter"),
    pytest.param(UWSGIROUTER, UWSGIROUTER, id="uwsgirouter-instances-to-uwsgirouter"),
    pytest.param(UWSGIROUTER, REAL_UWSGI, id="uwsgirouter-instances-to-uwsgi"),
]


@pytest.mark.parametrize(("instances", "router_kind"), COMBINATIONS)
def test_way4_routes_each_key_to_the_instance_that_subscribed_it(
    procs: ProcessManager, instances: str, router_kind: str
) -> None:
    router = start_router(procs, router_kind)
    server = router.server
    port_one, port_two = tcp_ports(2)
    one, two = f"{LOOPBACK}:{port_one}", f"{LOOPBACK}:{port_two}"
    # uwsgi --socket :3031 -M --subscribe-to 192.168.0.100:7000:example.com
    start_instance(procs, instances, "one", one, "-M", "--subscribe-to", f"{server}:example.com")
    # uwsgi --socket :3032 -M --subscribe-to 192.168.0.100:7000:unbit.it,5 --subscribe-to 192.168.0.100:7000:uwsgi.it
    second = start_instance(
        procs,
        instances,
        "two",
        two,
        "-M",
        "--subscribe-to",
        f"{server}:unbit.it,5",
        "--subscribe-to",
        f"{server}:uwsgi.it",
    )
    router.wait_node("example.com", one)
    router.wait_node("unbit.it", two)
    router.wait_node("uwsgi.it", two)

    response = router.request("example.com")
    assert response.status == 200 and b"instance=one host=example.com" in response.body, response.raw
    response = router.request("uwsgi.it")
    assert response.status == 200 and b"instance=two host=uwsgi.it" in response.body, response.raw
    assert instance_name(router.request("unknown.example.org")) is None

    # ",5": the node of unbit.it carries modifier1 5, the same instance's uwsgi.it node 0
    keys = router.keys()
    assert {k: {n: node["modifier1"] for n, node in nodes.items()} for k, nodes in keys.items()} == {
        "example.com": {one: 0},
        "unbit.it": {two: 5},
        "uwsgi.it": {two: 0},
    }
    # ... and requests for unbit.it reach instance two with modifier1 5, which a WSGI-only instance refuses
    assert UNAVAILABLE_MODIFIER_5 not in second.log()
    response = router.request("unbit.it")
    assert instance_name(response) is None, response.raw
    wait_until(lambda: UNAVAILABLE_MODIFIER_5 in second.log(), 5, what="instance two refusing modifier1 5")
    if router_kind == UWSGIROUTER:
        assert response.status == 502 and b"unbit.it" in response.body, (
            response.raw
        )  # docs/differences.md, "Routing failure"


@pytest.mark.parametrize(("instances", "router_kind"), COMBINATIONS)
def test_way4_port_zero_instance_announces_its_real_port(
    procs: ProcessManager, instances: str, router_kind: str
) -> None:
    router = start_router(procs, router_kind)
    # uwsgi --socket 192.168.0.100:0 -M --subscribe-to 192.168.0.100:7000:example.com
    instance = start_instance(
        procs, instances, "zero", f"{LOOPBACK}:0", "-M", "--subscribe-to", f"{router.server}:example.com"
    )
    pattern = new_node_pattern("example.com")
    match = wait_until(
        lambda: pattern.search(router.proc.log()) or not instance.alive(), 15, what="the port-0 instance's announce"
    )
    assert instance.alive(), instance.log()
    announced = match.group(1)
    host, _, port = announced.rpartition(":")
    assert host == LOOPBACK and port.isdigit() and int(port) != 0, announced
    assert int(port) in listening_ports(instance)
    wait_until(lambda: can_connect((LOOPBACK, int(port))), 15, what="the port-0 instance listening")

    response = router.request("example.com")
    assert response.status == 200 and b"instance=zero host=example.com" in response.body, response.raw
    assert list(router.nodes("example.com")) == [announced]


def test_way4_socket_without_host_announces_colon_port_and_routes(procs: ProcessManager) -> None:
    """The seed's ``--socket :3031`` is announced as ``:3031`` (uWSGI keeps the empty host): routers must reach it.

    Binding every interface is not allowed here, so the real uWSGI instance listens on 127.0.0.1 and
    announces that very name explicitly (``ADDR=SERVER:KEY``).
    """
    router = start_router(procs)
    port = tcp_ports(1)[0]
    start_instance(
        procs, REAL_UWSGI, "colon", f"{LOOPBACK}:{port}", "-M", "--subscribe-to", f":{port}={router.server}:example.com"
    )
    router.wait_node("example.com", f":{port}")
    response = router.request("example.com")
    assert response.status == 200 and b"instance=colon host=example.com" in response.body, response.raw


MAPPINGS = """\
# mappings.txt
unbit.it
unbit.it:8000,5
uwsgi.it
projects.unbit.it
"""


@pytest.mark.parametrize(("instances", "router_kind"), COMBINATIONS)
def test_mapping_file_subscribes_every_key(
    procs: ProcessManager, tmp_path: Path, instances: str, router_kind: str
) -> None:
    (tmp_path / "mappings.txt").write_text(MAPPINGS)  # processes run in tmp_path: "@mappings.txt" as in the seed
    router = start_router(procs, router_kind)
    address = f"{LOOPBACK}:{tcp_ports(1)[0]}"
    # uwsgi --socket :3031 -M --subscribe-to 192.168.0.100:7000:@mappings.txt
    instance = start_instance(
        procs, instances, "mapped", address, "-M", "--subscribe-to", f"{router.server}:@mappings.txt"
    )
    for key in ("unbit.it", "unbit.it:8000", "uwsgi.it", "projects.unbit.it"):
        router.wait_node(key, address)

    keys = router.keys()
    assert {k: {n: node["modifier1"] for n, node in nodes.items()} for k, nodes in keys.items()} == {
        "unbit.it": {address: 0},
        "unbit.it:8000": {address: 5},
        "uwsgi.it": {address: 0},
        "projects.unbit.it": {address: 0},
    }
    assert "mappings.txt =>" not in router.proc.log()  # the comment line is no key
    for host in ("unbit.it", "uwsgi.it", "projects.unbit.it"):
        response = router.request(host)
        assert response.status == 200 and f"instance=mapped host={host} ".encode() in response.body, response.raw
    assert UNAVAILABLE_MODIFIER_5 not in instance.log()
    assert instance_name(router.request("unbit.it:8000")) is None
    wait_until(lambda: UNAVAILABLE_MODIFIER_5 in instance.log(), 5, what="the instance refusing modifier1 5")


# -- 2. load balancing by weight -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "router_kind"), COMBINATIONS)
@pytest.mark.parametrize("weights", [(None, None), (1, 3)], ids=["default-weights", "weights-1-3"])
def test_two_instances_on_one_key_share_the_traffic_by_weight(
    procs: ProcessManager, kind: str, router_kind: str, weights: tuple[int | None, int | None]
) -> None:
    router = start_router(procs, router_kind)
    addresses = [f"{LOOPBACK}:{port}" for port in tcp_ports(2)]
    for name, address, weight in zip(("a", "b"), addresses, weights, strict=True):
        extra = ("--weight", str(weight)) if weight is not None else ()
        start_instance(procs, kind, name, address, "-M", "--subscribe-to", f"{router.server}:example.com", *extra)
    for address in addresses:
        router.wait_node("example.com", address)
    nodes = router.wait_routing_view("example.com", addresses)
    assert [nodes[a]["weight"] for a in addresses] == [w or 1 for w in weights]

    counts = Counter(instance_name(router.request("example.com")) or "error" for _ in range(400))
    if weights == (None, None):
        assert set(counts) == {"a", "b"} and all(180 <= counts[n] <= 220 for n in "ab"), counts
    else:
        assert counts == {"a": 100, "b": 300}


def test_weights_2_3_6_are_exact_and_interleaved_through_real_nodes(procs: ProcessManager) -> None:
    """Real uWSGI instances announcing weights 2, 3 and 6, in that order: every cycle of 11 requests gives
    each its weight exactly (uWSGI's own wrr gives 1:1:3 here) in smooth wrr's order (worked out by hand in
    tests/unit/test_subscription_table.py, CYCLE_2_3_6)."""
    router = start_router(procs, UWSGIROUTER)
    addresses = [f"{LOOPBACK}:{port}" for port in tcp_ports(3)]
    weights = {"a": 2, "b": 3, "c": 6}
    for (name, weight), address in zip(weights.items(), addresses, strict=True):
        # One after the other, so the table (and the tie-break) has them in the order a, b, c.
        start_instance(
            procs, REAL_UWSGI, name, address, "--subscribe-to", f"{router.server}:example.com", "--weight", str(weight)
        )
        router.wait_node("example.com", address)
    nodes = router.wait_routing_view("example.com", addresses)
    assert [nodes[a]["weight"] for a in addresses] == [2, 3, 6]

    picks = [instance_name(router.request("example.com")) or "error" for _ in range(33)]
    for number in range(3):
        cycle = picks[number * 11 : (number + 1) * 11]
        assert Counter(cycle) == weights, f"cycle {number}: {picks}"
    assert picks == ["c", "b", "c", "a", "c", "b", "c", "a", "c", "b", "c"] * 3, picks


@pytest.mark.parametrize("kind", [REAL_UWSGI, UWSGIROUTER])
def test_subscribe2_check_file_silences_announces_until_it_is_removed(
    procs: ProcessManager, tmp_path: Path, kind: str
) -> None:
    """``--subscribe2 ...,check=FILE``: no announce while FILE exists; once removed, announces come again (uWSGI
    2.0.31 behaves the same, the first parameter)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((LOOPBACK, 0))
        server.settimeout(0.2)
        flag = tmp_path / "maintenance"
        flag.touch()
        (port,) = tcp_ports(1)
        start_instance(
            procs, kind, "checked", f"{LOOPBACK}:{port}", "-M", "--subscribe-freq", "1",
            "--subscribe2", f"server={LOOPBACK}:{server.getsockname()[1]},key=example.com,check={flag}",
        )  # fmt: skip

        def announces(seconds: float) -> int:
            """Datagrams received within ``seconds`` (a window for an absence: nothing to wait for)."""
            count, end = 0, time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    server.recv(4096)
                    count += 1
                except TimeoutError:
                    pass
            return count

        # The instance is up: its first announce, the one a second later and two more ticks fall in here.
        assert announces(3.0) == 0, "announced while the check file exists"
        flag.unlink()
        server.settimeout(10)
        packet = server.recv(4096)
        assert b"example.com" in packet and f"{LOOPBACK}:{port}".encode() in packet


# -- 3. a node killed with -9, then restarted -----------------------------------------------------------------


def test_node_killed_with_sigkill_leaves_after_the_tolerance_and_comes_back(procs: ProcessManager) -> None:
    router = start_router(procs, UWSGIROUTER, "--subscription-tolerance", "3")
    port_a, port_b = tcp_ports(2)
    a, b = f"{LOOPBACK}:{port_a}", f"{LOOPBACK}:{port_b}"
    subscribe = ("-M", "--subscribe-to", f"{router.server}:example.com", "--subscribe-freq", "1")
    start_instance(procs, UWSGIROUTER, "a", a, *subscribe)
    victim = start_instance(procs, UWSGIROUTER, "b", b, *subscribe)
    router.wait_node("example.com", a)
    router.wait_node("example.com", b)
    router.wait_routing_view("example.com", [a, b])
    removed = f"example.com => removing {b} (no announce received in 3 seconds)"

    with RequestLoop(router) as loop:
        wait_until(lambda: loop.served_by("b") >= 10, 10, what="instance b serving")
        members = [psutil.Process(victim.pid), *victim.children()]
        kill_sent_at = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        _, alive = psutil.wait_procs(members, timeout=5)
        assert not alive, alive
        killed_at = time.monotonic()  # every process of b is gone, its listening socket closed
        wait_until(lambda: removed in router.proc.log(), 10, what=removed)
        assert time.monotonic() - killed_at >= 1.5  # the tolerance, not the failure, removed it
        router.wait_routing_view("example.com", [a])
        assert set(loop.since(killed_at + 0.5)) <= {"a"}

        start_instance(procs, UWSGIROUTER, "b", b, *subscribe)  # on the same port
        wait_until(
            lambda: len(new_node_pattern("example.com", b).findall(router.proc.log())) == 2,
            10,
            what="b announced again",
        )
        restarted_at = time.monotonic()
        wait_until(lambda: loop.served_by("b", since=restarted_at) >= 10, 10, what="b taking traffic again")
        router.wait_routing_view("example.com", [a, b])
    # at most the one request b was answering when it died; nothing sent afterwards fails (the router
    # retries the other node on a refused connect)
    failures = loop.failures()
    assert len(failures) <= 1, f"{len(failures)} of {len(loop.results)} requests failed: {failures}"
    assert all(started < killed_at for started, _ in failures), (kill_sent_at, killed_at, failures)


LEAKED_REFERENCE = (
    "a refused connect leaks the node's in-flight reference in the router worker: SubscriptionMapper.pick counts "
    "every node it hands out, but only the session's last node is released (worker.session_ended -> mapper.done)"
)


@pytest.mark.parametrize("algo", ["lrc", "wlrc"])
def test_node_back_after_a_refused_connect_gets_traffic_again(procs: ProcessManager, algo: str) -> None:
    router = start_router(procs, UWSGIROUTER, "--subscription-algo", algo)
    port_a, port_b = tcp_ports(2)
    a, b = f"{LOOPBACK}:{port_a}", f"{LOOPBACK}:{port_b}"
    subscribe = ("-M", "--subscribe-to", f"{router.server}:example.com", "--subscribe-freq", "1")
    start_instance(procs, UWSGIROUTER, "a", a, *subscribe)
    victim = start_instance(procs, UWSGIROUTER, "b", b, *subscribe)
    router.wait_routing_view("example.com", [a, b])
    before = Counter(instance_name(router.request("example.com")) for _ in range(20))
    assert before["a"] >= 5 and before["b"] >= 5, before  # sequential requests: both nodes have no reference

    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    wait_until(lambda: not can_connect((LOOPBACK, port_b)), 5, what="b gone")
    assert [instance_name(router.request("example.com")) for _ in range(10)] == ["a"] * 10
    assert f"example.com => marking {b} as failed" in router.proc.log()
    start_instance(procs, UWSGIROUTER, "b", b, *subscribe)  # back on the same port, within the tolerance
    wait_until(lambda: f"example.com => node {b} is back" in router.proc.log(), 10, what="b back")
    router.wait_routing_view("example.com", [a, b])
    after = Counter(instance_name(router.request("example.com")) for _ in range(20))
    assert after["a"] >= 5 and after["b"] >= 5, after


def refused_node(procs: ProcessManager) -> tuple[Router, str, str]:
    """A router whose key example.com has a live instance and a node that refuses connections.

    Ten requests are answered by the live instance; the router tried the other node exactly once.
    """
    router = start_router(procs)
    live, dead = (f"{LOOPBACK}:{port}" for port in tcp_ports(2))  # nothing ever listens on ``dead``
    start_instance(procs, UWSGIROUTER, "live", live, "-M", "--subscribe-to", f"{router.server}:example.com")
    router.wait_node("example.com", live)
    announce(router, "example.com", dead)
    router.wait_routing_view("example.com", [live, dead])
    assert [instance_name(router.request("example.com")) for _ in range(10)] == ["live"] * 10
    assert router.proc.log().count(f"unable to connect to node {dead}") == 1, router.proc.log()
    wait_until(lambda: router.nodes("example.com")[dead]["death_mark"] == 1, 5, what="the dead node marked")
    return router, live, dead


def test_stats_show_no_reference_once_requests_are_over(procs: ProcessManager) -> None:
    router, live, dead = refused_node(procs)
    stats = router.stats()
    assert stats["active_sessions"] == 0
    nodes = router.nodes("example.com")
    assert {name: node["ref"] for name, node in nodes.items()} == {live: 0, dead: 0}


def test_stats_count_one_refused_connect_once(procs: ProcessManager) -> None:
    router, live, dead = refused_node(procs)
    nodes = router.nodes("example.com")
    assert {name: node["failcnt"] for name, node in nodes.items()} == {live: 0, dead: 1}


# -- 4. the router worker killed with -9 -----------------------------------------------------------------------


def test_respawned_router_worker_routes_at_once_without_reannounces(procs: ProcessManager) -> None:
    router = start_router(procs)
    started = time.monotonic()
    addresses = [f"{LOOPBACK}:{port}" for port in tcp_ports(2)]
    for name, address in zip("ab", addresses, strict=True):
        # announces at start and one second later, then not before 30 s: none within this test
        start_instance(
            procs,
            UWSGIROUTER,
            name,
            address,
            "-M",
            "--subscribe-to",
            f"{router.server}:example.com",
            "--subscribe-freq",
            "30",
        )
    for address in addresses:
        router.wait_node("example.com", address)
    router.wait_routing_view("example.com", addresses)
    # the second announce (start + 1 s) is behind us: from here on no instance announces anything
    wait_until(lambda: time.monotonic() - started > 3.5, 5, what="the instances' second announce")
    old_worker = router_worker_pid(router)
    assert old_worker is not None

    with RequestLoop(router) as loop:
        wait_until(lambda: loop.served_by("a") >= 10 and loop.served_by("b") >= 10, 10, what="both serving")
        os.kill(old_worker, signal.SIGKILL)
        new_worker = wait_until(
            lambda: (pid := router_worker_pid(router)) not in (None, old_worker) and pid,
            10,
            interval=0.005,
            what="the respawned router worker",
        )
        respawned_at = time.monotonic()
        response = router.request("example.com", timeout=5.0)
        assert instance_name(response) in {"a", "b"}, response.raw  # at once: no announce comes for 30 s
        wait_until(lambda: len(loop.since(respawned_at)) >= 40, 10, what="requests after the respawn")
    after = loop.since(respawned_at)
    assert set(after) == {"a", "b"}, Counter(after)  # both nodes still known, all requests answered

    # a graceful reload (SIGHUP) replaces the router workers: the new ones find the table in the master too
    router.proc.signal(signal.SIGHUP)
    wait_until(lambda: not psutil.pid_exists(new_worker), 15, what="the old router worker to leave on SIGHUP")
    assert router_worker_pid(router) not in (None, new_worker)
    assert {instance_name(router.request("example.com")) for _ in range(10)} == {"a", "b"}
    assert time.monotonic() - started < 30, "the instances announced again: the test proves nothing"
    assert len(loop.failures()) <= 1, loop.failures()
    assert time.monotonic() - started < 29, "too slow: the instances may have announced again"
    assert new_worker != old_worker


# -- 5. a flood of hostile datagrams (docs/differences.md, "Subscription packets") ------------------------------------

FLOOD = r"""
import os, random, socket, struct, sys, time

host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])


def var(name, value):
    return struct.pack("<H", len(name)) + name + struct.pack("<H", len(value)) + value


def packet(pairs, command=0):
    body = b"".join(var(name, value) for name, value in pairs)
    return struct.pack("<BHB", 224, len(body) & 0xFFFF, command) + body


nobody = b"127.0.0.1:9"
valid = [(b"key", b"example.com"), (b"address", nobody), (b"modifier1", b"0"), (b"modifier2", b"0"),
         (b"cores", b"1"), (b"load", b"0"), (b"weight", b"1")]
whole = packet(valid)
boundaries, offset = {4}, 4
for name, value in valid:
    offset += 4 + len(name) + len(value)
    boundaries.add(offset)
cuts = [n for n in range(1, len(whole)) if n not in boundaries]
rng = random.Random(1)
pool = []
for i in range(4000):
    kind = i % 6
    if kind == 0:
        pool.append(os.urandom(rng.randint(1, 600)))  # garbage
    elif kind == 1:
        pool.append(whole[: rng.choice(cuts)])  # truncated
    elif kind == 2:
        pool.append(packet([(b"key", b"b" * 300), (b"address", nobody), (b"weight", b"1")]))  # oversized key
    elif kind == 3:
        pool.append(packet([(b"key", b"example.com"), (b"address", b"9" * 300)]))  # oversized address
    elif kind == 4:
        pool.append(packet([(b"key", b"example.com"), (b"address", nobody), (b"weight", b"abc")]))  # bad number
    else:
        pool.append(packet([(b"key", b"example.com"), (b"address", nobody), (b"modifier1", b"300")]))  # out of range
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
sent = attempts = 0
start = time.monotonic()
while True:
    elapsed = time.monotonic() - start
    if elapsed >= seconds:
        break
    due = min(int(elapsed * rate) + rate // 100, int(seconds * rate))
    while attempts < due:
        try:
            sock.sendto(pool[attempts % len(pool)], (host, port))
            sent += 1
        except BlockingIOError:
            pass
        attempts += 1
    time.sleep(0.002)
print(f"sent={sent} attempts={attempts} in {time.monotonic() - start:.2f}s", flush=True)
"""


def flood(procs: ProcessManager, router: Router, rate: int, seconds: float) -> Proc:
    argv = [sys.executable, "-c", FLOOD, LOOPBACK, str(router.subscription_port), str(rate), str(seconds)]
    return procs.start(argv, "flood")


def test_flood_of_hostile_datagrams_is_rejected_without_harm(procs: ProcessManager) -> None:
    router = start_router(procs)
    address = f"{LOOPBACK}:{tcp_ports(1)[0]}"
    start_instance(
        procs,
        UWSGIROUTER,
        "steady",
        address,
        "-M",
        "--subscribe-to",
        f"{router.server}:example.com",
        "--subscribe-freq",
        "1",
    )
    router.wait_node("example.com", address)
    router.wait_routing_view("example.com", [address])
    master = psutil.Process(router.proc.pid)
    warm_up = flood(procs, router, 20_000, 0.5)  # every rejection path has run once before the baseline
    assert warm_up.wait(15) == 0, warm_up.log()
    for _ in range(20):
        assert instance_name(router.request("example.com")) == "steady"
    rss_before = master.memory_info().rss
    lines_before = len(router.proc.log().splitlines())

    flooder = flood(procs, router, 20_000, 5.0)
    outcomes: list[str] = []
    deadline = time.monotonic() + 20
    while flooder.alive() and time.monotonic() < deadline:
        try:
            outcomes.append(instance_name(router.request("example.com")) or "error")
        except OSError as exc:
            outcomes.append(f"error: {exc!r}")
        time.sleep(0.01)
    assert flooder.wait(10) == 0, flooder.log()
    match = re.search(r"sent=(\d+)", flooder.log())
    assert match and int(match.group(1)) >= 90_000, flooder.log()  # the flood really was 20 000 a second

    assert len(outcomes) >= 50 and set(outcomes) == {"steady"}, Counter(outcomes)
    rss_after = master.memory_info().rss
    assert rss_after - rss_before < 2 * MIB, f"master RSS grew by {(rss_after - rss_before) / MIB:.1f} MiB"
    flood_lines = router.proc.log().splitlines()[lines_before:]
    rejected = [line for line in flood_lines if "rejected" in line and "subscription" in line]
    assert 1 <= len(rejected) < 20, "\n".join(rejected[:40])
    # nothing of the flood got into the table: the only node is still the steady instance
    assert router.keys() == {"example.com": {address: router.nodes("example.com")[address]}}
    assert instance_name(router.request("example.com")) == "steady"


def test_every_rejected_packet_is_reported_in_the_log(procs: ProcessManager) -> None:
    router = start_router(procs)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for number in range(50):
            sock.sendto(b"garbage %d" % number, (LOOPBACK, router.subscription_port))
    counts = re.compile(r"rejected (\d+) subscription packet")

    def reported() -> int:
        return sum(int(count) for count in counts.findall(router.proc.log()))

    wait_until(lambda: reported() >= 50, 5, interval=0.1, what="the 50 rejections in the log")
    assert reported() == 50
    assert len(counts.findall(router.proc.log())) <= 3  # still rate-limited
    # docs/differences.md, "Subscription packets": rejected packets are counted in the stats too (an added field,
    # uWSGI's layout is kept)
    wait_until(lambda: router.stats().get("subscription_packets_rejected") == 50, 5, what="the count in the stats")


# -- 6. unsubscribe at shutdown -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "stop_signal"),
    [
        pytest.param(UWSGIROUTER, signal.SIGTERM, id="uwsgirouter-sigterm"),
        pytest.param(REAL_UWSGI, signal.SIGINT, id="uwsgi-sigint"),
    ],
)
def test_instance_stopped_gracefully_unsubscribes_at_once(
    procs: ProcessManager, kind: str, stop_signal: signal.Signals
) -> None:
    router = start_router(procs)  # default tolerance (17 s): expiry cannot explain a removal within 3 s
    stays, leaves = (f"{LOOPBACK}:{port}" for port in tcp_ports(2))
    subscribe = ("-M", "--subscribe-to", f"{router.server}:example.com")
    start_instance(procs, UWSGIROUTER, "stays", stays, *subscribe)
    leaving = start_instance(procs, kind, "leaves", leaves, *subscribe)
    router.wait_node("example.com", stays)
    router.wait_node("example.com", leaves)
    router.wait_routing_view("example.com", [stays, leaves])
    assert {instance_name(router.request("example.com")) for _ in range(4)} == {"stays", "leaves"}

    leaving.signal(stop_signal)
    wait_until(lambda: f"example.com => node {leaves} unsubscribed" in router.proc.log(), 3, what="the unsubscribe")
    router.wait_routing_view("example.com", [stays], timeout=1.0)
    assert [instance_name(router.request("example.com")) for _ in range(20)] == ["stays"] * 20
    leaving.wait(15)
    assert f"removing {leaves}" not in router.proc.log()


# -- 7. --fastrouter-resubscribe between two routers ---------------------------------------------------------


def test_two_routers_resubscribing_to_each_other_do_not_loop(procs: ProcessManager) -> None:
    port_a, port_b, stats_a, stats_b = tcp_ports(4)
    sub_a, sub_b = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    while sub_b == sub_a:
        sub_b = free_port(socket.SOCK_DGRAM)

    def router(port: int, sub: int, stats: int, other: int) -> Router:
        proc = procs.router(
            "--fastrouter",
            f"{LOOPBACK}:{port}",
            "--fastrouter-subscription-server",
            f"{LOOPBACK}:{sub}",
            "--fastrouter-stats",
            f"{LOOPBACK}:{stats}",
            "--fastrouter-resubscribe",
            f"{LOOPBACK}:{other}",
            wait_for=(LOOPBACK, port),
        )
        wait_until(lambda: can_connect((LOOPBACK, stats)), 10, what="the stats server")
        return Router(proc, port, sub, stats)

    router_a = router(port_a, sub_a, stats_a, sub_b)
    router_b = router(port_b, sub_b, stats_b, sub_a)
    node = f"{LOOPBACK}:{tcp_ports(1)[0]}"
    start_instance(
        procs,
        UWSGIROUTER,
        "one",
        node,
        "-M",
        "--subscribe-to",
        f"{router_a.server}:example.com",
        "--subscribe-freq",
        "1",
    )
    router_a.wait_node("example.com", node)
    # B learns the key with A's listening address, and routes through A to the node
    router_b.wait_node("example.com", f"{LOOPBACK}:{port_a}")
    router_b.wait_routing_view("example.com", [f"{LOOPBACK}:{port_a}"])
    response = router_b.request("example.com")
    assert response.status == 200 and b"instance=one host=example.com" in response.body, response.raw

    masters = [psutil.Process(router_a.proc.pid), psutil.Process(router_b.proc.pid)]
    for master in masters:
        master.cpu_percent(None)
    time.sleep(3.0)  # a measurement window, not a wait for readiness
    usage = [master.cpu_percent(None) for master in masters]
    assert all(percent < 20 for percent in usage), usage
    # no echo: A never learnt B as a node of its own key
    assert router_a.keys() == {"example.com": {node: router_a.nodes("example.com")[node]}}
    assert f"new node: {LOOPBACK}:{port_b}" not in router_a.proc.log()
    assert list(router_b.keys()) == ["example.com"]
