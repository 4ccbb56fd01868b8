"""Several hosts: routers and nodes on Linux network namespaces joined by a bridge, links cut and restored.

Every test builds its own little network: one namespace per "host" (a client ``c``, routers ``r1`` and
``r2``, node hosts ``n1`` and ``n2``), each with one veth link to a bridge in a "switch" namespace, and
addresses of 10.199.77.0/24 that exist only inside those namespaces (no route leads anywhere else, and
nothing is ever configured in the root namespace). Taking a host's link down is ``ip link set down`` on
its switch port: the cable is pulled, the host itself notices nothing but the lost carrier.

Processes run inside a host with ``ip netns exec``, each in its own session, and are group-killed at
teardown; then no process may be left in any of the namespaces, and the namespaces are deleted. The test
process itself stays in the root namespace: it talks to the hosts from threads that joined a host's
namespace (``setns``), so a socket it opens there is that host's socket.

Scenarios: two routers fed by the same nodes; one router's link down (the other keeps routing); a router
back after its table expired, by link or by restart, rebuilt within one announce period;
``--fastrouter-resubscribe`` between the two routers without a loop (datagrams counted by the kernel
of each router host); a node host cut off, expired after the tolerance, its traffic on the other node.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest

from tests.support import (
    APPS,
    ROUTER,
    UWSGI,
    Proc,
    ProcessManager,
    Response,
    can_connect,
    connect,
    read_all,
    request_vars,
    uwsgi_request,
    wait_until,
)

IP = shutil.which("ip")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are a Linux feature"),
    pytest.mark.skipif(os.geteuid() != 0, reason="creating network namespaces needs root"),
    pytest.mark.skipif(IP is None, reason="the ip command (iproute2) is not installed"),
]

P = ParamSpec("P")
T = TypeVar("T")

#: The hosts' addresses: 10.199.77.0/24, assigned only inside the namespaces the tests create.
SUBNET = "10.199.77"
HOST_NUMBERS = {"c": 10, "r1": 11, "r2": 12, "n1": 21, "n2": 22}
ROUTER_PORT = 3017
SUBSCRIPTION_PORT = 7000
STATS = ("127.0.0.1", 9191)  # each router host's own loopback
NODE_PORT = 3031
UWSGI_NODE_PORT = 3032
#: --subscribe-freq of every node: the announce period.
PERIOD = 2
#: --subscription-tolerance of every router.
TOLERANCE = 3
#: Polling, a stats round trip and process scheduling on top of an exact period or tolerance.
SLACK = 1.0
KEY = "example.com"
INSTANCE_APP = str(APPS / "instance_app.py")
CLONE_NEWNET = 0x40000000
_counter = itertools.count(1)


# -- the network --------------------------------------------------------------------------------------------


def ip(*args: str) -> None:
    """Run ``ip ARGS``; fail with its message."""
    assert IP is not None
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"


def join_netns(netns: str) -> None:
    """Move the calling thread (only it) into network namespace ``netns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({netns}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def netns_inode(netns: str) -> int:
    return os.stat(f"/run/netns/{netns}").st_ino


def tasks_in_netns(inodes: set[int]) -> list[str]:
    """Every thread of every process whose network namespace is one of ``inodes``: "pid/tid name"."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                if os.stat(f"/proc/{pid}/task/{tid}/ns/net").st_ino in inodes:
                    found.append(f"{pid}/{tid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
            except OSError:
                continue
    return found


class Host:
    """One namespace with one link to the switch; ``call`` runs a function from inside it."""

    def __init__(self, name: str, netns: str) -> None:
        self.name = name
        self.netns = netns
        self.ip = f"{SUBNET}.{HOST_NUMBERS[name]}"
        self._executor = ThreadPoolExecutor(4, f"netns-{name}", initializer=join_netns, initargs=(netns,))

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._executor.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._executor.submit(fn, *args, **kwargs)

    def argv(self, argv: Sequence[str]) -> list[str]:
        assert IP is not None
        return [IP, "netns", "exec", self.netns, *argv]

    def udp_datagrams_received(self) -> int:
        """The kernel's Udp InDatagrams of this host's namespace: datagrams delivered to its sockets."""

        def read() -> int:
            lines = [line.split() for line in Path("/proc/thread-self/net/snmp").read_text().splitlines()]
            names, values = (line for line in lines if line[0] == "Udp:")
            return int(values[names.index("InDatagrams")])

        return self.call(read)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class Network:
    """The hosts, a bridge in a switch namespace, one veth pair per host; removed (and checked) by ``close``."""

    def __init__(self, names: Sequence[str]) -> None:
        self.prefix = f"urt{os.getpid()}-{next(_counter)}-"
        self.switch = f"{self.prefix}switch"
        self.created: list[str] = []
        self.hosts: dict[str, Host] = {}
        try:
            self._build(names)
        except BaseException:
            self.close()
            raise

    def _build(self, names: Sequence[str]) -> None:
        self._add_netns(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "dev", "br0", "up")
        for name in names:
            netns = self.prefix + name
            self._add_netns(netns)
            ip("-n", netns, "link", "set", "dev", "lo", "up")
            ip("-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", name, "netns", self.switch)
            ip("-n", netns, "addr", "add", f"{SUBNET}.{HOST_NUMBERS[name]}/24", "dev", "eth0")
            ip("-n", netns, "link", "set", "dev", "eth0", "up")
            ip("-n", self.switch, "link", "set", "dev", name, "master", "br0", "up")
            self.hosts[name] = Host(name, netns)

    def _add_netns(self, netns: str) -> None:
        ip("netns", "add", netns)
        self.created.append(netns)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def link(self, name: str, up: bool) -> None:
        """Plug in (``up``) or pull the cable of host ``name``: its port on the switch."""
        ip("-n", self.switch, "link", "set", "dev", name, "up" if up else "down")

    def close(self) -> None:
        """Leave the namespaces, check that nothing runs in them any more, delete them."""
        inodes = {netns_inode(netns) for netns in self.created if os.path.exists(f"/run/netns/{netns}")}
        for host in self.hosts.values():
            host.close()
        # a joined Python thread may still exist in the kernel for a moment after join() returned
        try:
            wait_until(lambda: not tasks_in_netns(inodes), 5, interval=0.01, what="the namespaces to empty")
        except AssertionError:
            pass
        leftovers = tasks_in_netns(inodes)
        for netns in reversed(self.created):
            ip("netns", "del", netns)
        assert not leftovers, f"still running in the test's namespaces: {leftovers}"
        assert IP is not None
        listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=10, check=True)
        assert self.prefix not in listed.stdout, listed.stdout


@pytest.fixture(scope="module", autouse=True)
def netns_available() -> None:
    """Skip the module, with the reason, when this kernel or container cannot give us namespaces and veths."""
    probe = f"urt{os.getpid()}-probe"
    assert IP is not None
    steps = [
        ["netns", "add", probe],
        ["-n", probe, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
        ["-n", probe, "link", "add", "br0", "type", "bridge"],
    ]
    try:
        for step in steps:
            done = subprocess.run([IP, *step], capture_output=True, text=True, timeout=10, check=False)
            if done.returncode != 0:
                pytest.skip(f"ip netns is unavailable here: ip {' '.join(step)}: {done.stderr.strip()}")
    finally:
        subprocess.run([IP, "netns", "del", probe], capture_output=True, timeout=10, check=False)


@dataclass
class Lab:
    net: Network
    procs: ProcessManager


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """The hosts and a ProcessManager; at teardown the processes go first, then the namespaces."""
    net = Network(list(HOST_NUMBERS))
    procs = ProcessManager(tmp_path)
    try:
        yield Lab(net, procs)
    finally:
        try:
            procs.stop_all()
        finally:
            net.close()


# -- routers, nodes, requests --------------------------------------------------------------------------------


def instance_name(response: Response) -> str | None:
    """The NAME of ``instance=NAME ...`` in a 200 answer of tests/apps/instance_app.py, else None."""
    match = re.match(rb"instance=(\S+) ", response.body)
    return match.group(1).decode() if response.status == 200 and match else None


def read_stats() -> dict[str, Any]:
    with connect(STATS, 5.0) as sock:
        document: dict[str, Any] = json.loads(read_all(sock))
    return document


@dataclass
class Router:
    """A uwsgirouter on a router host: fastrouter and subscription server on the host's address."""

    proc: Proc
    host: Host

    @property
    def address(self) -> tuple[str, int]:
        return (self.host.ip, ROUTER_PORT)

    @property
    def name(self) -> str:
        """How the other router names it as a node (its --fastrouter socket)."""
        return f"{self.host.ip}:{ROUTER_PORT}"

    @property
    def server(self) -> str:
        return f"{self.host.ip}:{SUBSCRIPTION_PORT}"

    def stats(self) -> dict[str, Any]:
        return self.host.call(read_stats)

    def nodes(self, key: str = KEY) -> dict[str, dict[str, Any]]:
        for pool in self.stats().get("subscriptions", []):
            if pool["key"] == key:
                return {node["name"]: node for node in pool["nodes"]}
        return {}

    def serves(self, addresses: Sequence[str], key: str = KEY) -> bool:
        """The router's own view lists exactly ``addresses`` for ``key``, none marked dead."""
        nodes = self.nodes(key)
        return sorted(nodes) == sorted(addresses) and not any(node["death_mark"] for node in nodes.values())

    def wait_serves(self, addresses: Sequence[str], key: str = KEY, timeout: float = 10.0) -> None:
        wait_until(lambda: self.serves(addresses, key), timeout, interval=0.05, what=f"{key} served by {addresses}")

    def requests_served(self) -> int:
        """Requests this router passed to any node, by its stats."""
        return sum(node["requests"] for pool in self.stats().get("subscriptions", []) for node in pool["nodes"])


def start_router(lab: Lab, host_name: str, *extra: str) -> Router:
    host = lab.net[host_name]
    argv = [
        *ROUTER,
        "--fastrouter",
        f"{host.ip}:{ROUTER_PORT}",
        "--fastrouter-subscription-server",
        f"{host.ip}:{SUBSCRIPTION_PORT}",
        "--fastrouter-stats",
        f"{STATS[0]}:{STATS[1]}",
        "--subscription-tolerance",
        str(TOLERANCE),
        *extra,
    ]
    proc = lab.procs.start(host.argv(argv), f"router-{host_name}")
    wait_until(
        lambda: (host.call(can_connect, (host.ip, ROUTER_PORT)) and host.call(can_connect, STATS)) or not proc.alive(),
        15,
        what=f"the router on {host_name}",
    )
    assert proc.alive(), proc.log()
    return Router(proc, host)


def start_node(lab: Lab, host_name: str, name: str, *subscribe: str, real_uwsgi: bool = False) -> str:
    """An instance of tests/apps/instance_app.py answering as NAME, announcing ``KEY`` (or SERVER:KEY
    as given) to each of ``subscribe`` every PERIOD seconds; returns its address."""
    host = lab.net[host_name]
    port = UWSGI_NODE_PORT if real_uwsgi else NODE_PORT
    address = f"{host.ip}:{port}"
    options = ["--socket", address, "--wsgi-file", INSTANCE_APP, "--master", "--subscribe-freq", str(PERIOD)]
    for target in subscribe:
        options += ["--subscribe-to", target]
    if real_uwsgi:
        assert UWSGI, "uWSGI 2.0.31 is not installed (scripts/install)"
        argv = [UWSGI, *options, "--processes", "1", "--disable-logging", "--die-on-term"]
    else:
        argv = [*ROUTER, *options]
    proc = lab.procs.start(host.argv(argv), f"node-{name}", {"INSTANCE": name})
    wait_until(
        lambda: host.call(can_connect, (host.ip, port)) or not proc.alive(), 15, what=f"node {name} on {host_name}"
    )
    assert proc.alive(), proc.log()
    return address


def request(lab: Lab, router: Router, key: str = KEY, timeout: float = 5.0) -> Response:
    """One request from the client host through ``router``."""
    return lab.net["c"].call(uwsgi_request, router.address, request_vars(key), timeout=timeout)


def answers(lab: Lab, router: Router, count: int, key: str = KEY) -> Counter[str]:
    """``count`` sequential requests through ``router``: which instance answered each (or "error")."""
    names: Counter[str] = Counter()
    for _ in range(count):
        try:
            names[instance_name(request(lab, router, key)) or "error"] += 1
        except OSError as exc:
            names[f"error: {exc!r}"] += 1
    return names


def unreachable(lab: Lab, router: Router) -> bool:
    """The client cannot even open a connection to ``router`` (its link is down)."""
    return not lab.net["c"].call(lambda: can_connect(router.address))


def subscribe_all(routers: Sequence[Router], key: str = KEY) -> list[str]:
    return [f"{router.server}:{key}" for router in routers]


class RequestLoop:
    """Sequential requests from the client host, at most ``limit`` of them, each recorded as
    (start time, instance name or error); runs on one of the client host's threads."""

    def __init__(self, lab: Lab, router: Router, limit: int = 400, pause: float = 0.02) -> None:
        self.lab = lab
        self.router = router
        self.limit = limit
        self.pause = pause
        self.results: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._future: Future[None] | None = None

    def __enter__(self) -> RequestLoop:
        self._future = self.lab.net["c"].submit(self._run)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._future is not None
        self._future.result(30)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.results) < self.limit:
            started = time.monotonic()
            try:
                response = uwsgi_request(self.router.address, request_vars(KEY), timeout=5.0)
                outcome = instance_name(response) or f"error: {response.raw[:120]!r}"
            except OSError as exc:
                outcome = f"error: {exc!r}"
            self.results.append((started, outcome))
            self._stop.wait(self.pause)

    def since(self, moment: float) -> list[str]:
        return [outcome for started, outcome in list(self.results) if started >= moment]

    def failures(self) -> list[tuple[float, str]]:
        return [(started, outcome) for started, outcome in list(self.results) if outcome.startswith("error")]


