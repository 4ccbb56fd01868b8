"""This instance as a vassal: governed by the Emperor (uWSGI's or uwsgirouter's) that started it.

The Emperor passes its end of a socketpair as ``UWSGI_EMPEROR_FD``. Once the workers are up this instance
says it is spawned, accepting and loyal (uWSGI's vassal sends loyalty after its first request; a router's
workers serve no requests of their own, so here loyalty comes with readiness); it sends a heartbeat every
``--heartbeat`` seconds; it obeys the Emperor's commands (0: stop now, 1: reload gracefully, 2: stop
gracefully) and stops when the Emperor's end closes ("lost connection with my emperor"), as uWSGI's vassals.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence

from uwsgirouter.emperor import protocol
from uwsgirouter.errors import ConfigError
from uwsgirouter.services.base import Lifecycle, MasterControl, Service

log = logging.getLogger("uwsgirouter.master")


class EmperorLink(Service):
    name = "the link to the Emperor"

    def __init__(self, sock: socket.socket, control: MasterControl, heartbeat: int = 0) -> None:
        self.sock: socket.socket | None = sock
        self.control = control
        self.heartbeat = float(heartbeat)
        self.next_beat = 0.0
        self.loyal = False
        sock.setblocking(False)
        log.info("*** has_emperor mode detected (fd: %d) ***", sock.fileno())

    def filenos(self) -> Sequence[int]:
        return (self.sock.fileno(),) if self.sock is not None else ()

    def on_readable(self, fd: int, now: float) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            log.error("lost connection with my emperor !!!")
            self._close()
            self.control.request_stop(graceful=False)
            return
        for byte in data:
            log.info("received message %d from emperor", byte)
            if byte == protocol.STOP:
                self.control.request_stop(graceful=False)
            elif byte == protocol.RELOAD:
                self.control.request_reload()
            elif byte == protocol.GRACEFUL_STOP:
                self.control.request_stop(graceful=True)

    def on_lifecycle(self, event: Lifecycle) -> None:
        if event is Lifecycle.READY:
            self.send(protocol.READY)
            self.send(protocol.ACCEPTING)
            if not self.loyal:
                log.info("announcing my loyalty to the Emperor...")
                self.loyal = self.send(protocol.LOYAL)
        elif event is Lifecycle.RELOADED:
            self.send(protocol.ACCEPTING)

    def next_due(self) -> float | None:
        return self.next_beat if self.heartbeat and self.sock is not None else None

    def tick(self, now: float) -> None:
        self.next_beat = now + self.heartbeat
        self.send(protocol.HEARTBEAT)

    def send(self, byte: int) -> bool:
        if self.sock is None:
            return False
        try:
            return self.sock.send(bytes((byte,))) == 1
        except BlockingIOError:
            return False
        except OSError as exc:
            log.warning("cannot write to the Emperor: %s", exc.strerror or exc)
            return False

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        self._close()


def build_emperor_link(environ: Mapping[str, str], control: MasterControl, heartbeat: int) -> EmperorLink | None:
    """The link when ``UWSGI_EMPEROR_FD`` names an open socket; a wrong value is a configuration error."""
    value = environ.get(protocol.EMPEROR_FD_ENV)
    if not value:
        return None
    try:
        fd = int(value)
        sock = socket.socket(fileno=fd)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{protocol.EMPEROR_FD_ENV}={value}: not the descriptor of a socket ({exc})") from None
    os.set_inheritable(fd, False)  # the master's hooks and exec'd commands must not hold it
    return EmperorLink(sock, control, heartbeat)
