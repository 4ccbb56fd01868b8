"""Dead nodes, retries, grace time and fallbacks: UNIX and TCP nodes fail over alike.

See docs/differences.md, "Routing failure" and "Missing UNIX-socket backend".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    Proc,
    ProcessManager,
    Response,
    can_connect,
    free_port,
    log_lines,
    request_vars,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

UNABLE = re.compile(r"unable to connect", re.IGNORECASE)


@dataclass
class Nodes:
    live: str
    dead_tcp: str
    dead_unix: str

    def dead(self, kind: str) -> str:
        return self.dead_tcp if kind == "tcp" else self.dead_unix


@pytest.fixture
def nodes(procs: ProcessManager, unix_dir: Path) -> Nodes:
    live_port = free_port()
    procs.uwsgi_backend(f"127.0.0.1:{live_port}", "live", wait_for=("127.0.0.1", live_port))
    dead_tcp = f"127.0.0.1:{free_port()}"  # nothing listens there
    dead_unix = str(unix_dir / "dead.sock")  # no such file
    return Nodes(f"127.0.0.1:{live_port}", dead_tcp, dead_unix)


def start_router(procs: ProcessManager, *args: str) -> tuple[Proc, tuple[str, int]]:
    port = free_port()
    router = procs.router("--fastrouter", f"127.0.0.1:{port}", *args, wait_for=("127.0.0.1", port))
    return router, ("127.0.0.1", port)


def instance(response: Response) -> str:
    match = re.search(rb"instance=(\S+)", response.body)
    return match.group(1).decode() if match else f"<status {response.status}: {response.raw[:200]!r}>"


def unable_lines(router: Proc) -> list[str]:
    return [line for line in log_lines(router) if UNABLE.search(line)]


def check_d1_error(response: Response, *internal: str) -> None:
    assert response.raw.startswith((b"HTTP/1.0 502 ", b"HTTP/1.1 502 ")), response.raw
    for address in internal:
        assert address.encode() not in response.raw, response.raw


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_dead_node_is_skipped_and_logged_once_per_attempt(procs: ProcessManager, nodes: Nodes, kind: str) -> None:
    dead = nodes.dead(kind)
    # The dead node is first in the round robin, so the very first request tries it; then it is in grace
    # (default 30 s, far longer than this test) and is not tried again: exactly one attempt, one line.
    router, address = start_router(procs, "--fastrouter-to", dead, "--fastrouter-to", nodes.live)
    answers = [uwsgi_request(address) for _ in range(50)]
    assert [r.status for r in answers] == [200] * 50
    assert {instance(r) for r in answers} == {"live"}
    lines = unable_lines(router)
    assert len(lines) == 1, lines
    assert dead in lines[0], lines
    assert router.alive()


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_dead_node_gets_traffic_again_after_gracetime(procs: ProcessManager, nodes: Nodes, kind: str) -> None:
    dead = nodes.dead(kind)
    router, address = start_router(
        procs, "--fastrouter-to", dead, "--fastrouter-to", nodes.live, "--fastrouter-gracetime", "2"
    )
    for _ in range(10):
        assert instance(uwsgi_request(address)) == "live"
    assert any(dead in line for line in unable_lines(router)), router.log()

    wait_for = ("127.0.0.1", int(dead.rpartition(":")[2])) if kind == "tcp" else dead
    procs.uwsgi_backend(dead, "revived", wait_for=wait_for)
    seen: list[str] = []

    def revived_answers() -> bool:
        seen.append(instance(uwsgi_request(address)))
        return seen[-1] == "revived"

    wait_until(revived_answers, 10, interval=0.05, what="the revived node to receive traffic")
    assert set(seen) <= {"live", "revived"}, seen


def test_quiet_silences_connect_failures(procs: ProcessManager, nodes: Nodes) -> None:
    router, address = start_router(
        procs,
        "--fastrouter-quiet=1",
        "--fastrouter-gracetime",
        "1",
        "--fastrouter-to",
        nodes.dead_tcp,
        "--fastrouter-to",
        nodes.dead_unix,
        "--fastrouter-to",
        nodes.live,
    )
    answers = [uwsgi_request(address) for _ in range(10)]
    assert {instance(r) for r in answers} == {"live"}
    assert unable_lines(router) == []
    assert nodes.dead_tcp not in router.log() and nodes.dead_unix not in router.log()


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_fallback_answers_when_the_mapped_node_is_dead(procs: ProcessManager, nodes: Nodes, kind: str) -> None:
    dead = nodes.dead(kind)
    router, address = start_router(procs, "--fastrouter-to", dead, "--fastrouter-fallback", nodes.live)
    response = uwsgi_request(address)
    assert response.status == 200, response.raw
    assert instance(response) == "live"
    # As in uWSGI 2.0.31 (checked with the real binary): while the only node is in its grace time the key
    # maps to no node, and fallbacks serve that case only with --fastrouter-fallback-on-no-key. uWSGI
    # closes the connection; uwsgirouter answers a "Routing failure" 502.
    check_d1_error(uwsgi_request(address), dead, nodes.live)
    assert router.alive()

    _, address = start_router(
        procs, "--fastrouter-to", dead, "--fastrouter-fallback", nodes.live, "--fastrouter-fallback-on-no-key"
    )
    for _ in range(5):
        response = uwsgi_request(address)
        assert response.status == 200, response.raw
        assert instance(response) == "live"


def test_fallback_on_no_key_with_use_base(procs: ProcessManager, nodes: Nodes, unix_dir: Path) -> None:
    base = unix_dir / "base"
    base.mkdir()
    _, with_flag = start_router(
        procs,
        "--fastrouter-use-base",
        f"{base}/",
        "--fastrouter-fallback",
        nodes.live,
        "--fastrouter-fallback-on-no-key",
    )
    response = uwsgi_request(with_flag, request_vars(host="nosuch.example"))
    assert response.status == 200, response.raw
    assert instance(response) == "live"

    # No fallback at all: a key with no socket is a "Routing failure" 502 that names the key, not the path.
    _, without = start_router(procs, "--fastrouter-use-base", f"{base}/")
    response = uwsgi_request(without, request_vars(host="nosuch.example"))
    check_d1_error(response, str(base))
    assert b"nosuch.example" in response.body


def test_use_base_missing_socket_without_the_flag_still_uses_the_fallback(
    procs: ProcessManager, nodes: Nodes, unix_dir: Path
) -> None:
    """A missing UNIX socket is a failed connect, so the fallback is tried (docs/differences.md, "Missing UNIX-socket
    backend")."""
    base = unix_dir / "base"
    base.mkdir()
    _, address = start_router(procs, "--fastrouter-use-base", f"{base}/", "--fastrouter-fallback", nodes.live)
    response = uwsgi_request(address, request_vars(host="nosuch.example"))
    assert response.status == 200, response.raw
    assert instance(response) == "live"


def test_max_retries_zero_with_a_dead_first_node_is_a_502(procs: ProcessManager, nodes: Nodes) -> None:
    router, address = start_router(
        procs, "--fastrouter-to", nodes.dead_tcp, "--fastrouter-to", nodes.live, "--fastrouter-max-retries", "0"
    )
    check_d1_error(uwsgi_request(address), nodes.dead_tcp, nodes.live)
    assert len(unable_lines(router)) == 1, router.log()
    # The failed node is now in its grace time: the next request goes straight to the live one.
    assert instance(uwsgi_request(address)) == "live"
    assert router.alive() and can_connect(address)