def removed_line(address: str, key: str = KEY) -> str:
    return f"{key} => removing {address} (no announce received in {TOLERANCE} seconds)"


# -- 1. two routers fed by the same nodes -------------------------------------------------------------------


def test_two_routers_on_two_hosts_route_to_the_nodes_of_a_third(lab: Lab) -> None:
    r1, r2 = start_router(lab, "r1"), start_router(lab, "r2")
    ours = start_node(lab, "n1", "ours", *subscribe_all([r1, r2]))
    theirs = start_node(lab, "n1", "uwsgi", *subscribe_all([r1, r2]), real_uwsgi=True)
    for router in (r1, r2):
        router.wait_serves([ours, theirs])

    for router in (r1, r2):
        served_before = router.requests_served()
        names = answers(lab, router, 20)
        assert names == {"ours": 10, "uwsgi": 10}, (router.host.name, names)
        # the twenty went through this very router, none through the other
        assert router.requests_served() - served_before == 20
    assert r1.requests_served() == r2.requests_served() == 20
    for router in (r1, r2):
        log = router.proc.log()
        assert f"{KEY} => new node: {ours}" in log and f"{KEY} => new node: {theirs}" in log, log


# -- 2. one router's link down ------------------------------------------------------------------------------


def test_a_router_cut_off_leaves_the_other_routing(lab: Lab) -> None:
    r1, r2 = start_router(lab, "r1"), start_router(lab, "r2")
    node = start_node(lab, "n1", "n1", *subscribe_all([r1, r2]))
    r1.wait_serves([node])
    r2.wait_serves([node])
    assert answers(lab, r1, 3) == answers(lab, r2, 3) == {"n1": 3}

    lab.net.link("r1", up=False)
    down_at = time.monotonic()
    assert unreachable(lab, r1)
    # beyond the tolerance: the node keeps announcing to r2 although r1 no longer hears it, so r2 keeps its
    # node (and r1, cut off, expires it)
    outcomes: Counter[str] = Counter()
    while time.monotonic() - down_at < TOLERANCE + PERIOD + SLACK:
        outcomes += answers(lab, r2, 5)
        time.sleep(0.1)
    assert set(outcomes) == {"n1"} and outcomes["n1"] >= 50, outcomes
    assert r2.serves([node])
    assert removed_line(node) in r1.proc.log()
    assert removed_line(node) not in r2.proc.log()
    assert r1.nodes() == {}


