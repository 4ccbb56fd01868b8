"""Hostile keys (docs/differences.md): keys that would escape the socket directory never reach the filesystem (base and
pattern mappers).

Every hostile key is answered with a parseable 502 whose body reveals no internal path, and is logged on
exactly one line naming the key in printable form. Listening "trap" sockets sit at the paths the hostile
keys would resolve to (outside the base directory and in its subdirectories); none of them is ever connected.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.support import (
    Proc,
    ProcessManager,
    free_port,
    log_lines,
    request_vars,
    router_worker,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

LONG_KEY = "k" * 300

#: hostile Host value -> the forms a log line may use to name it (printable: \xNN or a backslash escape)
HOSTILE_KEYS: dict[str, tuple[str, ...]] = {
    "../x": ("../x",),
    "../other/x": ("../other/x",),
    "a/b": ("a/b",),
    "a\x00b": ("a\\x00b", "a\\0b"),
    "..": ("..",),
    ".": (".",),
    "a\\b": ("a\\x5cb", "a\\x5Cb", "a\\\\b"),
}


def trap(path: Path) -> socket.socket:
    """A listening UNIX socket at ``path``: a connection to it would wait in its backlog."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    sock.setblocking(False)
    return sock


def was_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def names_key(line: str, forms: tuple[str, ...]) -> bool:
    """``line`` contains one of ``forms`` as a token (delimited by spaces, quotes, brackets or punctuation)."""
    return any(
        re.search(r"(?:^|(?<=[\s\"'(\[{<=]))" + re.escape(form) + r"(?=$|[\s\"')\]}>,;:])", line) for form in forms
    )


def mapper_option(mapper: str, base: Path) -> list[str]:
    if mapper == "use-base":
        return ["--fastrouter-use-base", f"{base}/"]
    return ["--fastrouter-use-pattern", f"{base}/%s"]


def hostile_vars(host: str) -> dict[str, str]:
    # No SERVER_NAME: the Host value is the only key candidate.
    env = request_vars(host=host)
    del env["SERVER_NAME"]
    return env


def check_refused(router: Proc, address: tuple[str, int], host: str, forms: tuple[str, ...], unix_dir: Path) -> None:
    before = len(log_lines(router))
    response = uwsgi_request(address, hostile_vars(host))
    assert response.raw.startswith((b"HTTP/1.0 502 ", b"HTTP/1.1 502 ")), (host, response.raw)
    assert response.status == 502
    assert str(unix_dir).encode() not in response.raw, (host, response.raw)
    assert b"/tmp/" not in response.raw, (host, response.raw)
    wait_until(lambda: log_lines(router)[before:], 5, what=f"a log line for key {host!r}")
    # The line is written before the answer is sent, so everything this request logs is there now.
    new = log_lines(router)[before:]
    assert len(new) == 1, (host, new)
    if forms:
        assert names_key(new[0], forms), (host, new)


@pytest.mark.parametrize("mapper", ["use-base", "use-pattern"])
def test_hostile_keys_never_reach_the_filesystem(procs: ProcessManager, unix_dir: Path, mapper: str) -> None:
    base = unix_dir / "base"
    base.mkdir()
    traps = {
        "../x": trap(unix_dir / "x"),
        "../other/x": trap(unix_dir / "other" / "x"),
        "a/b": trap(base / "a" / "b"),
        "a\\b": trap(base / "a\\b"),
    }
    try:
        good = base / "good"
        procs.uwsgi_backend(str(good), "good", wait_for=str(good))
        port = free_port()
        address = ("127.0.0.1", port)
        router = procs.router("--fastrouter", f"127.0.0.1:{port}", *mapper_option(mapper, base), wait_for=address)
        assert b"instance=good host=good" in uwsgi_request(address, hostile_vars("good")).body
        for host, forms in HOSTILE_KEYS.items():
            check_refused(router, address, host, forms, unix_dir)
        # Over 255 bytes a Host value is not a key at all (uWSGI's rule): "no key", still a 502 and one line.
        check_refused(router, address, LONG_KEY, (), unix_dir)
        assert router.alive(), router.log()
        assert b"instance=good host=good" in uwsgi_request(address, hostile_vars("good")).body
        reached = [host for host, sock in traps.items() if was_connected(sock)]
        assert not reached, f"the router connected to the socket a refused key points at, for keys {reached}"
    finally:
        for sock in traps.values():
            sock.close()


@pytest.mark.parametrize("mapper", ["use-base", "use-pattern"])
def test_long_legal_key_is_a_502_not_a_crash(procs: ProcessManager, unix_dir: Path, mapper: str) -> None:
    base = unix_dir / "base"
    base.mkdir()
    port = free_port()
    address = ("127.0.0.1", port)
    router = procs.router("--fastrouter", f"127.0.0.1:{port}", *mapper_option(mapper, base), wait_for=address)
    worker = router_worker(router)
    key = (
        "h" * 100
    )  # a legal key ("Hostile keys" refuses only > 255 bytes), but base + key is too long for a UNIX socket path
    for _ in range(2):
        before = len(log_lines(router))
        response = uwsgi_request(address, hostile_vars(key))
        assert response.status == 502, response.raw
        assert str(unix_dir).encode() not in response.raw
        assert len(log_lines(router)[before:]) == 1, router.log()
    assert router.alive() and worker.is_running() and router_worker(router).pid == worker.pid, router.log()
