"""The WSGI environ of one request: the vars as native strings, the body stream, the file wrapper.

Kept apart from the worker loop: these are pure objects over a receive function and bytes, tested
without sockets. What uWSGI 2.0.31 puts in environ is kept (``uwsgi.version``, ``uwsgi.node``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

from uwsgirouter import uwsgi_module
from uwsgirouter.protocol import RequestHead

READ_CHUNK = 65536
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


class ClientDisconnected(OSError):
    """The client closed, reset or stalled; logged as one line, never with a traceback."""


class InputStream:
    """``wsgi.input``: the body, bounded by CONTENT_LENGTH, read from the socket only as asked.

    Bytes that arrived with the head are served first; nothing past CONTENT_LENGTH is ever read.
    ``read(n)`` returns n bytes unless the body ends first. A client that closes or stalls before
    the declared end raises ``ClientDisconnected`` (an ``OSError``, as uWSGI raises).
    """

    __slots__ = ("_buf", "_length", "_pending", "_recv")

    def __init__(self, recv: Callable[[int], bytes], initial: bytes, length: int) -> None:
        self._recv = recv
        self._length = length
        self._buf = bytearray(initial[:length])
        self._pending = length - len(self._buf)

    @property
    def unread(self) -> int:
        """Body bytes not yet received from the client."""
        return self._pending

    def _fill(self, want: int) -> None:
        size = min(max(want, 1), self._pending, READ_CHUNK)
        got = self._length - self._pending
        try:
            data = self._recv(size)
        except TimeoutError:
            raise ClientDisconnected(f"timeout reading the request body ({got} of {self._length} bytes)") from None
        except OSError as exc:
            raise ClientDisconnected(f"error reading the request body: {exc.strerror or exc}") from None
        if not data:
            raise ClientDisconnected(f"client closed the connection after {got} of {self._length} body bytes")
        self._pending -= len(data)
        self._buf += data

    def _take(self, size: int) -> bytes:
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        available = len(self._buf) + self._pending
        target = available if size is None or size < 0 else min(size, available)
        while len(self._buf) < target:
            self._fill(target - len(self._buf))
        return self._take(target)

    def readline(self, size: int | None = -1) -> bytes:
        available = len(self._buf) + self._pending
        limit = available if size is None or size < 0 else min(size, available)
        scanned = 0
        while True:
            end = self._buf.find(b"\n", scanned, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buf) >= limit:
                return self._take(limit)
            scanned = len(self._buf)
            self._fill(limit - scanned)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release; the worker owns the connection."""


class FileWrapper:
    """``wsgi.file_wrapper``: iterates ``blksize`` blocks; the worker sends real files with sendfile."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data: bytes = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def _url_scheme(environ: dict[str, Any]) -> str:
    """uWSGI's rule (UWSGI_SCHEME, then HTTPS on/1), then REQUEST_SCHEME (nginx sends it; uWSGI ignores it)."""
    scheme: str = environ.get("UWSGI_SCHEME", "")
    if scheme:
        return scheme
    https: str = environ.get("HTTPS", "")
    if https[:2].lower() == "on" or https[:1] == "1":
        return "https"
    request_scheme: str = environ.get("REQUEST_SCHEME", "").lower()
    return request_scheme if request_scheme in ("http", "https") else "http"


def build_environ(head: RequestHead, stream: InputStream, node: bytes) -> dict[str, Any]:
    """The PEP 3333 environ: every var as a latin-1 str (last duplicate wins) plus the wsgi/uwsgi keys."""
    environ: dict[str, Any] = {key.decode("latin-1"): value.decode("latin-1") for key, value in head.vars}
    if head.modifier1 == 30:
        script_name = environ.get("SCRIPT_NAME", "")
        path_info = environ.get("PATH_INFO", "")
        if script_name and path_info.startswith(script_name):
            environ["PATH_INFO"] = path_info[len(script_name) :]
    # uWSGI leaves SCRIPT_NAME out when the proxy does; PEP 3333 wants it ('' is fine) and
    # wsgiref.validate fails without it.
    environ.setdefault("SCRIPT_NAME", "")
    environ["wsgi.input"] = stream
    environ["wsgi.errors"] = sys.stderr
    environ["wsgi.version"] = (1, 0)
    environ["wsgi.url_scheme"] = _url_scheme(environ)
    environ["wsgi.multithread"] = False
    environ["wsgi.multiprocess"] = True
    environ["wsgi.run_once"] = False
    environ["wsgi.file_wrapper"] = FileWrapper
    environ["uwsgi.version"] = uwsgi_module.UWSGI_VERSION
    environ["uwsgi.node"] = node
    return environ


def _printable(value: bytes) -> str:
    """An untrusted var for a log line: latin-1, control characters escaped, so it stays one line."""
    return value.decode("latin-1").translate(_CONTROL)
