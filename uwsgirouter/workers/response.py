"""The raw HTTP response an app worker writes for a WSGI app (uwsgi protocol: no uwsgi header in front).

What uWSGI 2.0.31 sends is kept where clients can see it: reason phrases added to bare status codes, headers
as given, ``sendfile`` for file wrappers, a 500 when the app fails before sending anything.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import TracebackType

from uwsgirouter.workers.environ import READ_CHUNK, ClientDisconnected, FileWrapper

#: uWSGI 2.0.31's reason phrases, added to a bare status such as "200" (any other code: "Unknown").
_REASON_TEXT = (
    "100 Continue;101 Switching Protocols;200 OK;201 Created;202 Accepted;203 Non-Authoritative Information;"
    "204 No Content;205 Reset Content;206 Partial Content;300 Multiple Choices;301 Moved Permanently;"
    "302 Found;303 See Other;304 Not Modified;305 Use Proxy;307 Temporary Redirect;400 Bad Request;"
    "401 Unauthorized;402 Payment Required;403 Forbidden;404 Not Found;405 Method Not Allowed;"
    "406 Not Acceptable;407 Proxy Authentication Required;408 Request Timeout;409 Conflict;410 Gone;"
    "411 Length Required;412 Precondition Failed;413 Request Entity Too Large;414 Request-URI Too Long;"
    "415 Unsupported Media Type;416 Requested Range Not Satisfiable;417 Expectation Failed;418 I'm a teapot;"
    "422 Unprocessable Entity;425 Too Early;426 Upgrade Required;428 Precondition Required;"
    "429 Too Many Requests;431 Request Header Fields Too Large;451 Unavailable For Legal Reasons;"
    "500 Internal Server Error;501 Not Implemented;502 Bad Gateway;503 Service Unavailable;"
    "504 Gateway Timeout;505 HTTP Version Not Supported;509 Bandwidth Limit Exceeded;"
    "511 Network Authentication Required"
)
_REASONS = dict(item.split(" ", 1) for item in _REASON_TEXT.split(";"))
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class Response:
    """One response: start_response/write with PEP 3333 semantics; the head goes out with the first bytes."""

    def __init__(self, sock: socket.socket, protocol: bytes) -> None:
        self.sock = sock
        self.protocol = protocol
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.failed = False  # a send failed: the client is gone, answer nothing more
        self.head_size = 0
        self.body_size = 0
        self.switches = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        if exc_info is not None and exc_info[0] is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback cycle
        elif self.status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        if type(status) is not str or len(status) < 3 or not status[:3].isdigit() or status[3:4] not in ("", " "):
            raise ValueError(f"invalid WSGI status {status!r:.80}")
        checked: list[tuple[str, str]] = []
        for item in headers:
            name, value = item
            if type(name) is not str or type(value) is not str:
                raise TypeError(f"header names and values must be str, got {item!r:.80}")
            if not name or any(c in name for c in ":\r\n") or "\r" in value or "\n" in value:
                raise ValueError(f"invalid response header {item!r:.80}")
            checked.append((name, value))
        self.status = status
        self.headers = checked
        return self.write

    @property
    def status_code(self) -> int:
        return int(self.status[:3]) if self.status else 0

    def _head(self) -> bytes:
        assert self.status is not None
        lines = [f"{name}: {value}\r\n" for name, value in self.headers]
        status = self.status
        if len(status) <= 4:  # a bare code: uWSGI adds its reason phrase
            status = f"{status[:3]} {_REASONS.get(status[:3], 'Unknown')}"
        head = b"%s %s\r\n%s\r\n" % (self.protocol, status.encode("latin-1"), "".join(lines).encode("latin-1"))
        self.head_size = len(head)
        self.head_sent = True
        return head

    def send(self, data: bytes | memoryview) -> None:
        """Send all of ``data``; the timeout applies to each send, not to the whole (as uWSGI)."""
        view = memoryview(data)
        try:
            while view:
                view = view[self.sock.send(view) :]
        except OSError as exc:
            self.failed = True
            reason = "timeout" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise ClientDisconnected(f"client gone while sending the response ({reason})") from None
        self.switches += 1

    def write(self, data: bytes | bytearray) -> None:
        """The app's ``write()`` and the sink for each body chunk."""
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray):
                raise TypeError(f"WSGI body chunks must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if not data:
            return
        if self.status is None:
            raise RuntimeError("the app sent body data before calling start_response()")
        if self.failed:
            raise ClientDisconnected("client gone while sending the response")
        if not self.head_sent:
            head = self._head()
            if len(data) <= READ_CHUNK:
                self.send(head + data)
                self.body_size += len(data)
                return
            self.send(head)
        self.send(data)
        self.body_size += len(data)

    def sendfile(self, wrapper: FileWrapper) -> bool:
        """Send a real file with ``socket.sendfile`` from its current position; False if it is not one."""
        filelike = wrapper.filelike
        try:
            offset = filelike.tell()
            filelike.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        if "b" not in getattr(filelike, "mode", ""):
            return False  # socket.sendfile needs a file opened in binary mode
        if self.status is None:
            raise RuntimeError("the app returned a file before calling start_response()")
        if not self.head_sent:
            self.send(self._head())
        try:
            sent = self.sock.sendfile(filelike, offset)
        except OSError as exc:
            self.failed = True
            reason = "timeout" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise ClientDisconnected(f"client gone while sending a file ({reason})") from None
        self.body_size += sent
        self.switches += 1
        return True

    def internal_error(self) -> None:
        """Answer 500 in place of whatever the app meant to send (only before anything was sent)."""
        body = b"Internal Server Error"
        self.status = "500 Internal Server Error"
        self.headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        try:
            self.send(self._head() + body)
            self.body_size = len(body)
        except ClientDisconnected:
            pass

    def finish(self) -> None:
        """After the last chunk: a response without body still needs its head."""
        if self.status is None:
            raise RuntimeError("the app returned without calling start_response()")
        if not self.head_sent:
            self.send(self._head())
