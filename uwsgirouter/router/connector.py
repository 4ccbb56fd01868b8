"""Choosing a node and connecting to it: the part of a session between the head and the relay.

A mixin of ``Session`` (which owns the state, see its ``__slots__``). Connect failures, on UNIX and TCP
nodes alike (docs/differences.md, "Missing UNIX-socket backend"), mark the node with its mapper and move on
to the next node or fallback, up to ``--fastrouter-max-retries`` retries; then the client gets a 502
(docs/differences.md, "Routing failure").
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from typing import TYPE_CHECKING

from uwsgirouter.protocol import RequestHead, routing_key
from uwsgirouter.router.mappers import UnsafeKey
from uwsgirouter.router.nodes import Node
from uwsgirouter.text import printable

if TYPE_CHECKING:
    from uwsgirouter.router.postbuffer import BodyBuffer
    from uwsgirouter.router.worker import RouterWorker

log = logging.getLogger("uwsgirouter.router")

#: WAITING: routed, waiting for a free descriptor to connect to its node (client bytes are held meanwhile)
HEAD, BUFFERING, CONNECTING, RELAY, CLOSING, DONE, WAITING = range(7)

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
_SOCK_FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_SOL_SOCKET = socket.SOL_SOCKET
_SO_ERROR = socket.SO_ERROR
_EINPROGRESS = errno.EINPROGRESS


class Connector:
    """Routing and connecting. It declares every slot of a session; ``Session`` adds the behaviour."""

    __slots__ = (
        "after_body",
        "backend",
        "backend_eof",
        "bfd",
        "bmask",
        "body",
        "broken",
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
        "resent",
        "sent",
        "started",
        "state",
        "to_backend",
        "to_client",
        "tried",
        "worker",
    )

    worker: RouterWorker
    head: RequestHead | None
    key: bytes
    node: Node | None
    tried: list[Node]
    state: int
    backend: socket.socket | None
    bfd: int
    bmask: int
    to_backend: bytearray
    client_eof: bool
    resent: bool
    broken: Node | None
    last_active: float
    body: BodyBuffer | None

    def on_backend(self, events: int) -> None:
        raise NotImplementedError

    def _reply_error(self, status: int, detail: str) -> None:
        raise NotImplementedError

    def _drop_backend(self) -> None:
        raise NotImplementedError

    def _flush_backend(self) -> None:
        raise NotImplementedError

    def _shutdown_backend(self) -> None:
        raise NotImplementedError

    def _update_masks(self) -> None:
        raise NotImplementedError

    def _route(self) -> None:
        worker = self.worker
        assert self.head is not None
        self.last_active = worker.now  # from now on the timeout counts inactivity, not the head's deadline
        self.key = worker.force_key or routing_key(self.head.vars)
        if worker.shutting_down:
            self._reply_error(503, "the router is shutting down")
            return
        if not self.key:
            worker.notes.warning("request without a key (UWSGI_FASTROUTER_KEY, HTTP_HOST or SERVER_NAME): answered 502")
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
        if picked is None and self.broken is not None:
            # No other node: the one that broke is tried again. Gone for good, it refuses the connect and is
            # marked dead (then cheap mode may hand the request to the local app); alive, it may answer now.
            picked, self.broken = self.broken, None
            self.tried.remove(picked)
            return picked
        if picked is None:
            local = worker.no_live_node()
            if local is not None and local not in self.tried:
                return local
        return picked

    def _connect_next(self) -> None:
        while True:
            try:
                node = self._choose()
            except UnsafeKey as exc:
                self.worker.notes.warning("key %s refused: %s; answered 502", printable(self.key), exc)
                self._reply_error(502, f"no node for key {printable(self.key)}")
                return
            if node is None:
                if self.tried:
                    self._reply_error(502, f"no node could be reached for key {printable(self.key)}")
                else:
                    self.worker.notes.warning("key %s: no node; answered 502", printable(self.key))
                    self._reply_error(502, f"no node for key {printable(self.key)}")
                return
            self.tried.append(node)
            self.node = node
            if node.sockaddr in self.worker.own_addresses and node is not self.worker.local_node:
                self.worker.notes.warning(
                    "key %s: node %s is this router itself; skipped", printable(self.key), node.name
                )
                self.worker.mapper.failed(node, self.worker.now)
                continue
            try:
                sock = socket.socket(node.family, _SOCK_FLAGS)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    # Out of descriptors: wait for one (sessions end all the time) instead of failing.
                    self.tried.pop()
                    self.node = None
                    self.worker.mapper.done(node)
                    self.state = WAITING
                    self.worker.wait_for_descriptor(self)  # type: ignore[arg-type]
                    return
                self.worker.notes.error(
                    "key %s: cannot create a socket for node %s: %s", printable(self.key), node.name, exc
                )
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

    def resume_connect(self) -> None:
        """A descriptor is free again: go on where ``_connect_next`` had to wait."""
        self._connect_next()
        if self.state != DONE:
            self._update_masks()

    def _attach_backend(self, sock: socket.socket, mask: int) -> None:
        self.backend = sock
        self.bfd = sock.fileno()
        self.bmask = mask
        self.worker.add_fd(sock.fileno(), self.on_backend, mask)

    def _backend_head(self, node: Node) -> bytes:
        """The client's header and vars with the node's modifiers (as uWSGI rewrites them), then any early body."""
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
            self.worker.notes.warning(
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
        if self.body is not None:
            self._flush_backend()
        elif self.client_eof and not self.to_backend:
            self._shutdown_backend()
