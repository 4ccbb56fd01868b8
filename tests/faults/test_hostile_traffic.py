"""The four problems of the hardening round, as a user met them, each with real processes on 127.0.0.1.

1. One request whose header is too large for the backends must not take every node out.
2. Trickling and idle clients cannot lock others out: no fixed session cap, a deadline for the whole head.
3. Hostile requests cannot flood the log: per-request lines are rate-limited with a line counting the rest.
   (The subscription table flood, problem 4, is in ``test_subscription_flood.py``.)
Plus descriptor exhaustion: the router keeps serving what it has, says so once a second, and never spins.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psutil
import pytest

from tests.support import (
    ProcessManager,
    Response,
    ThreadedNode,
    can_connect,
    connect,
    free_port,
    log_lines,
    read_all,
    request_vars,
    router_worker,
    start_router_with_nofile,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"


def two_backends(procs: ProcessManager) -> list[str]:
    """Two real uWSGI 2.0.31 instances with the default 4 KiB --buffer-size."""
    nodes = []
    for name in ("a", "b"):
        port = free_port()
        procs.uwsgi_backend(f"{LOOPBACK}:{port}", name, wait_for=(LOOPBACK, port))
        nodes.append(f"{LOOPBACK}:{port}")
    return nodes


def big_cookie_vars() -> dict[str, str]:
    """A request whose vars block (a 6 000-byte Cookie) exceeds the backends' 4 KiB buffer: they reset it."""
    return request_vars(host="site.example", HTTP_COOKIE="c=" + "x" * 6000)


def test_a_request_too_large_for_the_nodes_takes_no_node_out(procs: ProcessManager) -> None:
    nodes = two_backends(procs)
    port = free_port()
    address = (LOOPBACK, port)
    router = procs.router(
        "--fastrouter", f"{LOOPBACK}:{port}", *(f"--fastrouter-to={n}" for n in nodes), wait_for=address
    )

    poisoned = uwsgi_request(address, big_cookie_vars())
    assert poisoned.status == 502, poisoned.raw[:200]

    # uWSGI answers every one of these; so must we (the old router marked both nodes dead for 30 s).
    statuses = [uwsgi_request(address, request_vars(host="site.example")).status for _ in range(20)]
    assert statuses == [200] * 20, statuses
    served_by = {uwsgi_request(address, request_vars(host="site.example")).body for _ in range(4)}
    assert len(served_by) == 2, f"both nodes keep their place in the rotation: {served_by}"
    assert not any("grace" in line or "unable to connect" in line for line in log_lines(router)), router.log()


def test_a_request_too_large_for_subscribed_nodes_takes_no_node_out(procs: ProcessManager) -> None:
    port, sub_port = free_port(), free_port()
    address = (LOOPBACK, port)
    router = procs.router(
        "--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-subscription-server", f"{LOOPBACK}:{sub_port}",
        wait_for=address,
    )  # fmt: skip
    for name in ("a", "b"):
        node_port = free_port()
        procs.uwsgi_backend(
            f"{LOOPBACK}:{node_port}", name, "--subscribe-to", f"{LOOPBACK}:{sub_port}:site.example",
            wait_for=(LOOPBACK, node_port),
        )  # fmt: skip
    wait_until(lambda: router.log().count("=> new node") >= 2, 15, what="two subscribed nodes")

    assert uwsgi_request(address, big_cookie_vars()).status == 502
    statuses = [uwsgi_request(address, request_vars(host="site.example")).status for _ in range(20)]
    assert statuses == [200] * 20, statuses
    assert "marking" not in router.log(), "a node that resets one request is not marked dead"


class Breaker(ThreadedNode):
    """A node that accepts, reads what the router sent, and closes without a byte (a node dying mid-request);
    it counts the connections it got. Runs in a thread of the test."""

    connection_timeout = 5.0

    def __init__(self) -> None:
        self.connections = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)  # the request was delivered...
        except OSError:
            pass
        self.connections += 1  # ...and the node goes away without answering


