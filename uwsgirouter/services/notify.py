"""Service-manager notifications (systemd's ``sd_notify`` protocol) for ``Type=notify`` units.

When the environment names a ``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace), the master
sends one datagram per phase of its life: ``READY=1`` once every socket is bound and the first workers
have beaten (so a unit that others order ``After=`` starts when requests are really answered),
``RELOADING=1`` on a graceful reload and ``READY=1`` again when the new generation serves, ``STOPPING=1``
when a stop starts, and a ``STATUS=`` line with each. uWSGI 2.0 sends only ``STATUS=`` lines and one
``READY=1`` before its workers exist (docs/differences.md, "sd_notify").

The variable is removed from the environment before any worker is forked, as systemd advises: app code
and the processes it starts must not speak for the master (with ``NotifyAccess=main`` systemd would
refuse them anyway, with a log line each).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping, Sequence

from uwsgirouter.services.base import Lifecycle, Service

log = logging.getLogger("uwsgirouter.master")

ENV_VAR = "NOTIFY_SOCKET"


def notify_address(value: str) -> str | None:
    """The ``sendto`` address of a ``NOTIFY_SOCKET`` value: an absolute path, or ``@name`` for the abstract
    namespace; None for anything else (systemd's newer ``vsock:`` form, a relative path)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares ``MONOTONIC_USEC`` with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def message(event: Lifecycle, status: str, pid: int, now_usec: int | None = None) -> bytes:
    """The datagram for ``event``: its assignments, one per line, then ``STATUS=``. ``MAINPID`` goes with
    every ``READY=1`` (the master may have forked away from the process systemd started, with
    --daemonize); ``MONOTONIC_USEC`` with ``RELOADING=1``, which systemd 253+ wants to tell this reload
    from an earlier one."""
    lines: list[str] = []
    if event in (Lifecycle.READY, Lifecycle.RELOADED):
        lines += ["READY=1", f"MAINPID={pid}"]
    elif event is Lifecycle.RELOADING:
        usec = monotonic_usec() if now_usec is None else now_usec
        lines += ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
    elif event is Lifecycle.STOPPING:
        lines.append("STOPPING=1")
    status = " ".join(status.split())  # one line: a newline would end the assignment
    lines.append(f"STATUS={status}")
    return ("\n".join(lines) + "\n").encode()


class Notifier(Service):
    """Sends the lifecycle of the master to the service manager; never blocks, never stops the master."""

    name = "the service-manager notifications"

    def __init__(self, address: str, shown: str, pid: int, listeners: list[str], workers: str) -> None:
        self.address = address
        self.shown = shown  # NOTIFY_SOCKET as given, for log lines
        self.pid = pid
        self.listeners = listeners
        self.workers = workers
        self.reloads = 0
        self.failed = False
        self.sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self.send_status(f"starting {workers}")

    def on_lifecycle(self, event: Lifecycle) -> None:
        serving = ", ".join(self.listeners) or "nothing"
        if event is Lifecycle.READY:
            status = f"ready: {self.workers} serving {serving}"
        elif event is Lifecycle.RELOADING:
            self.reloads += 1
            status = "reloading gracefully: a new generation of workers is starting"
        elif event is Lifecycle.RELOADED:
            status = f"ready (reloaded {self.reloads} time{'s' if self.reloads != 1 else ''}): serving {serving}"
        else:
            status = "stopping: workers finish their requests"
        self.send(message(event, status, self.pid))

    def send_status(self, status: str) -> None:
        """A ``STATUS=`` line alone."""
        self.send(f"STATUS={' '.join(status.split())}\n".encode())

    def send(self, datagram: bytes) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(datagram, self.address)
        except OSError as exc:
            # The manager went away or its queue is full: say so once, then carry on without it.
            if not self.failed:
                self.failed = True
                log.warning("cannot notify the service manager on %s: %s", self.shown, exc.strerror or exc)
        else:
            if self.failed:
                self.failed = False
                log.info("notifying the service manager on %s again", self.shown)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def build_notifier(
    listeners: Sequence[str], routers: int, apps: int, environ: MutableMapping[str, str] = os.environ
) -> Notifier | None:
    """A notifier when the master runs under a service manager; takes ``NOTIFY_SOCKET`` out of ``environ``
    (the process environment) so that no worker inherits it. ``listeners`` (the names of the router and app
    sockets) and the numbers of ``routers`` and ``apps`` go into its status lines."""
    value = environ.pop(ENV_VAR, None)
    if not value:
        return None
    address = notify_address(value)
    if address is None:
        log.warning("%s=%s: not a path nor an @abstract name; no notifications sent", ENV_VAR, value)
        return None
    kinds = [f"{n} {kind}{'s' if n != 1 else ''}" for n, kind in ((routers, "router"), (apps, "app worker")) if n]
    log.info("notifying the service manager on %s", value)
    return Notifier(address, value, os.getpid(), list(listeners), " and ".join(kinds))