# -- 3. a router back after its table expired ---------------------------------------------------------------


def wait_rebuilt(lab: Lab, router: Router, addresses: Sequence[str]) -> float:
    """Seconds until ``router`` knows ``addresses`` again and routes to them; fails beyond one period."""
    back_at = time.monotonic()
    router.wait_serves(addresses, timeout=PERIOD + 3 * SLACK)
    rebuilt = time.monotonic() - back_at
    assert rebuilt <= PERIOD + SLACK, f"table rebuilt after {rebuilt:.2f} s, the announce period is {PERIOD} s"
    names = answers(lab, router, 2 * len(addresses))
    assert not any(name.startswith("error") for name in names), names
    return rebuilt


def test_a_router_back_rebuilds_its_table_within_one_announce_period(lab: Lab) -> None:
    r1, r2 = start_router(lab, "r1"), start_router(lab, "r2")
    a = start_node(lab, "n1", "a", *subscribe_all([r1, r2]))
    b = start_node(lab, "n2", "b", *subscribe_all([r1, r2]), real_uwsgi=True)
    for router in (r1, r2):
        router.wait_serves([a, b])

    # the link comes back after r1 expired both nodes
    lab.net.link("r1", up=False)
    wait_until(
        lambda: all(removed_line(node) in r1.proc.log() for node in (a, b)),
        TOLERANCE + 3 * SLACK,
        interval=0.1,
        what="r1 expiring both nodes",
    )
    assert r1.nodes() == {}
    assert unreachable(lab, r1)
    lab.net.link("r1", up=True)
    wait_rebuilt(lab, r1, [a, b])

    # r2 is stopped and started again: a new master, an empty table
    r2.proc.stop()
    assert unreachable(lab, r2)
    r2 = start_router(lab, "r2")
    wait_rebuilt(lab, r2, [a, b])
    assert set(answers(lab, r2, 10)) == {"a", "b"}