def test_a_get_is_resent_once_when_its_node_breaks_without_answering(procs: ProcessManager) -> None:
    """A node that breaks after being sent the request costs a GET nothing: it is sent once more, to the
    other node; a POST, or a GET with a body, gets a 502 and is not sent again (docs/differences.md, "A node
    that breaks the connection before answering")."""
    good = two_backends(procs)[0]
    breaker = Breaker()
    port = free_port()
    address = (LOOPBACK, port)
    try:
        procs.router("--fastrouter", f"{LOOPBACK}:{port}", f"--fastrouter-to={breaker.address}",
                     f"--fastrouter-to={good}", wait_for=address)  # fmt: skip

        def request(method: str, body: bytes) -> tuple[Response, int]:
            """The answer, and how many connections the breaking node got meanwhile."""
            before = breaker.connections
            response = uwsgi_request(address, request_vars(host="x", method=method, body_len=len(body)), body)
            # The router answers only after the node closed: the count is final when the answer is here.
            return response, breaker.connections - before

        hit = 0
        for _ in range(6):  # round robin: every other request goes to the breaking node first
            response, reached = request("GET", b"")
            assert response.status == 200 and b"instance=a host=x" in response.body, response.raw[:200]
            assert reached <= 1, "the GET went back to the breaking node"
            hit += reached
        assert hit >= 3, f"only {hit} of 6 GETs went to the breaking node first"
        for method, body in (("POST", b"abc"), ("POST", b""), ("GET", b"abc")):
            for _ in range(3):  # until the request goes to the breaking node first
                response, reached = request(method, body)
                if reached:
                    break
                assert response.status == 200, response.raw[:200]
            assert reached == 1, f"{method} with {len(body)} body bytes never went to the breaking node"
            assert response.status == 502, (method, body, response.raw[:200])
    finally:
        breaker.close()


def test_a_resent_get_goes_to_another_node_even_one_the_weights_pick_less(procs: ProcessManager) -> None:
    """The resend prefers any other node to the one that broke, whatever the balancing says: with the breaking
    node announced at weight 10 and the good one at 1, weighted round robin would pick the breaking node again
    for most resends; every GET is still answered by the good one."""
    good = two_backends(procs)[0]
    breaker = Breaker()
    port, sub_port = free_port(), free_port(socket.SOCK_DGRAM)
    address = (LOOPBACK, port)
    try:
        router = procs.router("--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-subscription-server",
                              f"{LOOPBACK}:{sub_port}", wait_for=address)  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as announcer:
            for node, weight in ((breaker.address, "10"), (good, "1")):
                pairs = {"key": "x", "address": node, "modifier1": "0", "modifier2": "0", "weight": weight}
                announcer.sendto(uwsgi_packet(pairs, modifier1=224), (LOOPBACK, sub_port))
        wait_until(lambda: router.log().count("new node") == 2, 10, what="both announces")
        for _ in range(11):  # a whole weighted cycle: ten picks of the breaking node, one of the good one
            before = breaker.connections
            response = uwsgi_request(address, request_vars(host="x"))
            assert response.status == 200 and b"instance=a host=x" in response.body, response.raw[:200]
            assert breaker.connections - before <= 1, "the GET went back to the breaking node"
    finally:
        breaker.close()


@contextmanager
def clients(
    address: tuple[str, int], count: int, first_byte: bool = False, deadline_s: float = 60.0
) -> Iterator[list[socket.socket]]:
    """``count`` connected, idle client sockets (bounded in count and time), closed on exit.

    The router's listeners use TCP_DEFER_ACCEPT (as uWSGI's): a connection that has sent nothing is handed
    to the router only after the kernel's defer timeout. ``first_byte`` sends the first byte of a request
    head, so the router has the connection at once (a client that then stalls).
    """
    with ExitStack() as stack:
        socks = []
        started = time.monotonic()
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.setblocking(False)
            sock.connect_ex(address)
            if first_byte:
                sock.setblocking(True)
                sock.send(b"\x00")
            socks.append(sock)
            assert time.monotonic() - started < deadline_s, "opening the idle clients took too long"
        yield socks


