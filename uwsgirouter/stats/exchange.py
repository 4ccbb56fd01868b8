"""One stats client, served without ever blocking the loop that owns it (the master's or a router's).

Plain stats servers write the document as soon as the client is accepted, as uWSGI does (uwsgitop and
``nc`` send nothing). With ``--stats-http`` the request head is read first, so that ``GET /metrics`` can be
told from any other path: up to ``REQUEST_LIMIT`` bytes, for at most ``REQUEST_WAIT_S``; a client that
says nothing in that time (or sends no head we understand) gets the JSON document, which is what uWSGI
would have sent it. The reply is written as the client reads; a client that has not read it all within
``REPLY_WAIT_S`` of its accept is dropped, so a stats reader that stalls costs one descriptor for a while,
never the loop's time.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

#: Bytes of an HTTP request head read at most (the request line is all that is used).
REQUEST_LIMIT = 8192
#: How long an HTTP stats client may take to send its request head before it gets the JSON anyway.
REQUEST_WAIT_S = 1.0
#: How long a client may take, from its accept, to read the whole reply before it is dropped.
REPLY_WAIT_S = 5.0
#: Stats clients served at once by one server; more are accepted and closed at once (never left queued,
#: which would wake the loop again and again).
MAX_CLIENTS = 64

METRICS_PATH = "/metrics"
JSON_TYPE = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

READING, WRITING, DONE = "reading", "writing", "done"


def encode_json(doc: Mapping[str, Any], minified: bool) -> bytes:
    """uWSGI's document text: indented with tabs, or on one line with --stats-minified."""
    if minified:
        return json.dumps(doc, separators=(",", ":")).encode()
    return json.dumps(doc, indent="\t").encode()


def http_response(body: bytes, content_type: str) -> bytes:
    """A complete HTTP/1.0 reply; the headers of uWSGI's HTTP stats, with a Content-Length added."""
    head = (
        "HTTP/1.0 200 OK\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def request_path(head: bytes) -> str:
    """The path of an HTTP request line, without its query string; '' when there is no such line."""
    line = head.split(b"\n", 1)[0].strip()
    parts = line.split()
    if len(parts) < 2 or not parts[1].startswith(b"/"):
        return ""
    return parts[1].split(b"?", 1)[0].decode("latin-1")


class StatsExchange:
    """``answer(path)`` builds the bytes to send: ``path`` is the HTTP request's ('' for a plain server or a
    client that sent no request in time). Call ``on_readable``/``on_writable`` when the socket is ready,
    ``on_deadline`` once ``deadline`` has passed; ``state`` says what it waits for (``DONE``: close it)."""

    __slots__ = ("answer", "deadline", "received", "reply", "reply_deadline", "sock", "state")

    def __init__(self, sock: socket.socket, http: bool, answer: Callable[[str], bytes], now: float) -> None:
        self.sock = sock
        self.answer = answer
        self.received = b""
        self.reply = memoryview(b"")
        self.reply_deadline = now + REPLY_WAIT_S
        if http:
            self.state = READING
            self.deadline = now + REQUEST_WAIT_S
            self.on_readable(now)  # the head usually came with the connection
        else:
            self._start_reply("")

    def fileno(self) -> int:
        return self.sock.fileno()

    def _start_reply(self, path: str) -> None:
        self.state = WRITING
        self.deadline = self.reply_deadline
        self.reply = memoryview(self.answer(path))
        self.on_writable(time.monotonic())

    def on_readable(self, now: float) -> None:
        if self.state != READING:
            return
        try:
            data = self.sock.recv(REQUEST_LIMIT - len(self.received), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.state = DONE
            return
        self.received += data
        head = self.received
        if not data or b"\r\n\r\n" in head or b"\n\n" in head or len(head) >= REQUEST_LIMIT:
            self._start_reply(request_path(head))

    def on_writable(self, now: float) -> None:
        if self.state != WRITING:
            return
        try:
            sent = self.sock.send(self.reply, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.state = DONE
            return
        self.reply = self.reply[sent:]
        if not self.reply:
            self.state = DONE

    def on_deadline(self, now: float) -> None:
        """Silent HTTP client: it gets the JSON; reply not read in time: dropped."""
        if self.state == READING:
            self._start_reply(request_path(self.received) if b"\n" in self.received else "")
            if self.state == WRITING and now >= self.deadline:
                self.state = DONE
        elif now >= self.deadline:
            self.state = DONE

    def close(self) -> None:
        self.state = DONE
        self.sock.close()