# -- 4. --fastrouter-resubscribe between the two routers ----------------------------------------------------


def test_routers_resubscribing_to_each_other_across_hosts_do_not_loop(lab: Lab) -> None:
    r1 = start_router(lab, "r1", "--fastrouter-resubscribe", f"{SUBNET}.{HOST_NUMBERS['r2']}:{SUBSCRIPTION_PORT}")
    r2 = start_router(lab, "r2", "--fastrouter-resubscribe", r1.server)
    # one node per router, each with its own key: each router forwards its key to the other
    one = start_node(lab, "n1", "one", f"{r1.server}:one.example")
    two = start_node(lab, "n2", "two", f"{r2.server}:two.example", real_uwsgi=True)
    r1.wait_serves([one], "one.example")
    r2.wait_serves([two], "two.example")
    r1.wait_serves([r2.name], "two.example")
    r2.wait_serves([r1.name], "one.example")
    for router in (r1, r2):  # directly, and through the other router
        assert answers(lab, router, 2, "one.example") == {"one": 2}
        assert answers(lab, router, 2, "two.example") == {"two": 2}

    window = 3 * PERIOD
    received_before = [router.host.udp_datagrams_received() for router in (r1, r2)]
    started = time.monotonic()
    time.sleep(window)  # a counting window, not a wait for readiness
    received = [
        router.host.udp_datagrams_received() - before for router, before in zip((r1, r2), received_before, strict=True)
    ]
    elapsed = time.monotonic() - started
    # each router hears its own node and the other router's forward: at most one each per period
    most = 2 * (int(elapsed / PERIOD) + 1)
    assert all(2 <= count <= most for count in received), f"datagrams received in {elapsed:.1f} s: {received}"
    for router, own, forwarded, other in ((r1, one, "two.example", r2), (r2, two, "one.example", r1)):
        log = router.proc.log()
        assert len(re.findall(r"=> new node: ", log)) == 2, log
        assert log.count(f"=> new node: {other.name}") == 1, log
        assert sorted(pool["key"] for pool in router.stats()["subscriptions"]) == ["one.example", "two.example"]
        assert router.serves([other.name], forwarded)
        assert own not in router.nodes(forwarded)