#: Router memory an idle client may cost (issue 12: at most 1 KiB; measured about 810 bytes compiled: the socket
#: object, the session and its client peer, its reader, the loop's entries).
IDLE_SESSION_BUDGET = 1024


def stats_sessions(stats: tuple[str, int]) -> int:
    with connect(stats) as sock:
        return int(json.loads(read_all(sock))["active_sessions"])


def test_10000_idle_clients_are_all_accepted_and_valid_requests_still_answered(procs: ProcessManager) -> None:
    backend = two_backends(procs)[0]
    port, stats_port = free_port(), free_port()
    address = (LOOPBACK, port)
    router = procs.router("--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-to", backend, "--listen", "4096",
                          "--fastrouter-stats", f"{LOOPBACK}:{stats_port}", wait_for=address)  # fmt: skip
    wait_until(lambda: can_connect((LOOPBACK, stats_port)), 10, what="the stats server")
    assert uwsgi_request(address, request_vars(host="valid"), timeout=5).status == 200  # warm-up
    worker = router_worker(router)
    rss_before = worker.memory_info().rss
    with ExitStack() as stack:
        # In batches, as real clients arrive: 10 000 SYNs at once overflow any accept queue (the kernel
        # then retries the dropped ones after 1, 3, 7 ... seconds), which says nothing about the router.
        for batch in range(10):
            stack.enter_context(clients(address, 1000, first_byte=True))
            wanted = (batch + 1) * 1000

            def held(wanted: int = wanted) -> bool:
                return stats_sessions((LOOPBACK, stats_port)) >= wanted

            wait_until(held, 30, what=f"{wanted} sessions")
        # Cheaply: an idle session costs the router under 1 KiB (the default bounds sessions by descriptors only,
        # not by a count, so memory must not be what runs out first).
        per_session = (worker.memory_info().rss - rss_before) / 10_000
        print(f"router worker RSS per idle session: {per_session:.0f} bytes")
        assert per_session <= IDLE_SESSION_BUDGET, f"{per_session:.0f} bytes per idle session"
        started = time.monotonic()
        response = uwsgi_request(address, request_vars(host="valid"), timeout=5)
        assert response.status == 200, response.raw[:200]
        assert time.monotonic() - started < 2.0


def test_4200_trickling_clients_do_not_hold_the_router(procs: ProcessManager) -> None:
    """Every trickler has sent part of a head and holds its connection; valid requests are answered at once."""
    backend = two_backends(procs)[0]
    port = free_port()
    address = (LOOPBACK, port)
    procs.router("--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-to", backend, "--listen", "4096",
                 wait_for=address)  # fmt: skip
    with clients(address, 4200, first_byte=True):
        for _ in range(5):
            started = time.monotonic()
            assert uwsgi_request(address, request_vars(host="valid"), timeout=5).status == 200
            assert time.monotonic() - started < 2.0


def test_a_trickling_head_is_cut_after_the_timeout_from_its_accept(procs: ProcessManager) -> None:
    """A client that sends a byte every 0.5 s is cut after --fastrouter-timeout, however steadily it sends."""
    port = free_port()
    address = (LOOPBACK, port)
    procs.router("--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-to", f"{LOOPBACK}:1",
                 "--fastrouter-timeout", "3", wait_for=address)  # fmt: skip
    packet = uwsgi_packet(request_vars(host="slow"))
    with connect(address) as trickler:
        trickler.settimeout(0.5)
        started = time.monotonic()
        cut_after = None
        for index in range(1, 20):  # bounded: about 10 s at most
            try:
                trickler.send(packet[index - 1 : index])
                if trickler.recv(1) == b"":
                    cut_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                cut_after = time.monotonic() - started
                break
        assert cut_after is not None, "the trickler was never cut"
        assert 2.5 < cut_after < 5.5, f"cut after {cut_after:.1f} s"


