"""The router's system calls on raw descriptors: accept, connect, send, read, close, a connect's outcome, half-close,
and the epoll set the loop waits on.

Python's socket objects cost more than the calls they make: an object per connection, the peer's address formatted
into a tuple on every accept (and thrown away), the node's address tuple parsed on every connect, an exception for
every ``EAGAIN``. ``select.epoll`` adds a tuple per event and a float timeout to convert on every wait. The router
needs none of it, so the per-request path works on descriptors: each function here is one system call (connect is
two), returns a non-negative result or ``-errno`` and never raises for an OS error (but ``epoll_wait``: a wait that
fails is the loop's own bug).

The functions come from the C module ``_fastio`` (built beside the mypyc modules, see setup.py), which also keeps the
GIL around its calls (on a non-blocking descriptor the call is shorter than the lock's round trip; ``epoll_wait``
lets go of it while the interpreter has other threads). The pure build, and ``UWSGIROUTER_PURE=1``, use the Python
versions below, which do the same through the socket, os and select modules (slower, same results;
tests/router/test_sysio.py runs both side by side). Every descriptor these functions return is non-blocking and
close-on-exec; the listeners handed to ``accept`` must be non-blocking.
"""

from __future__ import annotations

import errno
import importlib
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

from uwsgirouter import pure_requested

_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
EPOLL_CTL_ADD: Final = 1
EPOLL_CTL_DEL: Final = 2
EPOLL_CTL_MOD: Final = 3
#: The most events one ``epoll_wait`` returns (the C version's array).
MAX_EVENTS: Final = 1024


def _errno(exc: OSError) -> int:
    return -(exc.errno or errno.EIO)


def _with_socket(fd: int, call: Callable[[socket.socket], int]) -> int:
    """``call`` with a socket object lent the descriptor (which stays open), or -errno."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        return _errno(exc)
    try:
        return call(sock)
    except OSError as exc:
        return _errno(exc)
    finally:
        sock.detach()


def py_accept(listener: int) -> int:
    """The next connection of ``listener`` (non-blocking), or -errno (-EAGAIN: none waits)."""

    def take(sock: socket.socket) -> int:
        fd, _ = sock._accept()  # type: ignore[attr-defined]  # the C method: a descriptor, no socket object
        os.set_blocking(fd, False)
        return int(fd)

    return _with_socket(listener, take)


def py_connect(family: int, sockaddr: bytes) -> int:
    """A non-blocking socket connected or connecting to the packed ``sockaddr``, or -errno."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM | _FLAGS)
    except OSError as exc:
        return _errno(exc)
    try:
        err = sock.connect_ex(unpack_sockaddr(family, sockaddr))
    except OSError as exc:
        err = exc.errno or errno.EINVAL
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        return -err
    return sock.detach()


def py_send(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Bytes the socket took, or -errno (-EAGAIN: its buffer is full)."""
    try:
        return os.write(fd, data)
    except OSError as exc:
        return _errno(exc)


def py_so_error(fd: int) -> int:
    """How a non-blocking connect ended: 0, the errno it failed with, or -errno of the query."""
    return _with_socket(fd, lambda sock: sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))


def py_shutdown_write(fd: int) -> int:
    """Pass an end of input on (the peer reads EOF after what was sent): 0 or -errno."""

    def shut(sock: socket.socket) -> int:
        sock.shutdown(socket.SHUT_WR)
        return 0

    return _with_socket(fd, shut)


def py_read(fd: int, size: int) -> bytes | int:
    """Up to ``size`` bytes (``b""`` at the end of input), or -errno (-EAGAIN: nothing to read now)."""
    try:
        return os.read(fd, size)
    except OSError as exc:
        return _errno(exc)


def py_close(fd: int) -> int:
    """Close a descriptor: 0 or -errno."""
    try:
        os.close(fd)
    except OSError as exc:
        return _errno(exc)
    return 0


#: The Python versions' epoll objects, by descriptor: the callers hold only the number, as with the C versions.
_EPOLLS: dict[int, select.epoll] = {}


def py_epoll_create() -> int:
    """A new epoll set's descriptor (close-on-exec), or -errno."""
    try:
        ep = select.epoll()
    except OSError as exc:
        return _errno(exc)
    _EPOLLS[ep.fileno()] = ep
    return ep.fileno()


def py_epoll_close(epfd: int) -> int:
    """Release an epoll set made by ``epoll_create``: 0 or -errno."""
    ep = _EPOLLS.pop(epfd, None)
    if ep is None:
        return py_close(epfd)
    ep.close()
    return 0


def py_epoll_ctl(epfd: int, op: int, fd: int, mask: int) -> int:
    """Add (``EPOLL_CTL_ADD``), change (``EPOLL_CTL_MOD``) or drop (``EPOLL_CTL_DEL``) ``fd`` in the set: 0 or
    -errno."""
    ep = _EPOLLS.get(epfd)
    if ep is None:
        return -errno.EBADF
    try:
        if op == EPOLL_CTL_ADD:
            ep.register(fd, mask)
        elif op == EPOLL_CTL_MOD:
            ep.modify(fd, mask)
        elif op == EPOLL_CTL_DEL:
            ep.unregister(fd)
        else:
            return -errno.EINVAL
    except OSError as exc:
        return _errno(exc)
    return 0


def py_epoll_wait(epfd: int, timeout_ms: int, maxevents: int) -> tuple[int, ...]:
    """Wait up to ``timeout_ms`` (-1: no limit) for events: ``(fd, events, fd, events, ...)``."""
    ep = _EPOLLS.get(epfd)
    if ep is None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    if not 1 <= maxevents <= MAX_EVENTS:
        raise ValueError(f"epoll_wait(): maxevents must be 1 to {MAX_EVENTS}")
    return tuple(value for pair in ep.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1, maxevents) for value in pair)


