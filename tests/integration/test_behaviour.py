"""What a client sees from the router in the less common cases: half-close, modifiers, key priority,
forced keys, backend timeouts and failures, malformed requests, UNIX listeners and graceful stop."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import stat
import struct
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import (
    Proc,
    ProcessManager,
    Response,
    ThreadedNode,
    can_connect,
    connect,
    free_port,
    read_all,
    recv_exactly,
    request_vars,
    router_worker,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration


class ScriptedBackend(ThreadedNode):
    """A tiny uwsgi backend in a thread: records every request head and sends a scripted reply, then closes.

    Connection N gets ``replies[N]`` (the last reply for every later connection).
    """

    connection_timeout = 5.0

    def __init__(self, replies: Sequence[bytes]) -> None:
        self.replies = replies
        self.heads: list[bytes] = []
        self.errors: list[BaseException] = []
        super().__init__()

    def accepted(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(self.connection_timeout)
                header = recv_exactly(conn, 4)
                head = header + recv_exactly(conn, struct.unpack("<H", header[1:3])[0])
                reply = self.replies[min(len(self.heads), len(self.replies) - 1)]
                self.heads.append(head)
                conn.sendall(reply)
        except Exception as exc:
            self.errors.append(exc)


@pytest.fixture
def scripted() -> Iterator[list[ScriptedBackend]]:
    """Create backends with ``scripted.append(ScriptedBackend(...))``; all are closed at teardown."""
    backends: list[ScriptedBackend] = []
    yield backends
    for backend in backends:
        backend.close()
    for backend in backends:
        assert not backend.errors, backend.errors


def uwsgi_backend_tcp(procs: ProcessManager, name: str, *args: str) -> str:
    port = free_port()
    procs.uwsgi_backend(f"127.0.0.1:{port}", name, *args, wait_for=("127.0.0.1", port))
    return f"127.0.0.1:{port}"


def start_router(procs: ProcessManager, *args: str) -> tuple[Proc, tuple[str, int]]:
    port = free_port()
    router = procs.router("--fastrouter", f"127.0.0.1:{port}", *args, wait_for=("127.0.0.1", port))
    return router, ("127.0.0.1", port)


def ok_body(response: Response) -> bytes:
    assert response.status == 200, response.raw[:300]
    return response.body


# -- half-close (docs/differences.md, "Client that half-closes") ------------------------------------------------------


def test_half_closed_client_gets_its_full_response(procs: ProcessManager) -> None:
    _, address = start_router(procs, "--fastrouter-to", uwsgi_backend_tcp(procs, "live"))
    assert b"instance=live host=example.com" in ok_body(uwsgi_request(address, half_close=True))

    size = 1 << 20
    response = uwsgi_request(address, request_vars(path=f"/bytes/{size}"), half_close=True)
    assert ok_body(response) == b"x" * size

    body = os.urandom(200_000)
    response = uwsgi_request(address, request_vars(method="POST", body_len=len(body)), body, half_close=True)
    assert f"len={len(body)} md5={hashlib.md5(body).hexdigest()}".encode() in ok_body(response)


# -- modifiers ------------------------------------------------------------------------------------------


def test_client_modifiers_are_replaced_by_the_nodes(procs: ProcessManager, scripted: list[ScriptedBackend]) -> None:
    recorder = ScriptedBackend([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    scripted.append(recorder)
    _, address = start_router(procs, "--fastrouter-to", recorder.address)
    env = request_vars(host="mods.example")
    assert ok_body(uwsgi_request(address, env, modifier1=5, modifier2=2)) == b"ok"
    head = recorder.heads[0]
    assert (head[0], head[3]) == (0, 0), f"the backend saw modifier1={head[0]} modifier2={head[3]}"
    # Only the modifiers change: the vars block is forwarded byte for byte.
    assert head[1:3] + head[4:] == uwsgi_packet(env)[1:3] + uwsgi_packet(env)[4:]

    # A real uWSGI 2.0.31 Python backend refuses modifier1 5 (no PSGI plugin) with an empty reply when asked
    # directly; through the router it answers, because it sees modifier1 0.
    live = uwsgi_backend_tcp(procs, "live")
    host, _, port = live.partition(":")
    assert uwsgi_request((host, int(port)), env, modifier1=5, modifier2=2).raw == b""
    _, address = start_router(procs, "--fastrouter-to", live)
    assert b"instance=live host=mods.example" in ok_body(uwsgi_request(address, env, modifier1=5, modifier2=2))


# -- key selection --------------------------------------------------------------------------------------


@pytest.fixture
def three_sites(procs: ProcessManager, unix_dir: Path) -> Path:
    base = unix_dir / "base"
    base.mkdir()
    for name in ("fr.key", "host.key", "server.key"):
        procs.uwsgi_backend(str(base / name), name.partition(".")[0], wait_for=str(base / name))
    return base


def ordered_vars(*pairs: tuple[str, str]) -> dict[str, str]:
    """The request's vars with no key var, then ``pairs`` in this order (a dict keeps insertion order)."""
    env = request_vars(host="")
    del env["SERVER_NAME"]
    return {**env, **dict(pairs)}