def test_an_explicit_session_cap_is_honoured_and_reported_once_a_second(procs: ProcessManager) -> None:
    backend = two_backends(procs)[0]
    port = free_port()
    address = (LOOPBACK, port)
    router = procs.router("--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-to", backend,
                          "--fastrouter-events", "5", wait_for=address)  # fmt: skip
    with clients(address, 5, first_byte=True), connect(address, timeout=1.5) as sixth:
        sixth.sendall(uwsgi_packet(request_vars(host="sixth")))
        with pytest.raises(TimeoutError):
            sixth.recv(1)  # not accepted while five sessions are open
        time.sleep(2.0)  # the behaviour under test: how often the router says it is at its cap
        lines = [line for line in log_lines(router) if "--fastrouter-events" in line]
        assert 1 <= len(lines) <= 4, lines
    # The idle five are gone: the sixth is served (the kernel kept it in the backlog).
    assert uwsgi_request(address, request_vars(host="after"), timeout=5).status == 200


def test_malformed_requests_cannot_flood_the_log(procs: ProcessManager) -> None:
    port = free_port()
    address = (LOOPBACK, port)
    router = procs.router("--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-to", f"{LOOPBACK}:1", wait_for=address)
    before = len(log_lines(router))
    garbage = b"\x00\x05\x00\x00\xff\xff\xff\xff\xff"  # a vars block that claims more than it has
    sent = 0
    started = time.monotonic()
    while sent < 5000 and time.monotonic() - started < 60:  # bounded in count and time
        with connect(address) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            read_all(sock)
        sent += 1
    wait_until(lambda: "left out" in router.log(), 5, what="the line counting what was left out")
    lines = log_lines(router)[before:]
    invalid = [line for line in lines if "invalid request" in line]
    summaries = [int(m.group(1)) for line in lines if (m := re.search(r"(\d+) more lines? like these", line))]
    assert len(lines) < 600, f"{len(lines)} log lines for {sent} malformed requests"
    assert len(invalid) + sum(summaries) >= sent, "every request is logged or counted"


def test_descriptor_exhaustion_keeps_serving_reports_once_a_second_and_never_spins(procs: ProcessManager) -> None:
    backend = two_backends(procs)[0]
    port = free_port()
    address = (LOOPBACK, port)
    router = start_router_with_nofile(procs, 64, "--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-to", backend)
    wait_until(lambda: can_connect(address) or not router.alive(), 15, what="the router")
    worker = router_worker(router)
    # One client that got in first keeps its session; then enough stalled clients to use every descriptor.
    with connect(address) as early, ExitStack() as stack:
        early.sendall(uwsgi_packet(request_vars(host="early"))[:1])
        wait_until(lambda: holds(worker, early), 10, what="the router to take the early client")
        stack.enter_context(clients(address, 100, first_byte=True))
        wait_until(lambda: "descriptor limit reached" in router.log(), 10, what="the limit line")
        cpu_before = sum(worker.cpu_times()[:2])
        time.sleep(3.0)  # the behaviour under test: what the router does while it stays at its limit
        cpu_used = sum(worker.cpu_times()[:2]) - cpu_before
        assert cpu_used < 0.5, f"the router spun at its limit: {cpu_used:.2f} s CPU in 3 s"
        limit_lines = [line for line in log_lines(router) if "descriptor limit" in line or "cannot accept" in line]
        assert len(limit_lines) <= 6, limit_lines
        early.sendall(uwsgi_packet(request_vars(host="early"))[1:])
        assert read_all(early).startswith(b"HTTP/1.1 200"), "a session it has is served at the limit"
    assert uwsgi_request(address, request_vars(host="after"), timeout=10).status == 200
    assert router.alive() and psutil.pid_exists(worker.pid)


