"""Fixtures and helpers shared by the in-process tests of the router core."""

from __future__ import annotations

import os
import resource
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.router.fakeloop import Backend, FakeLoop, backend
from uwsgirouter.router.nodes import make_node
from uwsgirouter.sock import Listener


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    """A non-blocking UNIX listener, as the router's are."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "router.sock"))
    sock.listen(64)
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def loop() -> Iterator[FakeLoop]:
    fake = FakeLoop()
    yield fake
    fake.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Backend]:
    played = backend(tmp_path)
    yield played
    played.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[str], Backend]]:
    """More played nodes: ``nodes("name.sock")``."""
    made: list[Backend] = []

    def make(name: str) -> Backend:
        made.append(backend(tmp_path, name))
        return made[-1]

    yield make
    for played in made:
        played.close()


def tcp_backend(backlog: int = 16) -> Backend:
    """A node the test plays on 127.0.0.1 (TCP: resets and handshakes that take a while)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    host, port = listener.getsockname()
    return Backend(Path(f"{host}:{port}"), listener, make_node(f"{host}:{port}"))


@pytest.fixture
def tcp_node() -> Iterator[Backend]:
    played = tcp_backend()
    yield played
    played.close()


def client_of(listener: socket.socket | Listener, data: bytes = b"") -> socket.socket:
    """A client connected to a UNIX ``listener`` (with a 5 s timeout), having sent ``data``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect((listener.sock if isinstance(listener, Listener) else listener).getsockname())
    if data:
        sock.sendall(data)
    return sock


@contextmanager
def descriptors_left(count: int = 0) -> Iterator[None]:
    """RLIMIT_NOFILE lowered so that ``count`` more descriptors can be opened (the next ones fail with EMFILE),
    and restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + count, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def reset(sock: socket.socket) -> None:
    """Close a TCP connection with a reset (RST) rather than an orderly FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_to_end(sock: socket.socket, loop: FakeLoop) -> bytes:
    """Everything the client gets until the router closes, stepping the loop meanwhile."""
    sock.setblocking(False)
    data = bytearray()
    for _ in range(4000):
        loop.step(0.002)
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError(f"the router did not close the client connection; got {bytes(data)[:200]!r}")


def send_stepping(sock: socket.socket, data: bytes, loop: FakeLoop) -> None:
    """Send all of ``data`` while the loop runs (a socket pair's buffer is smaller than a large body)."""
    sock.setblocking(False)
    view = memoryview(data)
    for _ in range(20000):
        if not view:
            return
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            pass
        loop.step(0.001)
    raise AssertionError("the router did not take the data")


def recv_stepping(sock: socket.socket, size: int, loop: FakeLoop) -> bytes:
    """Receive exactly ``size`` bytes while the loop runs."""
    sock.setblocking(False)
    data = bytearray()
    for _ in range(20000):
        if len(data) >= size:
            return bytes(data)
        loop.step(0.001)
        try:
            chunk = sock.recv(size - len(data))
        except BlockingIOError:
            continue
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    raise AssertionError(f"got {len(data)} of {size} bytes")


def steps(loop: FakeLoop, count: int = 20, timeout: float = 0.005) -> None:
    for _ in range(count):
        loop.step(timeout)


def messages(caplog: Any) -> list[str]:
    return [record.getMessage() for record in caplog.records]
