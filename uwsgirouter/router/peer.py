"""One side of a session: the client or the node, each a socket with its own queue of unsent bytes.

Both sides are the same type, so relaying is one piece of code (``Session._pump``) used in both directions. A peer
never raises for the ordinary cases: nothing to read yet is ``None``, a broken connection is ``None`` or ``False``
with the reason in ``failure``. Every call passes ``MSG_DONTWAIT``, so a socket left blocking at the OS level (an
accepted client: no extra ``fcntl``) never blocks the loop.
"""

from __future__ import annotations

import _socket
import socket
from typing import Final

_DONTWAIT: Final = socket.MSG_DONTWAIT


class Peer:
    """A connected socket, what is queued for it, what the loop waits for on it, and whether its input ended."""

    __slots__ = ("eof", "failure", "fd", "mask", "out", "received", "sock", "written")

    def __init__(self, sock: _socket.socket, mask: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
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

    def read(self, size: int) -> bytes | None:
        """Up to ``size`` bytes, ``b""`` once the peer closed its side; ``None`` when there is nothing now or the
        connection broke (then ``failure`` says why)."""
        try:
            data = self.sock.recv(size, _DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            self.failure = exc.strerror or "connection error"
            return None
        self.received += len(data)
        return data

    def write(self, data: bytes) -> bool:
        """Send what the socket takes now and queue the rest (after anything queued before); False if it broke."""
        if self.out:
            self.out += data
            return True
        try:
            sent = self.sock.send(data, _DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.failure = exc.strerror or "connection error"
            return False
        self.written += sent
        if sent < len(data):
            self.out += memoryview(data)[sent:]
        return True

    def flush(self) -> bool:
        """Send as much of the queue as the socket takes now; False if the connection broke."""
        out = self.out
        if not out:
            return True
        try:
            sent = self.sock.send(out, _DONTWAIT)
        except BlockingIOError:
            return True
        except OSError as exc:
            self.failure = exc.strerror or "connection error"
            return False
        self.written += sent
        del out[:sent]
        return True

    def shutdown_write(self) -> None:
        """Pass an end of input on: the peer reads EOF, and may still answer."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