@pytest.mark.parametrize("announced", ["own", "wildcard"])
def test_a_node_that_is_the_router_itself_is_refused_not_looped(procs: ProcessManager, announced: str) -> None:
    """Announcing the router's own address (or ':PORT', which reaches it too) must not make it connect to
    itself request after request until its descriptors run out."""
    port, sub_port, stats_port = free_port(), free_port(), free_port()
    address = (LOOPBACK, port)
    router = procs.router("--fastrouter", f":{port}", "--fastrouter-subscription-server", f"{LOOPBACK}:{sub_port}",
                          "--fastrouter-stats", f"{LOOPBACK}:{stats_port}", wait_for=address)  # fmt: skip
    wait_until(lambda: can_connect((LOOPBACK, stats_port)), 10, what="the stats server")
    node = f"{LOOPBACK}:{port}" if announced == "own" else f":{port}"
    pairs = {"key": "loop.example", "address": node, "modifier1": "0", "modifier2": "0"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(uwsgi_packet(pairs, modifier1=224), (LOOPBACK, sub_port))
    wait_until(lambda: "new node" in router.log(), 5, what="the announce")
    response = uwsgi_request(address, request_vars(host="loop.example"), timeout=5)
    assert response.status == 502, response.raw[:200]
    assert "is this router itself" in router.log()
    wait_until(lambda: stats_sessions((LOOPBACK, stats_port)) <= 1, 5, what="no session left behind")


def test_requests_that_find_no_descriptor_for_their_node_wait_for_one(procs: ProcessManager) -> None:
    """Idle clients may fill the descriptors a router has; when they all send their requests at once, the
    ones that find no descriptor for a node connection wait for one instead of failing."""
    backend_port, port = free_port(), free_port()
    backend = f"{LOOPBACK}:{backend_port}"
    procs.uwsgi_backend(backend, "slow", "--threads", "40", wait_for=(LOOPBACK, backend_port))
    address = (LOOPBACK, port)
    router = start_router_with_nofile(procs, 64, "--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-to", backend)
    wait_until(lambda: can_connect(address) or not router.alive(), 15, what="the router")
    packet = uwsgi_packet(request_vars(host="many", path="/sleep/0.3"))
    with clients(address, 30, first_byte=True) as held:
        wait_until(lambda: "descriptor limit reached" in router.log(), 10, what="every descriptor in use")
        for sock in held:
            sock.sendall(packet[1:])
        answers = []
        for sock in held:
            sock.settimeout(20)
            answers.append(read_all(sock)[:12])
    assert answers == [b"HTTP/1.1 200"] * len(held), answers
    assert "wait for a descriptor" in router.log(), "the descriptor wait was exercised"


def test_kill9_of_one_of_two_nodes_under_load_fails_no_request(procs: ProcessManager) -> None:
    """Requests in flight on a node killed with -9 are sent again (they had no answer yet); later ones find
    its connect refused and go to the other node: no client sees a failure."""
    nodes, victims = [], []
    for name in ("a", "b"):
        node_port = free_port()
        victims.append(procs.uwsgi_backend(f"{LOOPBACK}:{node_port}", name, wait_for=(LOOPBACK, node_port)))
        nodes.append(f"--fastrouter-to={LOOPBACK}:{node_port}")
    port = free_port()
    address = (LOOPBACK, port)
    procs.router("--fastrouter", f"{LOOPBACK}:{port}", *nodes, wait_for=address)
    results: list[int] = []
    stop = threading.Event()

    def client() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:  # bounded in time
            try:
                results.append(uwsgi_request(address, request_vars(host="load", path="/sleep/0.01")).status)
            except OSError:
                results.append(0)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(results) >= 100, 10, what="load on both nodes")
        os.killpg(victims[0].pid, signal.SIGKILL)
        killed_at = len(results)
        wait_until(lambda: len(results) >= killed_at + 200, 15, what="load after the kill")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    failed = [status for status in results if status != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:10]}"


def holds(worker: psutil.Process, client: socket.socket) -> bool:
    """Whether the router worker has accepted ``client`` (it holds the other end of its connection)."""
    return any(conn.raddr and conn.raddr == client.getsockname() for conn in worker.net_connections(kind="tcp"))
