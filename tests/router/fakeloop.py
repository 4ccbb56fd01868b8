"""A ``loop.Loop`` for in-process tests of the router core: real sockets (socket pairs, a listening UNIX socket for
the node), a poll set the test steps by hand, a clock the test sets.

The session cannot tell it from the router's epoll loop: it registers, modifies and unregisters descriptors and
reads ``now``; the test calls ``step()`` to deliver whatever is ready, and moves ``now`` to make time pass.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router.loop import Loop, Settings, Timed, Watcher
from uwsgirouter.router.mappers import Mapper, StaticMapper
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.router.routing import Routing
from uwsgirouter.router.session import Session


@dataclass
class Ended:
    """What the loop heard when a session ended."""

    request: bool
    sent: int
    started: float


class FakeLoop(Loop):
    """A ``loop.Loop``; ``step()`` delivers ready events, ``now`` is the test's clock."""

    def __init__(self, now: float = 1000.0) -> None:
        super().__init__(now)
        self.handlers: dict[int, Watcher] = {}
        self.masks: dict[int, int] = {}
        self.ended: list[Ended] = []
        self.waiting: list[Callable[[], None]] = []
        self.poller = select.epoll()

    def register(self, fd: int, watcher: Watcher, mask: int) -> None:
        assert fd not in self.handlers, f"fd {fd} registered twice"
        self.handlers[fd] = watcher
        self.masks[fd] = mask
        self.poller.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        assert fd in self.handlers, f"fd {fd} modified but not registered"
        self.masks[fd] = mask
        self.poller.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        del self.handlers[fd]
        del self.masks[fd]
        try:
            self.poller.unregister(fd)
        except OSError:
            pass

    def wait_for_descriptor(self, resume: Callable[[], None]) -> None:
        self.waiting.append(resume)

    def session_ended(self, session: Timed, request: bool, sent: int, started: float) -> None:
        self.ended.append(Ended(request, sent, started))

    def step(self, timeout: float = 0.0) -> int:
        """Deliver the events ready now (waiting up to ``timeout`` for the first); how many were delivered."""
        ready = self.poller.poll(timeout)
        for fd, events in ready:
            watcher = self.handlers.get(fd)
            if watcher is not None:
                watcher.ready(fd, events)
        return len(ready)

    def run_until(self, predicate: Callable[[], Any], timeout: float = 5.0) -> None:
        """Step until ``predicate()`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
            self.step(0.01)

    def close(self) -> None:
        self.poller.close()


@dataclass
class Backend:
    """A node the test plays: a listening UNIX socket; ``accept()`` gives the test the router's connection."""

    path: Path
    listener: socket.socket
    node: Node
    conns: list[socket.socket] = field(default_factory=list)

    def accept(self, timeout: float = 5.0) -> socket.socket:
        self.listener.settimeout(timeout)
        conn, _ = self.listener.accept()
        conn.settimeout(timeout)
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.listener.close()


def backend(directory: Path, name: str = "node.sock") -> Backend:
    path = directory / name
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    return Backend(path, listener, make_node(str(path)))


def routing_for(mapper: Mapper, **kwargs: Any) -> Routing:
    return Routing(mapper, LogLimiter(logging.getLogger("uwsgirouter.router")), **kwargs)


def static_routing(*nodes: Node, **kwargs: Any) -> Routing:
    return routing_for(StaticMapper(list(nodes), 30.0), **kwargs)


def handed(sock: socket.socket) -> int:
    """``sock``'s descriptor, non-blocking and no longer the socket object's, as sysio.accept hands one to a
    session."""
    sock.setblocking(False)
    return sock.detach()


def open_session(loop: FakeLoop, routing: Routing, settings: Settings | None = None) -> tuple[Session, socket.socket]:
    """A session on one end of a socket pair (started: registered, first read done); the test holds the other end."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    session = Session(loop, routing, settings or Settings(), handed(ours))
    session.start()
    return session, theirs
