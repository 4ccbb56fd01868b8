"""One proxied request: read the head, pick a node, connect, relay both directions, end cleanly.

The session is the I/O shell around the sans-IO request reader. It never blocks: the worker's epoll
loop calls ``on_client`` / ``on_backend`` with the ready events, and the session keeps each socket's
event mask in step with what it can do next. Backpressure: a side is not read while the other side's
unsent bytes are above the high-water mark, so memory per session stays bounded.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import TYPE_CHECKING

from uwsgirouter.protocol import (
    NEED_DATA,
    Body,
    ConnectionClosed,
    EndOfInput,
    RemoteProtocolError,
    RequestHead,
    RequestReader,
    content_length,
)
from uwsgirouter.router.connector import BUFFERING, CLOSING, CONNECTING, DONE, HEAD, RELAY, WAITING, Connector
from uwsgirouter.router.nodes import Node
from uwsgirouter.router.postbuffer import BodyBuffer
from uwsgirouter.router.responses import error_response
from uwsgirouter.text import printable

if TYPE_CHECKING:
    from uwsgirouter.router.worker import RouterWorker

log = logging.getLogger("uwsgirouter.router")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
_BROKEN = select.EPOLLERR | select.EPOLLHUP
_READABLE = EPOLLIN | _BROKEN
#: The client socket stays blocking at the OS level (no ioctl after accept); every call on it says
#: MSG_DONTWAIT instead, so it never blocks the loop.
_DONTWAIT = socket.MSG_DONTWAIT


#: Reads from a node per wakeup while the client keeps up (bounded, so one session cannot starve others).
READS_PER_WAKEUP = 4
#: Bytes of a spilled (post-buffered) body read from its file per send.
FILE_CHUNK = 1 << 16


class Session(Connector):
    """State of one client connection and, once chosen, its backend connection."""

    __slots__ = ()

    def __init__(self, worker: RouterWorker, client: socket.socket) -> None:
        self.worker = worker
        self.client = client
        self.cfd = client.fileno()
        self.cmask = EPOLLIN
        self.backend: socket.socket | None = None
        self.bfd = -1
        self.bmask = 0
        self.reader: RequestReader | None = RequestReader()
        self.state = HEAD
        self.head: RequestHead | None = None
        self.key = b""
        self.node: Node | None = None
        self.tried: list[Node] = []
        self.to_backend = bytearray()
        self.to_client = bytearray()
        self.client_eof = False
        self.backend_eof = False
        self.replied = False  # bytes were sent to the client (no error page possible any more)
        self.body: BodyBuffer | None = None  # a post-buffered body, until it is all sent
        self.after_body = bytearray()  # client bytes that arrived after a post-buffered body
        self.last_active = worker.now
        self.started = worker.now  # for the stats' request times
        self.sent = 0  # bytes sent to the client (the stats' tx)
        self.resent = False  # the request went to a second node after the first broke without answering
        self.broken = None  # that first node, tried again only when no other is left

    # -- events ---------------------------------------------------------------------------------

    def on_client(self, events: int) -> None:
        if self.state != HEAD:
            # A head must arrive whole within --fastrouter-timeout of the accept: bytes trickling in
            # do not extend it (a client sending one byte a second would otherwise hold its place forever).
            self.last_active = self.worker.now
        if events & EPOLLOUT:
            self._flush_client()
        if self.state == DONE:
            return
        if events & _READABLE:
            if not self.client_eof and self.state != CLOSING:
                self._read_client()
            elif events & _BROKEN:
                # Level-triggered ERR/HUP keep firing: a client that is gone for good ends the session.
                self._abort("client connection lost")
                return
        if self.state != DONE:
            self._update_masks()

    def on_backend(self, events: int) -> None:
        self.last_active = self.worker.now
        if self.state == CONNECTING:
            self._connect_finished()
        else:
            if events & EPOLLOUT:
                self._flush_backend()
            if events & _READABLE and self.state == RELAY and not self.backend_eof:
                self._read_backend()
        if self.state != DONE:
            self._update_masks()

    # -- client side ----------------------------------------------------------------------------

    def _read_client(self) -> None:
        try:
            data = self.client.recv(self.worker.read_size, _DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            self._abort(f"client error: {exc.strerror}")
            return
        if self.state == HEAD:
            self._feed_head(data)
            return
        if self.state == BUFFERING:
            if not data:
                self.client_eof = True
                self._abort("the client went away during its upload")
                return
            self._feed_body(data)
            return
        if not data:
            self.client_eof = True
            if self.state == RELAY and not self._backend_pending():
                self._shutdown_backend()
            return
        if self.body is not None:
            self.after_body += data
        elif self.state == RELAY and not self.to_backend:
            self._send_backend(data)
        else:
            self.to_backend += data

    def _backend_pending(self) -> bool:
        return bool(self.to_backend) or self.body is not None

    def _start_buffering(self, head: RequestHead) -> bool:
        """Post-buffering: hold the body before choosing a node; True if the body is incomplete."""
        length = content_length(head.vars)
        if length <= 0:
            return False
        worker = self.worker
        self.body = BodyBuffer(length, worker.post_buffering, worker.post_buffering_dir)
        early, self.to_backend = bytes(self.to_backend), bytearray()
        self._feed_body(early)
        return self.state == BUFFERING

    def _feed_body(self, data: bytes) -> None:
        body = self.body
        assert body is not None
        try:
            extra = body.feed(data)
        except OSError as exc:
            self.worker.notes.error("key %s: cannot buffer the request body: %s", printable(self.key), exc)
            self._reply_error(503, "the router cannot buffer the request body")
            return
        if not body.complete:
            self.state = BUFFERING
            return
        if body.spilled:
            self.after_body += extra
        else:
            self.to_backend = body.memory + extra
            body.close()
            self.body = None
        if self.state == BUFFERING:
            self.state = HEAD
            self._route()

    def _feed_head(self, data: bytes) -> None:
        reader = self.reader
        assert reader is not None
        try:
            reader.receive_data(data)
            event = reader.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, ConnectionClosed):
                self._finish()
                return
            assert isinstance(event, RequestHead)
            self.head = event
            rest = reader.next_event()
        except RemoteProtocolError as exc:
            self.worker.notes.warning("invalid request from client: %s", exc)
            self._reply_error(exc.error_status_hint, "invalid uwsgi request")
            return
        if isinstance(rest, Body):
            self.to_backend += rest.data
            rest = reader.next_event()
        if isinstance(rest, EndOfInput):
            self.client_eof = True
        self.reader = None
        if self.worker.post_buffering:
            try:
                if self._start_buffering(event):
                    return
            except RemoteProtocolError as exc:
                self._reply_error(exc.error_status_hint, "invalid CONTENT_LENGTH")
                return
            if self.state == DONE or self.state == CLOSING:
                return
        self._route()

    def _send_client(self, data: bytes) -> None:
        try:
            sent = self.client.send(data, _DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._abort(f"client error: {exc.strerror}")
            return
        self.replied = True
        self.sent += sent
        if sent < len(data):
            self.to_client += memoryview(data)[sent:]

    def _flush_client(self) -> None:
        if self.to_client:
            try:
                sent = self.client.send(self.to_client, _DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                self._abort(f"client error: {exc.strerror}")
                return
            del self.to_client[:sent]
            self.sent += sent
        if not self.to_client and (self.backend_eof or self.state == CLOSING):
            self._finish()

    # -- backend side ---------------------------------------------------------------------------

    def _send_backend(self, data: bytes) -> None:
        assert self.backend is not None and self.node is not None
        try:
            sent = self.backend.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._backend_failed(f"send failed: {exc.strerror}")
            return
        self.node.stats.bytes_to_node += sent
        if sent < len(data):
            self.to_backend += memoryview(data)[sent:]

    def _flush_backend(self) -> None:
        assert self.backend is not None and self.node is not None
        while True:
            if not self.to_backend and self.body is not None:
                self._refill_from_body()
            if not self.to_backend:
                break
            try:
                sent = self.backend.send(self.to_backend)
            except BlockingIOError:
                return
            except OSError as exc:
                self._backend_failed(f"send failed: {exc.strerror}")
                return
            self.node.stats.bytes_to_node += sent
            del self.to_backend[:sent]
            if self.to_backend or self.body is None:
                break
        if not self._backend_pending() and self.client_eof:
            self._shutdown_backend()

    def _refill_from_body(self) -> None:
        """Next chunk of a spilled body; once it is all sent, what the client sent after it."""
        body = self.body
        assert body is not None
        chunk = body.next_chunk(FILE_CHUNK)
        if chunk:
            self.to_backend += chunk
            return
        body.close()
        self.body = None
        self.to_backend += self.after_body
        self.after_body = bytearray()

    def _read_backend(self) -> None:
        """Relay what the node sent; read again at once while the client keeps up, so that the end of a
        short answer (data, then EOF) is usually handled in one wakeup instead of two."""
        assert self.backend is not None and self.node is not None
        stats = self.node.stats
        for _ in range(READS_PER_WAKEUP):
            try:
                data = self.backend.recv(self.worker.read_size)
            except BlockingIOError:
                return
            except OSError as exc:
                self._backend_failed(f"receive failed: {exc.strerror}")
                return
            if not data:
                if not self.replied:
                    self._backend_failed("closed the connection without answering")
                    return
                # The response is complete; the backend socket is no longer needed (and would keep
                # reporting HUP). What is still queued for the client is flushed, then the session ends.
                self.backend_eof = True
                self._drop_backend()
                if not self.to_client:
                    self._finish()
                return
            stats.bytes_from_node += len(data)
            if self.to_client:
                self.to_client += data
                return
            self._send_client(data)
            if self.to_client or self.state == DONE:
                return

    def _shutdown_backend(self) -> None:
        """The client half-closed after its request: pass the EOF on, keep waiting for the answer.

        (docs/differences.md, "Client that half-closes")
        """
        assert self.backend is not None
        try:
            self.backend.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _backend_failed(self, reason: str) -> None:
        """The node reset or closed the connection after it was sent the request.

        That says something about this request (a header too large for the node's buffer, an app that
        crashed on it), not about the node's health: the node is not marked dead, so one bad request
        cannot take every node out. A node that is really gone refuses the next connect and is marked
        then. The request is sent once more, to another node (the same one only when no other is left), if it
        can be sent again unchanged (an idempotent method without a body, nothing answered yet): a node
        killed mid-request costs no request, and a request that breaks nodes reaches two at most.
        """
        node = self.node
        name = node.name if node else "?"
        worker = self.worker
        if not self.replied and node is not None and not self.resent and self._can_resend():
            self.resent = True
            worker.notes.warning(
                "key %s: node %s %s; sending the request to the next node", printable(self.key), name, reason
            )
            self._drop_backend()
            worker.mapper.done(node)
            # Another node first; this one again only if there is no other (see Connector._choose).
            self.broken = node
            self._connect_next()
            return
        worker.notes.warning("key %s: node %s %s", printable(self.key), name, reason)
        if self.replied:
            self._abort("")
        else:
            self._reply_error(502, f"the node for key {printable(self.key)} failed")

    def _can_resend(self) -> bool:
        head = self.head
        if head is None or self.body is not None or self.after_body or self.to_backend:
            return False
        if head.get(b"REQUEST_METHOD") not in (b"GET", b"HEAD", b"OPTIONS"):
            return False
        return not head.get(b"CONTENT_LENGTH") or head.get(b"CONTENT_LENGTH") == b"0"

    # -- ending ---------------------------------------------------------------------------------

    def timed_out(self) -> None:
        """No activity for --fastrouter-timeout seconds (the worker's sweep calls this)."""
        if self.state == WAITING:
            self._reply_error(503, "the router is out of resources")
        elif self.state == HEAD:
            self._abort("")
        elif self.replied:
            self.worker.notes.warning(
                "key %s: node %s timed out mid-response", printable(self.key), self.node and self.node.name
            )
            self._abort("")
        else:
            node = self.node
            if self.state == CONNECTING and node is not None:
                self._drop_backend()
                self._connect_failed(node, 0)
                self._connect_next()
                return
            self.worker.notes.warning(
                "key %s: node %s timed out; answered 504", printable(self.key), node and node.name
            )
            self._reply_error(504, f"the node for key {printable(self.key)} did not answer in time")

    def _reply_error(self, status: int, detail: str) -> None:
        if self.replied:
            self._abort("")
            return
        self._drop_backend()
        protocol = self.head.get(b"SERVER_PROTOCOL") if self.head is not None else None
        self.to_client = bytearray(error_response(status, detail, protocol))
        self.replied = True
        self.state = CLOSING
        self._flush_client()
        if self.state != DONE:
            self._update_masks()

    def _abort(self, reason: str) -> None:
        if reason:
            self.worker.notes.info("key %s: session closed: %s", printable(self.key), reason)
        self._finish()

    def _drop_backend(self) -> None:
        if self.backend is not None:
            self.worker.remove_backend_fd(self.bfd)
            self.backend.close()
            self.backend = None
            self.bfd = -1
            self.bmask = 0

    def _finish(self) -> None:
        if self.state == DONE:
            return
        if self.body is not None:
            self.body.close()
            self.body = None
        self._drop_backend()
        self.state = DONE
        self.worker.remove_fd(self.cfd)
        self.client.close()
        self.worker.session_ended(self)

    def _update_masks(self) -> None:
        high_water = self.worker.high_water
        cmask = 0
        if (
            not self.client_eof
            and self.state != CLOSING
            and len(self.to_backend) < high_water
            and len(self.after_body) < high_water
        ):
            cmask = EPOLLIN
        if self.to_client:
            cmask |= EPOLLOUT
        if cmask != self.cmask:
            self.cmask = cmask
            self.worker.modify(self.cfd, cmask)
        if self.backend is None:
            return
        if self.state == CONNECTING:
            bmask = EPOLLOUT
        else:
            bmask = EPOLLIN if not self.backend_eof and len(self.to_client) < high_water else 0
            if self.to_backend or self.body is not None:
                bmask |= EPOLLOUT
        if bmask != self.bmask:
            self.bmask = bmask
            self.worker.modify(self.bfd, bmask)