def site(address: tuple[str, int], env: dict[str, str]) -> str:
    body = ok_body(uwsgi_request(address, env))
    return body.split()[0].decode().removeprefix("instance=")


def test_key_priority_fastrouter_key_then_host_then_server_name(procs: ProcessManager, three_sites: Path) -> None:
    _, address = start_router(procs, "--fastrouter-use-base", f"{three_sites}/")
    fr, host, server = ("UWSGI_FASTROUTER_KEY", "fr.key"), ("HTTP_HOST", "host.key"), ("SERVER_NAME", "server.key")
    # Whatever the order of the vars.
    assert site(address, ordered_vars(fr, host, server)) == "fr"
    assert site(address, ordered_vars(server, host, fr)) == "fr"
    assert site(address, ordered_vars(host, fr)) == "fr"
    assert site(address, ordered_vars(host, server)) == "host"
    assert site(address, ordered_vars(server, host)) == "host"
    assert site(address, ordered_vars(server)) == "server"


def test_force_key_overrides_every_key_var(procs: ProcessManager, three_sites: Path) -> None:
    _, address = start_router(procs, "--fastrouter-use-base", f"{three_sites}/", "--fastrouter-force-key", "host.key")
    fr, server = ("UWSGI_FASTROUTER_KEY", "fr.key"), ("SERVER_NAME", "server.key")
    assert site(address, ordered_vars(fr, server)) == "host"
    assert site(address, ordered_vars(("HTTP_HOST", "unknown.example"))) == "host"
    assert site(address, ordered_vars()) == "host"  # no key var at all


# -- backend timeouts and failures ----------------------------------------------------------------------


def test_backend_timeout_is_a_504(procs: ProcessManager) -> None:
    live = uwsgi_backend_tcp(procs, "slow")
    router, address = start_router(procs, "--fastrouter-to", live, "--fastrouter-timeout", "2")
    started = time.monotonic()
    response = uwsgi_request(address, request_vars(host="slow.example", path="/sleep/5"), timeout=10)
    elapsed = time.monotonic() - started
    assert response.raw.startswith((b"HTTP/1.0 504 ", b"HTTP/1.1 504 ")), response.raw
    assert 1.5 <= elapsed <= 4.0, f"504 after {elapsed:.2f} s with --fastrouter-timeout 2"
    assert b"slow.example" in response.body
    assert live.encode() not in response.raw
    assert router.alive()


def test_backend_closing_mid_response(procs: ProcessManager, scripted: list[ScriptedBackend]) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
    partial = head + b"y" * 500
    backend = ScriptedBackend([partial, head + b"z" * 1000])
    scripted.append(backend)
    router, address = start_router(procs, "--fastrouter-to", backend.address)
    worker = router_worker(router)
    # The client gets exactly the bytes the backend sent, then the connection closes (read_all returns).
    assert uwsgi_request(address, timeout=10).raw == partial
    assert router.alive() and worker.is_running()
    assert ok_body(uwsgi_request(address)) == b"z" * 1000
    assert router_worker(router).pid == worker.pid


# -- malformed requests ---------------------------------------------------------------------------------