# -- 5. a node host cut off -----------------------------------------------------------------------------------


def test_a_node_host_cut_off_expires_and_its_traffic_moves_to_the_other_node(lab: Lab) -> None:
    # --fastrouter-timeout 1: a connect that gets no answer (the cable is out) is retried on the other node
    router = start_router(lab, "r1", "--fastrouter-timeout", "1")
    stays = start_node(lab, "n1", "stays", *subscribe_all([router]))
    leaves = start_node(lab, "n2", "leaves", *subscribe_all([router]), real_uwsgi=True)
    router.wait_serves([stays, leaves])

    with RequestLoop(lab, router) as loop:
        wait_until(lambda: set(loop.since(0)) == {"stays", "leaves"}, 10, what="both nodes serving")
    # no request in flight when the cable goes out: every request from here on must be answered
    lab.net.link("n2", up=False)
    down_at = time.monotonic()
    with RequestLoop(lab, router) as loop:
        wait_until(lambda: removed_line(leaves) in router.proc.log(), TOLERANCE + 3 * SLACK, what=removed_line(leaves))
        removed_after = time.monotonic() - down_at
        # the last announce came at most just before the cut; the expiry timer runs once a second
        assert removed_after <= TOLERANCE + 1 + SLACK, f"removed {removed_after:.2f} s after the link went down"
        removed_at = time.monotonic()
        router.wait_serves([stays], timeout=1.0)
        wait_until(lambda: len(loop.since(removed_at)) >= 20, 10, what="requests after the expiry")
    assert not loop.failures(), loop.failures()
    # before the expiry, the router tried the node that no longer answers and moved the request on
    assert f"unable to connect to node {leaves}" in router.proc.log()
    assert set(loop.since(removed_at)) == {"stays"}, Counter(loop.since(removed_at))
    assert removed_line(stays) not in router.proc.log()

    # and the host plugged in again is back within one announce period
    lab.net.link("n2", up=True)
    wait_rebuilt(lab, router, [stays, leaves])