def pack_sockaddr(family: int, address: Any) -> bytes:
    """``struct sockaddr`` bytes for a node's address as nodes.resolve gives it (packed once per node)."""
    if family == socket.AF_UNIX:
        path = address if isinstance(address, bytes) else os.fsencode(address)
        # an abstract name (leading NUL) is exactly its bytes; a path gets its terminating NUL
        return struct.pack("=H", family) + path + (b"" if path[:1] == b"\0" else b"\0")
    if family == socket.AF_INET:
        host, port = address[0], address[1]
        return struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_pton(family, host) + bytes(8)
    if family == socket.AF_INET6:
        host, port = address[0], address[1]
        flowinfo = address[2] if len(address) > 2 else 0
        scope_id = address[3] if len(address) > 3 else 0
        return (
            struct.pack("=H", family)
            + struct.pack("!HI", port, flowinfo)
            + socket.inet_pton(family, host)
            + struct.pack("=I", scope_id)
        )
    # no family a node address has: the kernel refuses it (the socket cannot be made)
    return struct.pack("=H", family) + (address if isinstance(address, bytes) else b"")


def unpack_sockaddr(family: int, sockaddr: bytes) -> Any:
    """The socket module's form of packed ``sockaddr`` (the Python versions connect with it)."""
    if family == socket.AF_UNIX:
        path = sockaddr[2:]
        return path if path[:1] == b"\0" else path.rstrip(b"\0")
    if family == socket.AF_INET:
        (port,) = struct.unpack("!H", sockaddr[2:4])
        return socket.inet_ntop(family, sockaddr[4:8]), port
    if family == socket.AF_INET6:
        port, flowinfo = struct.unpack("!HI", sockaddr[2:8])
        (scope_id,) = struct.unpack("=I", sockaddr[24:28])
        return socket.inet_ntop(family, sockaddr[8:24]), port, flowinfo, scope_id
    return sockaddr[2:]


def _native() -> ModuleType | None:
    if pure_requested():
        return None
    try:
        return importlib.import_module("uwsgirouter.router._fastio")
    except ImportError:  # the pure build
        return None


NATIVE = _native()
accept: Callable[[int], int] = NATIVE.accept if NATIVE is not None else py_accept
connect: Callable[[int, bytes], int] = NATIVE.connect if NATIVE is not None else py_connect
send: Callable[[int, bytes | bytearray | memoryview], int] = NATIVE.send if NATIVE is not None else py_send
so_error: Callable[[int], int] = NATIVE.so_error if NATIVE is not None else py_so_error
shutdown_write: Callable[[int], int] = NATIVE.shutdown_write if NATIVE is not None else py_shutdown_write
read: Callable[[int, int], bytes | int] = NATIVE.read if NATIVE is not None else py_read
close: Callable[[int], int] = NATIVE.close if NATIVE is not None else py_close
epoll_create: Callable[[], int] = NATIVE.epoll_create if NATIVE is not None else py_epoll_create
epoll_close: Callable[[int], int] = NATIVE.close if NATIVE is not None else py_epoll_close
epoll_ctl: Callable[[int, int, int, int], int] = NATIVE.epoll_ctl if NATIVE is not None else py_epoll_ctl
monotonic: Callable[[], float] = NATIVE.monotonic if NATIVE is not None else time.monotonic
epoll_wait: Callable[[int, int, int], tuple[int, ...]] = NATIVE.epoll_wait if NATIVE is not None else py_epoll_wait