MALFORMED: dict[str, tuple[bytes, bool]] = {
    # name: (bytes the client sends, whether it then half-closes)
    "http-instead-of-uwsgi": (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", True),
    "truncated-header": (b"\x00\x10", True),
    "vars-shorter-than-announced": (struct.pack("<BHB", 0, 100, 0) + b"\x09\x00HTTP_HOST", True),
    "zero-length-key": (struct.pack("<BHB", 0, 6, 0) + b"\x00\x00\x02\x00ab", False),
    "key-past-block-end": (struct.pack("<BHB", 0, 4, 0) + b"\x10\x00ab", False),
    "value-past-block-end": (struct.pack("<BHB", 0, 8, 0) + b"\x01\x00k\x20\x00abc", False),
    "random-bytes": (random.Random(2024).randbytes(300), True),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_is_refused_and_router_keeps_serving(procs: ProcessManager, name: str) -> None:
    router, address = start_router(procs, "--fastrouter-to", uwsgi_backend_tcp(procs, "live"))
    worker = router_worker(router)
    data, half_close = MALFORMED[name]
    with connect(address, timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        try:
            raw = read_all(sock)
        except ConnectionResetError:
            raw = b""
    if raw:
        response = Response.parse(raw)
        assert 400 <= response.status < 500, raw
    assert router.alive() and worker.is_running(), router.log()
    assert b"instance=live" in ok_body(uwsgi_request(address))
    assert router_worker(router).pid == worker.pid


# -- UNIX listener, graceful stop -----------------------------------------------------------------------


def test_unix_listener_mode_and_removal_at_exit(procs: ProcessManager, unix_dir: Path) -> None:
    path = unix_dir / "router.sock"
    router = procs.router(
        "--fastrouter",
        str(path),
        "--chmod-socket=660",
        "--fastrouter-to",
        uwsgi_backend_tcp(procs, "live"),
        wait_for=str(path),
    )
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert b"instance=live" in ok_body(uwsgi_request(str(path)))
    router.signal(signal.SIGTERM)
    wait_until(lambda: not path.exists(), 10, what="the UNIX listener to be removed")
    assert router.wait(10) == 0, router.log()


def test_in_flight_request_survives_sigterm(procs: ProcessManager) -> None:
    live = uwsgi_backend_tcp(procs, "live", "--threads", "2")
    backend_port = int(live.rpartition(":")[2])
    router, address = start_router(procs, "--fastrouter-to", live)
    worker = router_worker(router)

    def to_backend() -> bool:
        return any(
            c.raddr and c.raddr.port == backend_port and c.status == "ESTABLISHED"
            for c in worker.net_connections(kind="tcp")
        )

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(uwsgi_request, address, request_vars(host="inflight", path="/sleep/2"), timeout=15)
        wait_until(to_backend, 5, what="the request to reach the backend")
        assert not future.done()
        router.signal(signal.SIGTERM)
        # While it drains, a new request is answered 503 (docs/differences.md, "Routing failure"), not served and not
        # dropped.
        wait_until(
            lambda: uwsgi_request(address, request_vars(host="late")).status == 503,
            5,
            what="a 503 for a request that arrives during the graceful stop",
        )
        assert not future.done()
        response = future.result(timeout=15)
    assert b"instance=live slept" in ok_body(response)
    assert router.wait(10) == 0, router.log()
    assert not can_connect(address)


def test_request_still_arriving_at_sigterm_is_served_or_gets_503(procs: ProcessManager) -> None:
    router, address = start_router(procs, "--fastrouter-to", uwsgi_backend_tcp(procs, "live"))
    worker = router_worker(router)
    # one whole request first: the worker is then past its start-up (which opens descriptors of its own)
    assert uwsgi_request(address, request_vars(host="warm")).status == 200
    idle_fds = worker.num_fds()
    packet = uwsgi_packet(request_vars(host="midhead"))

    def draining() -> bool:
        try:
            return uwsgi_request(address, request_vars(host="probe"), timeout=2).status == 503
        except OSError:
            return True  # the listener is already closed: draining is over

    with connect(address, timeout=10) as sock:
        sock.sendall(packet[:20])
        wait_until(lambda: worker.num_fds() > idle_fds, 5, what="the router to accept the connection")
        router.signal(signal.SIGTERM)
        wait_until(draining, 10, what="the graceful stop to begin")
        try:
            sock.sendall(packet[20:])
            raw = read_all(sock)
        except (BrokenPipeError, ConnectionResetError):
            raw = b""
    response = Response.parse(raw)
    assert response.status in (200, 503), f"the client got {raw[:200]!r}"


def test_backend_closing_without_answer_is_a_502(procs: ProcessManager, scripted: list[ScriptedBackend]) -> None:
    backend = ScriptedBackend([b""])
    scripted.append(backend)
    router, address = start_router(procs, "--fastrouter-to", backend.address)
    before = len(router.log().splitlines())
    response = uwsgi_request(address, request_vars(host="silent.example"))
    assert response.raw.startswith((b"HTTP/1.0 502 ", b"HTTP/1.1 502 ")), response.raw
    assert b"silent.example" in response.body and backend.address.encode() not in response.raw
    # a GET may be sent once more, and once more still when that went to the same node (no other is left): one
    # line for each resend, one for the 502
    lines = [line for line in router.log().splitlines()[before:] if "key silent.example" in line]
    assert len(lines) == 3, lines
    assert all("sending the request to the next node" in line for line in lines[:2]), lines
    assert lines[2].endswith("closed the connection without answering"), lines


def test_a_flood_of_unroutable_requests_does_not_flood_the_log(procs: ProcessManager, tmp_path: Path) -> None:
    """Every request still gets its 502, but per-request warnings are capped at 50 a second, the rest counted."""
    router, address = start_router(procs, "--fastrouter-use-base", f"{tmp_path}/")
    started = time.monotonic()
    for number in range(300):
        assert uwsgi_request(address, request_vars(host=f"unknown-{number}.example")).status == 502
    elapsed = time.monotonic() - started
    wait_until(lambda: "left out" in router.log(), 5, what="the line counting the left-out warnings")
    lines = [line for line in router.log().splitlines() if "key unknown-" in line]
    assert 0 < len(lines) <= 50 * (int(elapsed) + 2), len(lines)
    assert len(lines) < 300
