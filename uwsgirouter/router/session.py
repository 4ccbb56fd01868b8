"""One proxied request: read the head, pick a node, connect, relay both directions, end cleanly.

The session is the I/O shell around the sans-IO request reader. It never blocks: the worker's epoll
loop calls ``on_client`` / ``on_backend`` with the ready events, and the session keeps each socket's
event mask in step with what it can do next. Backpressure: a side is not read while the other side's
unsent bytes are above the high-water mark, so memory per session stays bounded.
"""

from __future__ import annotations

import errno
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
    routing_key,
)
from uwsgirouter.router.mappers import UnsafeKey
from uwsgirouter.router.nodes import Node
from uwsgirouter.router.responses import error_response, printable

if TYPE_CHECKING:
    from uwsgirouter.router.worker import RouterWorker

log = logging.getLogger("uwsgirouter.router")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
_BROKEN = select.EPOLLERR | select.EPOLLHUP
_READABLE = EPOLLIN | _BROKEN
_SOCK_FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_SOL_SOCKET = socket.SOL_SOCKET
_SO_ERROR = socket.SO_ERROR
_EINPROGRESS = errno.EINPROGRESS
#: The client socket stays blocking at the OS level (no ioctl after accept); every call on it says
#: MSG_DONTWAIT instead, so it never blocks the loop.
_DONTWAIT = socket.MSG_DONTWAIT

HEAD, CONNECTING, RELAY, CLOSING, DONE = range(5)


