"""One proxied request as a state machine: read the head, pick a node, connect, relay both ways, end cleanly.

The session owns its two peers (``peer.py``) and talks to its loop through ``loop.Loop`` only. The loop calls
``on_client`` / ``on_backend`` with the ready events; the session keeps each peer's event mask in step with what it
can do next. Backpressure: a side is not read while the other side holds ``high_water`` unsent bytes or more, so a
session's memory stays bounded.

Its states and the moves between them are in ``states.py``.
"""

from __future__ import annotations

import errno
import logging
import os
import select
from typing import Final

from uwsgirouter.protocol import (
    NEED_DATA,
    Body,
    ConnectionClosed,
    RemoteProtocolError,
    RequestHead,
    RequestReader,
    whole_head,
)
from uwsgirouter.router import sysio
from uwsgirouter.router.loop import Loop, Settings, Watcher
from uwsgirouter.router.mappers import UnsafeKey
from uwsgirouter.router.nodes import Node
from uwsgirouter.router.peer import NOTHING, PIPE_SIZE, SINK_FAILED, SOURCE_FAILED, Peer
from uwsgirouter.router.postbuffer import BodyBuffer
from uwsgirouter.router.responses import error_response
from uwsgirouter.router.routing import Routing
from uwsgirouter.router.states import (
    BUFFER,
    BUFFERING,
    CLOSE,
    CLOSE_AFTER_FLUSH,
    CLOSING,
    CONNECT_STARTED,
    CONNECTED,
    CONNECTING,
    DONE,
    HEAD,
    NO_DESCRIPTOR,
    RELAY,
    TRANSITIONS,
    WAITING,
    InvalidTransition,
    next_state,
)
from uwsgirouter.router.sysio import pack_sockaddr
from uwsgirouter.text import printable

# The system calls as Final names: compiled, each call reads a C static instead of looking the name up in the module's
# dictionary.
connect: Final = sysio.connect
send: Final = sysio.send
so_error: Final = sysio.so_error

#: the state machine's names, importable from here too (tests and the loop read states off a session)
__all__ = [
    "BUFFERING",
    "CLOSE",
    "CLOSING",
    "CONNECTING",
    "DONE",
    "HEAD",
    "RELAY",
    "TRANSITIONS",
    "WAITING",
    "InvalidTransition",
    "Session",
]

log = logging.getLogger("uwsgirouter.router")

EPOLLIN: Final = select.EPOLLIN
EPOLLOUT: Final = select.EPOLLOUT
EPOLLRDHUP: Final = select.EPOLLRDHUP
_BROKEN: Final = select.EPOLLERR | select.EPOLLHUP
_READABLE: Final = EPOLLIN | _BROKEN
_EAGAIN: Final = -errno.EAGAIN
_OUT_OF_DESCRIPTORS: Final = (-errno.EMFILE, -errno.ENFILE)
#: errors of socket(2), not of connect(2): the router cannot make a socket (answered 503, no other node tried)
_NO_SOCKET: Final = (-errno.ENOBUFS, -errno.ENOMEM, -errno.EAFNOSUPPORT, -errno.EPROTONOSUPPORT)
#: Bytes of a spilled (post-buffered) body read from its file per send.
FILE_CHUNK: Final = 1 << 16
#: Reads from a node per wake-up (bounded, so that one session cannot starve the others).
READS_PER_WAKEUP: Final = 4
#: Reads that fill the read size in a row before an upload switches to splice(2): a pipe costs four system calls
#: (pipe2, fcntl, two closes), paid back only when more than about 100 KiB is still to come. Only uploads (toward
#: the node): spliced pages let a socket's send queue take more bytes than copied ones, so a client that stops
#: reading a spliced answer would hold more kernel memory (measured: 7.1 MB against 4.8 MB copied).
SPLICE_AFTER_FULL_READS: Final = 2
_RESENDABLE = (b"GET", b"HEAD", b"OPTIONS")


def _grow(buffer: bytes | bytearray, data: bytes) -> bytearray:
    """``buffer`` with ``data`` appended. The session's rarely used buffers start as the shared ``b""`` (an idle
    session stays small) and become a bytearray on their first append."""
    if isinstance(buffer, bytearray):
        buffer += data
        return buffer
    return bytearray(buffer) + data


