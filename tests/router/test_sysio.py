"""The per-request system calls (router/sysio.py): the C module and the pure build's Python versions, side by side,
over real sockets: the same results, -errno instead of exceptions, non-blocking close-on-exec descriptors."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from uwsgirouter.router import sysio
from uwsgirouter.router.nodes import resolve

NATIVE: Any = sysio.NATIVE
if NATIVE is None:  # the pure build, or UWSGIROUTER_PURE=1: the C module is tried directly when it was built
    try:
        from uwsgirouter.router import _fastio as NATIVE  # type: ignore[attr-defined,no-redef]
    except ImportError:
        NATIVE = None

IMPLEMENTATIONS = ["python", "c"]


CALLS = ("accept", "connect", "send", "so_error", "shutdown_write", "read", "close", "epoll_create", "epoll_ctl",
         "epoll_wait")  # fmt: skip


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> Any:
    if request.param == "python":
        calls = {name: getattr(sysio, "py_" + name) for name in CALLS}
        return SimpleNamespace(**calls, epoll_close=sysio.py_epoll_close)
    if NATIVE is None:
        pytest.skip("the C module was not built (a pure build)")
    return SimpleNamespace(**{name: getattr(NATIVE, name) for name in CALLS}, epoll_close=NATIVE.close)


def is_nonblocking_cloexec(fd: int) -> bool:
    return not os.get_blocking(fd) and not os.get_inheritable(fd)


def test_accept_gives_a_descriptor_or_eagain(impl: Any, listener: socket.socket) -> None:
    assert impl.accept(listener.fileno()) == -errno.EAGAIN, "nothing waits: no exception"
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    fd = impl.accept(listener.fileno())
    try:
        assert fd >= 0 and is_nonblocking_cloexec(fd)
        client.sendall(b"hi")
        assert os.read(fd, 10) == b"hi"
    finally:
        os.close(fd)
        client.close()


def test_accept_on_a_closed_descriptor_is_ebadf(impl: Any) -> None:
    fd = os.dup(0)
    os.close(fd)
    assert impl.accept(fd) == -errno.EBADF


@pytest.mark.parametrize("family", ["unix", "abstract", "ipv4", "ipv6"])
def test_connect_reaches_a_listener_by_its_packed_address(impl: Any, family: str, tmp_path: Path) -> None:
    listener, name = listening(family, tmp_path)
    try:
        node_family, address = resolve(name)
        packed = sysio.pack_sockaddr(node_family, address)
        assert sysio.unpack_sockaddr(node_family, packed) == normalised(node_family, address)
        fd = impl.connect(node_family, packed)
        assert fd >= 0 and is_nonblocking_cloexec(fd)
        conn, _ = listener.accept()
        try:
            assert wait_sent(impl.send, fd, b"head") == 4
            assert conn.recv(10) == b"head"
            assert impl.so_error(fd) == 0
            assert impl.shutdown_write(fd) == 0
            assert conn.recv(10) == b"", "the end of input was passed on"
        finally:
            conn.close()
            os.close(fd)
    finally:
        listener.close()


def test_connect_to_no_listener_is_refused_without_a_descriptor(impl: Any, tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    path = tmp_path / "gone.sock"
    assert impl.connect(socket.AF_UNIX, sysio.pack_sockaddr(socket.AF_UNIX, str(path).encode())) == -errno.ENOENT
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.bind(str(path))  # a path whose socket listens no more
    probe.close()
    assert impl.connect(socket.AF_UNIX, sysio.pack_sockaddr(socket.AF_UNIX, str(path).encode())) == -errno.ECONNREFUSED
    assert len(os.listdir("/proc/self/fd")) == before, "the socket of a failed connect is closed"


def test_a_family_the_kernel_does_not_know_is_eafnosupport(impl: Any) -> None:
    assert impl.connect(4242, sysio.pack_sockaddr(4242, b"x")) == -errno.EAFNOSUPPORT


def test_send_reports_a_full_buffer_and_a_broken_connection_as_negative_errno(impl: Any) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    fd = ours.detach()
    try:
        for _ in range(10000):
            sent = impl.send(fd, b"x" * 65536)
            if sent < 0:
                break
        assert sent == -errno.EAGAIN
        assert impl.send(fd, memoryview(b"abc")) == -errno.EAGAIN, "a memoryview is taken too"
        theirs.close()
        assert impl.send(fd, b"after") in (-errno.EPIPE, -errno.ECONNRESET), "no SIGPIPE, no exception"
    finally:
        os.close(fd)


def test_so_error_and_shutdown_of_a_closed_descriptor_are_ebadf(impl: Any) -> None:
    fd = os.dup(0)
    os.close(fd)
    assert impl.so_error(fd) == -errno.EBADF
    assert impl.shutdown_write(fd) == -errno.EBADF


def test_read_gives_bytes_end_of_input_or_negative_errno(impl: Any) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    fd = ours.detach()
    try:
        assert impl.read(fd, 100) == -errno.EAGAIN, "nothing to read: no exception"
        theirs.sendall(b"hello")
        assert impl.read(fd, 3) == b"hel"
        assert impl.read(fd, 65536) == b"lo", "what is there, not the size asked"
        assert impl.read(fd, 0) == b""
        theirs.sendall(b"abc")
        first = impl.read(fd, 65536)
        theirs.sendall(b"de")
        assert (first, impl.read(fd, 65536)) == (b"abc", b"de"), "each read its own bytes object"
        theirs.sendall(b"y" * 20000)
        longer = impl.read(fd, 65536)
        theirs.sendall(b"z")
        assert (longer, impl.read(fd, 65536)) == (b"y" * 20000, b"z"), "a longer read, then a short one"
        theirs.sendall(b"x" * 70000)
        got = b""
        while len(got) < 70000:
            piece = impl.read(fd, 65536)
            assert isinstance(piece, bytes) and len(piece) <= 65536
            got += piece
        assert got == b"x" * 70000
        theirs.close()
        assert impl.read(fd, 100) == b"", "the end of input"
    finally:
        os.close(fd)
    assert impl.read(fd, 100) == -errno.EBADF


def test_close_releases_a_descriptor_once(impl: Any) -> None:
    fd = os.dup(0)
    assert impl.close(fd) == 0
    assert impl.close(fd) == -errno.EBADF, "twice is -EBADF, not an exception"


def test_an_epoll_set_reports_what_it_watches_as_flat_descriptor_event_pairs(impl: Any) -> None:
    epfd = impl.epoll_create()
    assert epfd >= 0 and not os.get_inheritable(epfd)
    r, w = os.pipe()
    try:
        assert impl.epoll_ctl(epfd, sysio.EPOLL_CTL_ADD, r, select.EPOLLIN) == 0
        assert impl.epoll_ctl(epfd, sysio.EPOLL_CTL_ADD, r, select.EPOLLIN) == -errno.EEXIST
        assert impl.epoll_wait(epfd, 0, 8) == (), "nothing ready"
        os.write(w, b"x")
        assert impl.epoll_wait(epfd, 1000, 8) == (r, select.EPOLLIN)
        assert impl.epoll_ctl(epfd, sysio.EPOLL_CTL_ADD, w, select.EPOLLOUT) == 0
        ready = impl.epoll_wait(epfd, 1000, 8)
        assert sorted(zip(ready[::2], ready[1::2], strict=True)) == sorted([(r, select.EPOLLIN), (w, select.EPOLLOUT)])
        assert impl.epoll_wait(epfd, 1000, 1) in ((r, select.EPOLLIN), (w, select.EPOLLOUT)), "maxevents bounds it"
        assert impl.epoll_ctl(epfd, sysio.EPOLL_CTL_MOD, r, 0) == 0
        assert impl.epoll_ctl(epfd, sysio.EPOLL_CTL_DEL, w, 0) == 0
        assert impl.epoll_wait(epfd, 0, 8) == (), "what is no longer watched is not reported"
        assert impl.epoll_ctl(epfd, sysio.EPOLL_CTL_MOD, w, select.EPOLLOUT) == -errno.ENOENT
        with pytest.raises(ValueError, match="maxevents"):
            impl.epoll_wait(epfd, 0, 0)
    finally:
        os.close(r)
        os.close(w)
        assert impl.epoll_close(epfd) == 0
    assert impl.epoll_ctl(epfd, sysio.EPOLL_CTL_ADD, 0, select.EPOLLIN) == -errno.EBADF
    with pytest.raises(OSError) as failed:
        impl.epoll_wait(epfd, 0, 8)
    assert failed.value.errno == errno.EBADF, "a wait on no epoll set is the loop's own bug: it raises"


def test_the_python_epoll_calls_answer_an_unknown_operation_and_close_a_plain_descriptor() -> None:
    epfd = sysio.py_epoll_create()
    r, w = os.pipe()
    try:
        assert sysio.py_epoll_ctl(epfd, 99, r, select.EPOLLIN) == -errno.EINVAL
    finally:
        sysio.py_epoll_close(epfd)
        os.close(w)
    assert sysio.py_epoll_close(r) == 0, "a descriptor it did not make is closed all the same"
    assert sysio.py_close(r) == -errno.EBADF


def test_a_signal_during_the_wait_runs_its_handler_and_a_raising_handler_stops_the_wait(impl: Any) -> None:
    epfd = impl.epoll_create()
    seen: list[int] = []

    def record(signum: int, frame: object) -> None:
        seen.append(signum)

    def fail(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, record)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert impl.epoll_wait(epfd, 300, 8) == ()
        assert seen == [signal.SIGALRM], "the handler ran"
        signal.signal(signal.SIGALRM, fail)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            impl.epoll_wait(epfd, 5000, 8)
        assert time.monotonic() - started < 4, "the wait ended with the signal"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        impl.epoll_close(epfd)


def test_the_wait_lets_other_threads_run(impl: Any) -> None:
    """The C version keeps the GIL through a wait only while the interpreter has no other thread."""
    epfd = impl.epoll_create()
    ran_at: list[float] = []
    running = threading.Event()
    stop = threading.Event()

    def count() -> None:
        running.set()
        while not stop.is_set():
            ran_at.append(time.monotonic())
            time.sleep(0.005)  # a mark every 5 ms while it gets to run

    worker = threading.Thread(target=count)
    worker.start()
    try:
        assert running.wait(5), "the thread started"
        started = time.monotonic()
        impl.epoll_wait(epfd, 300, 8)
        ended = time.monotonic()
        during = [t for t in ran_at if started + 0.05 < t < ended - 0.05]
        assert len(during) > 5, "the other thread ran during the wait"
    finally:
        stop.set()
        worker.join()
        impl.epoll_close(epfd)


def test_the_loops_clock_is_time_monotonic() -> None:
    clocks = [sysio.monotonic] + ([NATIVE.monotonic] if NATIVE is not None else [])
    for clock in clocks:
        before = time.monotonic()
        now = clock()
        after = time.monotonic()
        assert before - 1e-6 <= now <= after + 1e-6, "the same clock as time.monotonic"


def test_the_router_uses_the_c_module_unless_pure_python_was_asked_for() -> None:
    import uwsgirouter

    if uwsgirouter.pure_requested() or NATIVE is None:
        assert sysio.accept is sysio.py_accept
    else:
        assert sysio.accept is NATIVE.accept and sysio.send is NATIVE.send and sysio.epoll_wait is NATIVE.epoll_wait


def family_bytes(family: int) -> bytes:
    return family.to_bytes(2, sys.byteorder)


@pytest.mark.parametrize(
    ("family", "address", "expected"),
    [
        (socket.AF_UNIX, "/run/app.sock", b"/run/app.sock\0"),
        (socket.AF_UNIX, b"/run/app.sock", b"/run/app.sock\0"),
        (socket.AF_UNIX, "/run/X", b"/run/X\0"),  # only the terminator is stripped when unpacking
        (socket.AF_UNIX, b"\0name\0", b"\0name\0"),  # abstract (uWSGI's trailing NUL kept): no terminator added
        (socket.AF_INET, ("127.0.0.1", 3031), bytes([0x0B, 0xD7, 127, 0, 0, 1]) + bytes(8)),
        (socket.AF_INET6, ("::1", 3031), bytes([0x0B, 0xD7]) + bytes(4) + bytes(15) + b"\1" + bytes(4)),
        (
            socket.AF_INET6,
            ("fe80::1", 3031, 0x01020304, 7),
            bytes([0x0B, 0xD7, 1, 2, 3, 4, 0xFE, 0x80]) + bytes(13) + b"\1" + (7).to_bytes(4, sys.byteorder),
        ),
        (4242, b"x", b"x"),
        (4242, ("odd", 1), b""),
    ],
    ids=["path", "path-bytes", "path-x", "abstract", "ipv4", "ipv6", "ipv6-flow-scope", "unknown", "unknown-tuple"],
)
def test_a_node_address_is_packed_as_the_kernel_reads_a_sockaddr(family: int, address: Any, expected: bytes) -> None:
    packed = sysio.pack_sockaddr(family, address)
    assert packed == family_bytes(family) + expected
    back = sysio.unpack_sockaddr(family, packed)
    if family == socket.AF_INET6:
        assert back == (*address, 0, 0)[:4]
    elif family == socket.AF_UNIX:
        assert back == (address if isinstance(address, bytes) else address.encode())
    elif family == socket.AF_INET:
        assert back == address
    else:
        assert back == expected


def test_a_peer_failure_without_words_still_says_it_failed() -> None:
    from uwsgirouter.router.peer import failure_reason

    assert failure_reason(OSError()) == "connection error"
    assert failure_reason(OSError(errno.EPIPE, "Broken pipe")) == "Broken pipe"


# -- helpers ---------------------------------------------------------------------------------------------------------


def listening(family: str, tmp_path: Path) -> tuple[socket.socket, str]:
    if family in ("unix", "abstract"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if family == "unix":
            name = str(tmp_path / "node.sock")
            sock.bind(name)
        else:
            name = f"@uwsgirouter-test-{os.getpid()}-{id(sock)}"
            sock.bind(b"\0" + name[1:].encode() + b"\0")  # uWSGI's abstract names end with a NUL
    elif family == "ipv4":
        sock = socket.create_server(("127.0.0.1", 0))
        name = f"127.0.0.1:{sock.getsockname()[1]}"
    else:
        if not socket.has_ipv6:
            pytest.skip("no IPv6")
        try:
            sock = socket.create_server(("::1", 0), family=socket.AF_INET6)
        except OSError:
            pytest.skip("no IPv6 loopback")
        name = f"[::1]:{sock.getsockname()[1]}"
    sock.listen(4)
    sock.settimeout(5)
    return sock, name


def normalised(family: int, address: Any) -> Any:
    return (*address, 0, 0) if family == socket.AF_INET6 else address


def wait_sent(send: Callable[[int, bytes], int], fd: int, data: bytes) -> int:
    """send() until the handshake is over (EAGAIN while it is not), with a deadline."""
    import select

    for _ in range(100):
        sent = send(fd, data)
        if sent != -errno.EAGAIN:
            return sent
        select.select([], [fd], [], 0.05)
    raise AssertionError("never writable")