class Session:
    """State of one client connection and, once chosen, its backend connection."""

    __slots__ = (
        "backend",
        "backend_eof",
        "bfd",
        "bmask",
        "cfd",
        "client",
        "client_eof",
        "cmask",
        "head",
        "key",
        "last_active",
        "node",
        "reader",
        "replied",
        "state",
        "to_backend",
        "to_client",
        "tried",
        "worker",
    )

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
        self.last_active = worker.now

    # -- events ---------------------------------------------------------------------------------

    def on_client(self, events: int) -> None:
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
        if not data:
            self.client_eof = True
            if not self.to_backend and self.state == RELAY:
                self._shutdown_backend()
            return
        if self.state == RELAY and not self.to_backend:
            self._send_backend(data)
        else:
            self.to_backend += data

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
            log.warning("invalid request from client: %s", exc)
            self._reply_error(exc.error_status_hint, "invalid uwsgi request")
            return
        if isinstance(rest, Body):
            self.to_backend += rest.data
            rest = reader.next_event()
        if isinstance(rest, EndOfInput):
            self.client_eof = True
        self.reader = None
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
        if not self.to_client and (self.backend_eof or self.state == CLOSING):
            self._finish()

    # -- routing and connecting -----------------------------------------------------------------

    def _route(self) -> None:
        worker = self.worker
        assert self.head is not None
        self.key = worker.force_key or routing_key(self.head.vars)
        if worker.shutting_down:
            self._reply_error(503, "the router is shutting down")
            return
        if not self.key:
            log.warning("request without a key (UWSGI_FASTROUTER_KEY, HTTP_HOST or SERVER_NAME): answered 502")
            self._reply_error(502, "the request names no host")
            return
        self._connect_next()

    def _choose(self) -> Node | None:
        worker = self.worker
        attempts = len(self.tried)
        fallbacks = worker.fallbacks
        if attempts and (attempts > worker.max_retries):
            return None
        if attempts and fallbacks:
            for node in fallbacks:
                if node not in self.tried:
                    return node
            return None
        picked = worker.mapper.pick(self.key, self.tried, worker.now)
        if picked is None and not attempts and worker.fallback_on_no_key and fallbacks:
            return fallbacks[0]
        return picked

    def _connect_next(self) -> None:
        while True:
            try:
                node = self._choose()
            except UnsafeKey as exc:
                log.warning("key %s refused: %s; answered 502", printable(self.key), exc)
                self._reply_error(502, f"no node for key {printable(self.key)}")
                return
            if node is None:
                if self.tried:
                    self._reply_error(502, f"no node could be reached for key {printable(self.key)}")
                else:
                    log.warning("key %s: no node; answered 502", printable(self.key))
                    self._reply_error(502, f"no node for key {printable(self.key)}")
                return
            self.tried.append(node)
            self.node = node
            try:
                sock = socket.socket(node.family, _SOCK_FLAGS)
            except OSError as exc:
                log.error("key %s: cannot create a socket for node %s: %s", printable(self.key), node.name, exc)
                self._reply_error(503, "the router is out of resources")
                return
            try:
                err = sock.connect_ex(node.sockaddr)
            except OSError as exc:  # an address the kernel refuses outright
                err = exc.errno or errno.EINVAL
            if err == 0 or err == _EINPROGRESS:
                # Send the head at once: on loopback and UNIX sockets the connection is already up,
                # which saves a poll round and two epoll_ctl calls per request. A remote node still
                # handshaking answers EAGAIN, and then we wait for writability as usual.
                out = self._backend_head(node)
                try:
                    sent = sock.send(out)
                except BlockingIOError:
                    self._attach_backend(sock, EPOLLOUT)
                    self.state = CONNECTING
                    return
                except OSError as exc:
                    err = exc.errno or errno.ECONNREFUSED
                else:
                    self._attach_backend(sock, EPOLLIN)
                    self._established(out, sent)
                    return
            sock.close()
            self._connect_failed(node, err)

    def _attach_backend(self, sock: socket.socket, mask: int) -> None:
        self.backend = sock
        self.bfd = sock.fileno()
        self.bmask = mask
        self.worker.add_backend(self, mask)

    def _backend_head(self, node: Node) -> bytes:
        """The client's header and vars with the node's modifiers (reference 3.4), then any early body."""
        head = self.head
        assert head is not None
        out = bytearray(head.raw)
        out[0] = node.modifier1
        out[3] = node.modifier2
        if self.to_backend:
            out += self.to_backend
        return bytes(out)

    def _connect_finished(self) -> None:
        """The node became writable while connecting: the handshake ended, well or badly."""
        assert self.backend is not None and self.node is not None
        err = self.backend.getsockopt(_SOL_SOCKET, _SO_ERROR)
        if err == 0:
            out = self._backend_head(self.node)
            try:
                sent = self.backend.send(out)
            except OSError as exc:
                err = exc.errno or errno.ECONNREFUSED
            else:
                self._established(out, sent)
                return
        self._drop_backend()
        self._connect_failed(self.node, err)
        self._connect_next()

    def _connect_failed(self, node: Node, err: int) -> None:
        node.stats.failures += 1
        self.worker.mapper.failed(node, self.worker.now)
        if not self.worker.quiet:
            log.warning(
                "key %s: unable to connect to node %s (%d retries): %s",
                printable(self.key),
                node.name,
                len(self.tried) - 1,
                errno.errorcode.get(err, str(err)) if err else "timeout",
            )

    def _established(self, out: bytes, sent: int) -> None:
        """The head (and early body) went out, ``sent`` bytes of ``out`` at least: relay from now on."""
        node = self.node
        assert node is not None
        node.stats.hits += 1
        node.stats.bytes_to_node += sent
        self.state = RELAY
        self.to_backend = bytearray(memoryview(out)[sent:]) if sent < len(out) else bytearray()
        if self.client_eof and not self.to_backend:
            self._shutdown_backend()

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
        if not self.to_backend:
            return
        try:
            sent = self.backend.send(self.to_backend)
        except BlockingIOError:
            return
        except OSError as exc:
            self._backend_failed(f"send failed: {exc.strerror}")
            return
        self.node.stats.bytes_to_node += sent
        del self.to_backend[:sent]
        if not self.to_backend and self.client_eof:
            self._shutdown_backend()

    def _read_backend(self) -> None:
        assert self.backend is not None and self.node is not None
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
        self.node.stats.bytes_from_node += len(data)
        if self.to_client:
            self.to_client += data
        else:
            self._send_client(data)

    def _shutdown_backend(self) -> None:
        """The client half-closed after its request: pass the EOF on, keep waiting for the answer (D7)."""
        assert self.backend is not None
        try:
            self.backend.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _backend_failed(self, reason: str) -> None:
        node = self.node
        name = node.name if node else "?"
        log.warning("key %s: node %s %s", printable(self.key), name, reason)
        if self.replied:
            self._abort("")
        else:
            self._reply_error(502, f"the node for key {printable(self.key)} failed")

    # -- ending ---------------------------------------------------------------------------------

    def timed_out(self) -> None:
        """No activity for --fastrouter-timeout seconds (the worker's sweep calls this)."""
        if self.state == HEAD:
            self._abort("")
        elif self.replied:
            log.warning("key %s: node %s timed out mid-response", printable(self.key), self.node and self.node.name)
            self._abort("")
        else:
            node = self.node
            if self.state == CONNECTING and node is not None:
                self._drop_backend()
                self._connect_failed(node, 0)
                self._connect_next()
                return
            log.warning("key %s: node %s timed out; answered 504", printable(self.key), node and node.name)
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
            log.info("key %s: session closed: %s", printable(self.key), reason)
        self._finish()

    def _drop_backend(self) -> None:
        if self.backend is not None:
            self.worker.remove_fd(self.bfd)
            self.backend.close()
            self.backend = None
            self.bfd = -1
            self.bmask = 0

    def _finish(self) -> None:
        if self.state == DONE:
            return
        self._drop_backend()
        self.state = DONE
        self.worker.remove_fd(self.cfd)
        self.client.close()
        self.worker.session_ended(self)

    def _update_masks(self) -> None:
        high_water = self.worker.high_water
        cmask = 0
        if not self.client_eof and self.state != CLOSING and len(self.to_backend) < high_water:
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
            if self.to_backend:
                bmask |= EPOLLOUT
        if bmask != self.bmask:
            self.bmask = bmask
            self.worker.modify(self.bfd, bmask)