class Session(Watcher):
    """One client connection and, once a node is chosen, the connection to it."""

    #: the nodes tried so far, in order (set when the request is routed)
    tried: list[Node]

    __slots__ = (
        "after_body",
        "backend",
        "body",
        "broken",
        "client",
        "head",
        "key",
        "last_active",
        "loop",
        "node",
        "reader",
        "replied",
        "resends",
        "retried_broken",
        "routing",
        "settings",
        "started",
        "state",
        "tried",
        "upload",
    )

    def __init__(self, loop: Loop, routing: Routing, settings: Settings, fd: int) -> None:
        """A session for the connected client socket ``fd`` (non-blocking; the session owns it)."""
        self.loop = loop
        self.routing = routing
        self.settings = settings
        self.client = Peer(fd, EPOLLIN)
        self.backend: Peer | None = None
        self.state = HEAD
        #: gathers a head that did not come whole in the first read (made then)
        self.reader: RequestReader | None = None
        self.head: RequestHead | None = None
        self.key = b""
        self.node: Node | None = None
        #: client bytes for the node while there is no connection to it yet
        self.upload: bytes | bytearray = b""
        #: a post-buffered body, until it is all sent
        self.body: BodyBuffer | None = None
        #: client bytes that arrived after a post-buffered body
        self.after_body: bytes | bytearray = b""
        #: bytes came from the node (no error page is possible any more)
        self.replied = False
        #: how often the request was sent again after a node broke without answering
        self.resends = 0
        #: the node that broke, tried again only when no other is left
        self.broken: Node | None = None
        #: the last resend went to the node that broke (no other was left)
        self.retried_broken = False
        self.last_active = self.started = loop.now

    def _enter(self, event: int) -> None:
        self.state = next_state(self.state, event)

    def start(self) -> None:
        """Watch the client and read what it sent already (with deferred accept the head is usually here)."""
        self.loop.register(self.client.fd, self, EPOLLIN)
        self.on_client(EPOLLIN)

    # -- events -----------------------------------------------------------------------------------

    def ready(self, fd: int, events: int) -> None:
        if fd == self.client.fd:
            self.on_client(events)
        else:
            self.on_backend(events)

    def on_client(self, events: int) -> None:
        if self.state != HEAD:
            # A head must arrive whole within --fastrouter-timeout of the accept: bytes trickling in do not
            # extend it (a client sending one byte a second would otherwise hold its place forever).
            self.last_active = self.loop.now
        client = self.client
        if events & EPOLLOUT:
            if not client.flush():
                self._abort(f"client error: {client.failure}")
                return
            if self.state == CLOSING and not client.pending():
                self._finish()
                return
        if events & _READABLE:
            if not client.eof and self.state != CLOSING:
                self._read_client()
            elif events & _BROKEN:
                # Level-triggered ERR/HUP keep firing: a client that is gone for good ends the session.
                self._abort("client connection lost")
                return
        if self.state != DONE:
            self._update_masks()

    def on_backend(self, events: int) -> None:
        self.last_active = self.loop.now
        if self.state == CONNECTING:
            self._connect_finished()
        else:
            if events & EPOLLOUT:
                self._flush_backend()
            if events & _READABLE and self.state == RELAY:
                self._read_backend(events)
        if self.state != DONE:
            self._update_masks()

    # -- relaying (both directions) ---------------------------------------------------------------

    def _pump(self, source: Peer, sink: Peer) -> int:
        """Read once from ``source`` and pass it to ``sink``: bytes moved, 0 at the source's end of input, or
        NOTHING / SOURCE_FAILED / SINK_FAILED. A long transfer goes on with splice(2) (peer.py)."""
        if sink.pipe_w >= 0:
            return sink.splice_in(source)
        size = self.settings.read_size
        data = source.read(size)
        if data is None:
            return SOURCE_FAILED if source.failure else NOTHING
        if not data:
            source.eof = True
            return 0
        if not sink.write(data):
            return SINK_FAILED
        moved = len(data)
        if moved == size:
            source.full_reads += 1
            if source.full_reads == SPLICE_AFTER_FULL_READS and sink is self.backend and self._may_splice():
                sink.start_splicing()
        else:
            source.full_reads = 0
        return moved

    def _may_splice(self) -> bool:
        settings = self.settings
        return settings.splice and settings.high_water <= PIPE_SIZE

    def _read_client(self) -> None:
        state = self.state
        backend = self.backend
        if state == RELAY and backend is not None and self.body is None:
            moved = self._pump(self.client, backend)
            if moved == 0:
                if not backend.pending():
                    backend.shutdown_write()
            elif moved == SOURCE_FAILED:
                self._abort(f"client error: {self.client.failure}")
            elif moved == SINK_FAILED:
                self._backend_failed(f"send failed: {backend.failure}")
            return
        data = self.client.read(self.settings.read_size)
        if data is None:
            if self.client.failure:
                self._abort(f"client error: {self.client.failure}")
            return
        if state == HEAD:
            self._feed_head(data)
        elif not data:
            self.client.eof = True
            if state == BUFFERING:
                self._abort("the client went away during its upload")
        elif state == BUFFERING:
            self._feed_body(data)
        elif self.body is not None:
            self.after_body = _grow(self.after_body, data)
        else:
            self.upload = _grow(self.upload, data)

    def _read_backend(self, events: int) -> None:
        """Relay what the node sent. A short read means the socket is drained; if the node also closed (EPOLLRDHUP)
        the answer is complete then, so that a short answer ends in one wake-up and one read."""
        backend = self.backend
        assert backend is not None
        client = self.client
        size = self.settings.read_size
        for _ in range(READS_PER_WAKEUP):
            moved = self._pump(backend, client)
            if moved > 0:
                self.replied = True
                if moved == size and not client.pending():
                    continue  # a full read the client took: more may be there
                if moved == size or not events & EPOLLRDHUP:
                    return  # the client lags, or the socket is drained and the node may send more
                # The node closed after what it sent (RDHUP) and a short read drained it: that was the end,
                # without the read that would return it.
            elif moved == SOURCE_FAILED:
                self._backend_failed(f"receive failed: {backend.failure}")
                return
            elif moved == SINK_FAILED:
                self._abort(f"client error: {client.failure}")
                return
            elif moved == NOTHING:
                return
            elif not self.replied:
                self._backend_failed("closed the connection without answering")
                return
            # The answer is complete; the node's socket is no longer needed (and would keep reporting HUP).
            # What is queued for the client is flushed, then the session ends.
            self._drop_backend()
            if client.pending():
                self._enter(CLOSE_AFTER_FLUSH)
            else:
                self._finish()
            return

    def _flush_backend(self) -> None:
        backend = self.backend
        assert backend is not None
        while True:
            if not backend.out and self.body is not None:
                self._refill_from_body(backend)
            if not backend.pending():
                break
            if not backend.flush():
                self._backend_failed(f"send failed: {backend.failure}")
                return
            if backend.pending() or self.body is None:
                break
        if self.client.eof and not backend.pending() and self.body is None:
            backend.shutdown_write()

    def _refill_from_body(self, backend: Peer) -> None:
        """Next chunk of a spilled body; once it is all sent, what the client sent after it."""
        body = self.body
        assert body is not None
        chunk = body.next_chunk(FILE_CHUNK)
        if chunk:
            backend.out += chunk
            return
        body.close()
        self.body = None
        backend.out += self.after_body
        self.after_body = b""

    # -- the head and the body --------------------------------------------------------------------

    def _feed_head(self, data: bytes) -> None:
        reader = self.reader
        try:
            head = whole_head(data) if reader is None else None
            if head is not None:  # the usual case: the first read holds the whole head
                rest = data[len(head.raw) :]
            else:
                if reader is None:
                    reader = self.reader = RequestReader()
                reader.receive_data(data)
                event = reader.next_event()
                if event is NEED_DATA:
                    return
                if isinstance(event, ConnectionClosed):
                    self._finish()
                    return
                assert isinstance(event, RequestHead)
                head = event
                more = reader.next_event()
                # (the reader hears of the client's end of input only from a later read, never with the head's bytes)
                rest = more.data if isinstance(more, Body) else b""
                self.reader = None
        except RemoteProtocolError as exc:
            self.routing.notes.warning("invalid request from client: %s", exc)
            self._reply_error(exc.error_status_hint, "invalid uwsgi request")
            return
        if rest:
            self.upload = rest  # nothing was held before the head
        self._head_read(head)

    def _head_read(self, head: RequestHead) -> None:
        """The head is in (and the body bytes that came with it are in ``upload``): buffer the body, or route."""
        self.head = head
        if self.settings.post_buffering:
            try:
                length = head.content_length()
            except RemoteProtocolError as exc:
                self._reply_error(exc.error_status_hint, "invalid CONTENT_LENGTH")
                return
            if length > 0:
                self.body = BodyBuffer(length, self.settings.post_buffering, self.settings.post_buffering_dir)
                early, self.upload = bytes(self.upload), b""
                self._enter(BUFFER)
                self._feed_body(early)
                return
        self._route()

    def _feed_body(self, data: bytes) -> None:
        """Post-buffering: hold the body; route once it is complete."""
        body = self.body
        assert body is not None
        try:
            extra = body.feed(data)
        except OSError as exc:
            self.routing.notes.error("key %s: cannot buffer the request body: %s", printable(self.key), exc)
            self._reply_error(503, "the router cannot buffer the request body")
            return
        if not body.complete:
            return
        if body.spilled:
            self.after_body = _grow(self.after_body, extra)
        else:
            self.upload = body.memory + extra
            body.close()
            self.body = None
        self._route()

    # -- choosing and connecting ------------------------------------------------------------------

    def _route(self) -> None:
        head = self.head
        assert head is not None
        self.last_active = self.loop.now  # from now on the timeout counts silence, not the head's deadline
        self.key = self.settings.force_key or head.routing_key()
        self.tried = []
        if self.loop.shutting_down:
            self._reply_error(503, "the router is shutting down")
        elif not self.key:
            self.routing.notes.warning(
                "request without a key (UWSGI_FASTROUTER_KEY, HTTP_HOST or SERVER_NAME): answered 502"
            )
            self._reply_error(502, "the request names no host")
        else:
            self._connect_next()

    def _connect_next(self) -> None:
        """Connect to the next node that can be had (see routing.py for the order), or answer 502."""
        routing = self.routing
        tried = self.tried
        while True:
            try:
                node = routing.choose(self.key, tried, self.broken, self.loop.now)
            except UnsafeKey as exc:
                routing.notes.warning("key %s refused: %s; answered 502", printable(self.key), exc)
                self._reply_error(502, f"no node for key {printable(self.key)}")
                return
            if node is None:
                if tried:
                    self._reply_error(502, f"no node could be reached for key {printable(self.key)}")
                else:
                    routing.notes.warning("key %s: no node; answered 502", printable(self.key))
                    self._reply_error(502, f"no node for key {printable(self.key)}")
                return
            if node is self.broken:
                # No other node: the one that broke is tried again. Gone for good, it refuses the connect and is
                # marked dead (then cheap mode may hand the request to the local app); alive, it may answer now.
                self.broken = None
                self.retried_broken = True
                tried.remove(node)
            tried.append(node)
            if routing.is_self(node):
                routing.notes.warning("key %s: node %s is this router itself; skipped", printable(self.key), node.name)
                routing.mapper.failed(node, self.loop.now)
                continue
            if self._connect(node):
                return

    def _connect(self, node: Node) -> bool:
        """Start connecting to ``node``: True once that is under way (or the session waits or answered)."""
        sockaddr = node.packed
        if not sockaddr:
            sockaddr = node.packed = pack_sockaddr(node.family, node.sockaddr)
        fd = connect(node.family, sockaddr)
        if fd < 0:
            if fd in _OUT_OF_DESCRIPTORS:
                # Out of descriptors: wait for one (sessions end all the time) instead of failing.
                self.tried.pop()
                self.routing.mapper.done(node)
                self._enter(NO_DESCRIPTOR)
                self.loop.wait_for_descriptor(self.resume_connect)
                return True
            if fd in _NO_SOCKET:
                self.routing.notes.error(
                    "key %s: cannot create a socket for node %s: %s", printable(self.key), node.name, os.strerror(-fd)
                )
                self._reply_error(503, "the router is out of resources")
                return True
            self._connect_failed(node, -fd)
            return False
        self.node = node
        # Send the head at once: on loopback and UNIX sockets the connection is already up, which saves a poll
        # round and two epoll_ctl calls per request. A node still handshaking answers EAGAIN, and then the session
        # waits for writability as usual.
        out = self._head_for(node)
        sent = send(fd, out)
        if sent >= 0:
            self._attach_backend(fd, EPOLLIN | EPOLLRDHUP)
            self._established(out, sent)
            return True
        if sent == _EAGAIN:
            self._attach_backend(fd, EPOLLOUT)
            self._enter(CONNECT_STARTED)
            return True
        os.close(fd)
        self._connect_failed(node, -sent)
        return False

    def resume_connect(self) -> None:
        """A descriptor is free again: go on where ``_connect`` had to wait."""
        if self.state != WAITING:
            return
        self._connect_next()
        if self.state != DONE:
            self._update_masks()

    def _attach_backend(self, fd: int, mask: int) -> None:
        backend = self.backend = Peer(fd, mask)
        self.loop.register(backend.fd, self, mask)

    def _head_for(self, node: Node) -> bytes:
        """The client's header and vars with the node's modifiers (as uWSGI rewrites them), then any early body."""
        head = self.head
        assert head is not None
        raw = head.raw
        if raw[0] == node.modifier1 and raw[3] == node.modifier2 and not self.upload:
            return raw
        out = bytearray(raw)
        out[0] = node.modifier1
        out[3] = node.modifier2
        out += self.upload  # kept until the node took the head (_established): a failed connect needs them again
        return bytes(out)

    def _connect_finished(self) -> None:
        """The node became writable while connecting: the handshake ended, well or badly."""
        backend = self.backend
        node = self.node
        assert backend is not None and node is not None
        err = so_error(backend.fd)
        if err == 0:
            out = self._head_for(node)
            sent = send(backend.fd, out)
            if sent >= 0:
                self._established(out, sent)
                return
            err = -sent
        elif err < 0:
            err = -err
        self._drop_backend()
        self._connect_failed(node, err)
        self._connect_next()

    def _connect_failed(self, node: Node, err: int) -> None:
        node.stats.failures += 1
        self.node = None
        self.routing.mapper.failed(node, self.loop.now)
        if not self.settings.quiet:
            self.routing.notes.warning(
                "key %s: unable to connect to node %s (%d retries): %s",
                printable(self.key),
                node.name,
                len(self.tried) - 1,
                errno.errorcode.get(err, str(err)) if err else "timeout",
            )

    def _established(self, out: bytes, sent: int) -> None:
        """The head (and early body) went out, ``sent`` bytes of ``out`` at least: relay from now on."""
        node = self.node
        backend = self.backend
        assert node is not None and backend is not None
        node.stats.hits += 1
        backend.written += sent
        self.upload = b""  # in ``out``
        self._enter(CONNECTED)
        if sent < len(out):
            backend.out += memoryview(out)[sent:]
        if self.body is not None:
            self._flush_backend()
        elif self.client.eof and not backend.pending():
            backend.shutdown_write()

    def _backend_failed(self, reason: str) -> None:
        """The node reset or closed the connection after it was sent the request.

        That says something about this request (a header too large for the node's buffer, an app that crashed on
        it), not about the node's health: the node is not marked dead, so one bad request cannot take every node
        out. A node that is really gone refuses the next connect and is marked then. The request is sent once
        more, to another node (the same one only when no other is left), if it can be sent again unchanged (an
        idempotent method without a body, nothing answered yet): a node killed mid-request costs no request, and
        a request that breaks nodes reaches two at most.

        When that resend went to the same node and it broke again, the request is sent to it a third time. A node
        killed with all its processes dies one process at a time: while one still holds its listening socket, the
        resend connects and is then reset. By the third try the socket is closed, the connect is refused, the
        node is marked dead and the request goes on (to cheap mode's local app, a fallback). A node that this
        request breaks three times gets the 502.
        """
        node = self.node
        name = node.name if node is not None else "?"
        notes = self.routing.notes
        if not self.replied and node is not None and self._may_send_again() and self._can_resend():
            self.resends += 1
            notes.warning("key %s: node %s %s; sending the request to the next node", printable(self.key), name, reason)
            self._drop_backend()
            self.node = None
            self.routing.mapper.done(node)
            self.broken = node
            self.retried_broken = False
            self._connect_next()
            return
        notes.warning("key %s: node %s %s", printable(self.key), name, reason)
        if self.replied:
            self._abort("")
        else:
            self._reply_error(502, f"the node for key {printable(self.key)} failed")

    def _may_send_again(self) -> bool:
        resends = self.resends
        return resends == 0 or (resends == 1 and self.retried_broken)

    def _can_resend(self) -> bool:
        head = self.head
        backend = self.backend
        if head is None or self.body is not None or self.after_body or self.upload:
            return False
        if backend is not None and (backend.pending() or backend.written > len(head.raw)):
            return False  # bytes the node did not take, or took after the head (a body without CONTENT_LENGTH)
        if head.get(b"REQUEST_METHOD") not in _RESENDABLE:
            return False
        length = head.get(b"CONTENT_LENGTH")
        return not length or length == b"0"

    # -- ending -----------------------------------------------------------------------------------

    def timed_out(self) -> None:
        """No activity for --fastrouter-timeout seconds (the loop's sweep calls this)."""
        state = self.state
        if state == WAITING:
            self._reply_error(503, "the router is out of resources")
        elif state == HEAD:
            self._abort("")
        elif self.replied or state == CLOSING:
            if state != CLOSING:
                self.routing.notes.warning(
                    "key %s: node %s timed out mid-response", printable(self.key), self.node and self.node.name
                )
            self._abort("")
        elif state == CONNECTING and self.node is not None:
            node = self.node
            self._drop_backend()
            self._connect_failed(node, 0)
            self._connect_next()
            if self.state != DONE:
                self._update_masks()
        else:
            self.routing.notes.warning(
                "key %s: node %s timed out; answered 504", printable(self.key), self.node and self.node.name
            )
            self._reply_error(504, f"the node for key {printable(self.key)} did not answer in time")

    def _reply_error(self, status: int, detail: str) -> None:
        if self.replied:
            self._abort("")
            return
        self._drop_backend()
        protocol = self.head.get(b"SERVER_PROTOCOL") if self.head is not None else None
        client = self.client
        self.replied = True
        self._enter(CLOSE_AFTER_FLUSH)
        del client.out[:]
        if not client.write(error_response(status, detail, protocol)):
            self._abort(f"client error: {client.failure}")
        elif not client.out:
            self._finish()
        else:
            self._update_masks()

    def _abort(self, reason: str) -> None:
        if reason:
            self.routing.notes.info("key %s: session closed: %s", printable(self.key), reason)
        self._finish()

    def _drop_backend(self) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            node = self.node
            if node is not None:
                node.stats.bytes_to_node += backend.written
                node.stats.bytes_from_node += backend.received
            self.loop.unregister(backend.fd)
            backend.close()

    def _finish(self) -> None:
        """Close everything; the loop hears of it once."""
        if self.state == DONE:
            return
        if self.body is not None:
            self.body.close()
            self.body = None
        self._drop_backend()
        self._enter(CLOSE)
        client = self.client
        self.loop.unregister(client.fd)
        client.close()
        if self.node is not None:
            self.routing.mapper.done(self.node)
        self.loop.session_ended(self, self.head is not None, client.written, self.started)

    def close(self) -> None:
        """The router is leaving: end at once, whatever the state."""
        self._finish()

    def _update_masks(self) -> None:
        high_water = self.settings.high_water
        client = self.client
        backend = self.backend
        cmask = 0
        if (
            not client.eof
            and self.state != CLOSING
            and (backend.queued() if backend is not None and self.state == RELAY else len(self.upload)) < high_water
            and len(self.after_body) < high_water
        ):
            cmask = EPOLLIN
        if client.pending():
            cmask |= EPOLLOUT
        if cmask != client.mask:
            client.mask = cmask
            self.loop.modify(client.fd, cmask)
        if backend is None:
            return
        if self.state == CONNECTING:
            bmask = EPOLLOUT
        else:
            bmask = EPOLLIN | EPOLLRDHUP if client.queued() < high_water else 0
            if backend.pending() or self.body is not None:
                bmask |= EPOLLOUT
        if bmask != backend.mask:
            backend.mask = bmask
            self.loop.modify(backend.fd, bmask)
