"""One side of a session: the client or the node, each a socket with its own queue of unsent bytes.

Both sides are the same type, so relaying is one piece of code (``Session._pump``) used in both directions. A peer
never raises for the ordinary cases: nothing to read yet is ``None``, a broken connection is ``None`` or ``False``
with the reason in ``failure``. A peer is a bare descriptor, non-blocking at the OS level (sysio.py makes every one
so): no socket object, read with ``sysio.read`` and written with ``sysio.send``, which answer an empty or a full
buffer without an exception.

A long upload is relayed with ``splice(2)`` through a pipe that the receiving peer (the node) owns:
the bytes go from one socket to the other inside the kernel, never copied through the router's memory. The pipe's
bytes count as queued for that peer, behind its ``out`` (sent first, so the order holds).
"""

from __future__ import annotations

import errno
import os
from typing import Final

from uwsgirouter.router import sysio

# The system calls as Final names: compiled, each call reads a C static instead of looking the name up in the module's
# dictionary.
close: Final = sysio.close
read: Final = sysio.read
send: Final = sysio.send
shutdown_write: Final = sysio.shutdown_write
splice: Final = os.splice

_EAGAIN: Final = -errno.EAGAIN
_SPLICE_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: A pipe's default capacity on Linux: what one peer may have in its pipe at most.
PIPE_SIZE: Final = 1 << 16
#: What ``splice_in`` returns besides a byte count (0 is the source's end of input), as ``Session._pump`` does.
NOTHING: Final = -1
SOURCE_FAILED: Final = -2
SINK_FAILED: Final = -3


def failure_reason(exc: OSError) -> str:
    """The OS's words for a broken connection (an OSError made without them still says it failed)."""
    return exc.strerror or "connection error"


class Peer:
    """A connected socket, what is queued for it, what the loop waits for on it, and whether its input ended."""

    __slots__ = ("eof", "failure", "fd", "full_reads", "mask", "out", "pipe_r", "pipe_w", "piped", "received",
                 "written")  # fmt: skip

    def __init__(self, fd: int, mask: int) -> None:
        #: the connected socket, non-blocking; the peer owns it (``close``)
        self.fd = fd
        #: bytes for this peer that it did not take yet (sent in order before anything newer)
        self.out = bytearray()
        #: the events the loop waits for on this socket now
        self.mask = mask
        #: this peer closed its sending side (read returned b"")
        self.eof = False
        #: why the connection broke (the OS's words), "" while it works
        self.failure = ""
        self.received = 0
        self.written = 0
        #: reads from this peer in a row that filled the read size (a long transfer: the other side splices)
        self.full_reads = 0
        #: the pipe bytes for this peer go through once it splices (-1: it does not)
        self.pipe_r = self.pipe_w = -1
        #: bytes in that pipe, queued for this peer after ``out``
        self.piped = 0

    def pending(self) -> bool:
        """Whether bytes are queued for this peer (in ``out`` or in its pipe)."""
        return bool(self.out) or self.piped > 0

    def queued(self) -> int:
        return len(self.out) + self.piped

    def read(self, size: int) -> bytes | None:
        """Up to ``size`` bytes, ``b""`` once the peer closed its side; ``None`` when there is nothing now or the
        connection broke (then ``failure`` says why)."""
        data = read(self.fd, size)
        if isinstance(data, int):  # -errno
            if data != _EAGAIN:
                self.failure = os.strerror(-data)
            return None
        self.received += len(data)
        return data

    def _send(self, data: bytes | bytearray) -> int:
        """Bytes the socket took now (0: none), or -1 when the connection broke (``failure`` says why)."""
        sent = send(self.fd, data)
        if sent < 0:
            if sent == _EAGAIN:
                return 0
            self.failure = os.strerror(-sent)
            return -1
        self.written += sent
        return sent

    def write(self, data: bytes) -> bool:
        """Send what the socket takes now and queue the rest (after anything queued before); False if it broke."""
        if self.out:
            self.out += data
            return True
        sent = self._send(data)
        if sent < 0:
            return False
        if sent < len(data):
            self.out += memoryview(data)[sent:]
        return True

    def flush(self) -> bool:
        """Send as much of the queue as the socket takes now (``out`` first, then the pipe); False if it broke."""
        out = self.out
        if out:
            sent = self._send(out)
            if sent < 0:
                return False
            del out[:sent]
            if out:
                return True
        if self.piped:
            try:
                sent = splice(self.pipe_r, self.fd, self.piped, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return True
            except OSError as exc:
                self.failure = failure_reason(exc)
                return False
            self.piped -= sent
            self.written += sent
        return True

    def start_splicing(self) -> bool:
        """Take what is relayed to this peer through a pipe from now on; False (keep copying) if no pipe can be
        had."""
        try:
            self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        return True

    def splice_in(self, source: Peer) -> int:
        """Move what ``source`` has into this peer's pipe, and on toward this peer: bytes moved, 0 at the source's end
        of input, or NOTHING / SOURCE_FAILED / SINK_FAILED."""
        room = PIPE_SIZE - self.piped
        if room <= 0:
            return NOTHING
        try:
            moved = splice(source.fd, self.pipe_w, room, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return NOTHING
        except OSError as exc:
            source.failure = failure_reason(exc)
            return SOURCE_FAILED
        if not moved:
            source.eof = True
            return 0
        source.received += moved
        self.piped += moved
        return moved if self.flush() else SINK_FAILED

    def shutdown_write(self) -> None:
        """Pass an end of input on: the peer reads EOF, and may still answer."""
        shutdown_write(self.fd)  # a connection already broken says so at the next read or write

    def close(self) -> None:
        """Close the socket (once) and the pipe."""
        fd = self.fd
        if fd >= 0:
            self.fd = -1
            close(fd)
        if self.pipe_r >= 0:
            close(self.pipe_r)
            close(self.pipe_w)
            self.pipe_r = self.pipe_w = -1
