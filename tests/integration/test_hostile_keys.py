"""Hostile keys (docs/differences.md): keys that would escape the socket directory never reach the filesystem (base and
pattern mappers).

Every hostile key form (``..``, ``.``, a NUL, ``/``, ``\\``, an absolute path) is answered with a parseable 502
whose body reveals no internal path, and is logged on exactly one line naming the key as refused. Listening
"trap" sockets sit at the paths the router would connect to if it used the key (outside the base directory, in
its subdirectories, next to a base written without a trailing slash, cut short at a NUL); none is ever connected.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
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


def trap(path: str) -> socket.socket:
    """A listening UNIX socket at ``path`` (its directories made as written, so ``..`` resolves as the
    kernel will resolve it for the router): a connection to it would wait in its backlog."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
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


def hostile_vars(host: str) -> dict[str, str]:
    # No SERVER_NAME: the Host value is the only key candidate.
    env = request_vars(host=host)
    del env["SERVER_NAME"]
    return env


def check_refused(router: Proc, address: tuple[str, int], host: str, forms: tuple[str, ...], unix_dir: Path) -> None:
    """The documented answer: a 502 that reveals no internal path, and one log line naming the key as refused."""
    before = len(log_lines(router))
    try:
        response = uwsgi_request(address, hostile_vars(host), timeout=5)
    except TimeoutError:
        raise AssertionError(f"no answer for key {host!r}: the router waits on a socket it connected to") from None
    assert response.raw.startswith((b"HTTP/1.0 502 ", b"HTTP/1.1 502 ")), (host, response.raw)
    assert response.status == 502
    answer = response.raw
    for form in (host, *forms):  # the body names the key (an absolute path as the key is no leak)
        answer = answer.replace(form.encode("utf-8", "surrogateescape"), b"<key>")
    assert str(unix_dir).encode() not in answer, (host, response.raw)
    assert b"/tmp/" not in answer, (host, response.raw)
    wait_until(lambda: log_lines(router)[before:], 5, what=f"a log line for key {host!r}")
    # The line is written before the answer is sent, so everything this request logs is there now.
    new = log_lines(router)[before:]
    assert len(new) == 1, (host, new)
    if forms:
        assert names_key(new[0], forms), (host, new)
        assert "refused" in new[0], f"key {host!r} was not refused but tried: {new}"


@dataclass
class Layout:
    """A mapper configuration, and the address the router would build from a key if it did not refuse it."""

    option: str
    value: str
    hostile: tuple[str, ...]

    def address(self, key: str) -> str:
        if self.option == "--fastrouter-use-base":
            return self.value + key  # a plain concatenation, as in uWSGI
        return self.value.replace("%s", key)


def layouts(unix_dir: Path) -> dict[str, Layout]:
    absolute = f"{unix_dir}/abs"  # an absolute path as the key
    return {
        # The documented form (a trailing slash): "." and ".." name directories there, so no socket can
        # sit where they point; they are checked by their answer (refused, not tried).
        "use-base-dir/": Layout(
            "--fastrouter-use-base",
            f"{unix_dir}/base/",
            ("../x", "../other/x", "a/b", "a\\b", "n\x00b", absolute, "..", "."),
        ),
        # Without the slash "." and ".." reach files next to the prefix, and a NUL cuts the path short.
        "use-base-prefix": Layout(
            "--fastrouter-use-base", f"{unix_dir}/p", ("..", ".", "a\x00b", "/x", "\\x", absolute)
        ),
        "use-pattern": Layout(
            "--fastrouter-use-pattern",
            f"{unix_dir}/pat/%s/sock",
            ("..", ".", "a\x00b", "../x", "c/d", "a\\b", absolute),
        ),
    }


def printable_forms(key: str) -> tuple[str, ...]:
    """The ways a log line may write ``key``: NUL and backslash escaped (\\xNN, \\0 or \\\\)."""
    forms = {key}
    for char, escapes in (("\x00", ("\\x00", "\\0")), ("\\", ("\\x5c", "\\x5C", "\\\\"))):
        if char in key:
            forms = {form.replace(char, escape) for form in forms for escape in escapes}
    return tuple(sorted(forms))


@pytest.mark.parametrize("layout_id", ["use-base-dir/", "use-base-prefix", "use-pattern"])
def test_hostile_keys_never_reach_the_filesystem(procs: ProcessManager, unix_dir: Path, layout_id: str) -> None:
    """Every hostile key form is refused: a trap socket listens wherever the router would connect if it used
    the key (the path the kernel would resolve, cut at a NUL), and none is ever connected."""
    layout = layouts(unix_dir)[layout_id]
    (unix_dir / "base").mkdir()
    (unix_dir / "pat").mkdir()
    traps: dict[str, socket.socket] = {}
    untrappable = []
    try:
        for key in layout.hostile:
            path = layout.address(key).split("\x00")[0]
            if os.path.isdir(path):
                untrappable.append(key)
                continue
            assert path not in [t.getsockname() for t in traps.values()], f"two keys share the trap {path}"
            traps[key] = trap(path)
        assert set(untrappable) <= {".", ".."}, untrappable
        good = layout.address("good")
        os.makedirs(os.path.dirname(good), exist_ok=True)
        procs.uwsgi_backend(good, "good", wait_for=good)
        port = free_port()
        address = ("127.0.0.1", port)
        router = procs.router("--fastrouter", f"127.0.0.1:{port}", layout.option, layout.value, wait_for=address)
        assert b"instance=good host=good" in uwsgi_request(address, hostile_vars("good")).body
        for key in layout.hostile:
            check_refused(router, address, key, printable_forms(key), unix_dir)
        # Over 255 bytes a Host value is not a key at all (uWSGI's rule): "no key", still a 502 and one line.
        check_refused(router, address, LONG_KEY, (), unix_dir)
        assert router.alive(), router.log()
        assert b"instance=good host=good" in uwsgi_request(address, hostile_vars("good")).body
        reached = [key for key, sock in traps.items() if was_connected(sock)]
        assert not reached, f"the router connected to the socket a refused key points at, for keys {reached}"
    finally:
        for sock in traps.values():
            sock.close()


def mapper_option(mapper: str, base: Path) -> list[str]:
    if mapper == "use-base":
        return ["--fastrouter-use-base", f"{base}/"]
    return ["--fastrouter-use-pattern", f"{base}/%s"]


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
