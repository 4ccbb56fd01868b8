"""The subscription server, run by the master: UDP (or UNIX datagram) sockets -> node table -> image.

Datagrams are decoded strictly (docs/differences.md, "Subscription packets"); a rejected one is counted
and reported in at most one log line per second. Failure reports from router workers arrive on a datagram
socketpair. After each batch the table is published to the shared-memory image if it changed, and once a
second nodes that stopped announcing are expired (docs/differences.md, "Node expiry").
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from uwsgirouter.address import AbstractAddress, Address, TcpAddress, UnixAddress
from uwsgirouter.protocol import RemoteProtocolError, Subscription, decode_subscription, encode_subscription
from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.services.base import Service
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.subscription.table import Change, NodeTable
from uwsgirouter.text import printable

if TYPE_CHECKING:
    from uwsgirouter.subscription.signing import Credentials, SubscriptionGuard

log = logging.getLogger("uwsgirouter.subscription")

#: uWSGI reads subscriptions into a 4096-byte buffer; we accept the largest valid packet.
MAX_DATAGRAM = 65536 + 4
#: Datagrams handled per wakeup before the loop looks at its other duties (signals, timers).
BATCH = 512
#: Bytes of image per node and per key, generous: an address and a key are at most 255 bytes each.
IMAGE_BYTES_PER_NODE = 300
IMAGE_BYTES_PER_KEY = 300
#: A datagram carrying this var was forwarded by another router (--fastrouter-resubscribe): it is
#: never forwarded again, so two routers resubscribing to each other cannot loop (uWSGI issue #871).
RESUBSCRIBED_VAR = b"resubscribed"
#: Receive buffer asked for on subscription sockets (the kernel may give less).
RECEIVE_BUFFER = 4 << 20
#: Longest wait between a table change and its publication (see ``SubscriptionServer.publish``).
PUBLISH_BACKOFF_MAX_S = 0.5
RESUBSCRIBED_RECORD = len(RESUBSCRIBED_VAR).to_bytes(2, "little") + RESUBSCRIBED_VAR + b"\x01\x001"


def bind_datagram(address: Address) -> socket.socket:
    """A subscription server socket: UDP for host:port, a UNIX datagram socket for a path."""
    if isinstance(address, TcpAddress):
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(("" if address.host in ("", "*") else address.host, address.port))
    elif isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            os.unlink(address.path)
        except FileNotFoundError:
            pass
        sock.bind(address.path)
    else:
        raise ValueError(f"a subscription server needs host:port or a UNIX path, not {address}")
    _grow_receive_buffer(sock)
    sock.setblocking(False)
    return sock


def _grow_receive_buffer(sock: socket.socket) -> None:
    """Room for bursts of announces while the master is busy (publishing a large table, say): the kernel's
    default buffer holds a few hundred datagrams. Beyond net.core.rmem_max only root may go (FORCE)."""
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            return
        except OSError:
            continue


class SubscriptionServer(Service):
    """Owns the table; a master service: datagrams and router reports when readable, publication of the
    table when a change is due, expiry once a second."""

    name = "the subscription server"

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        table: NodeTable,
        image: TableImage,
        reports: socket.socket | None = None,
        resubscribe: Sequence[Address] = (),
        resubscribe_bind: Address | None = None,
        own_address: bytes = b"",
        guard: SubscriptionGuard | None = None,
    ) -> None:
        self.sockets = list(sockets)
        self.table = table
        self.image = image
        self.reports = reports
        #: (family, kernel address, name) of every --fastrouter-resubscribe target
        self.resubscribe = [target for target in (_forward_target(a) for a in resubscribe) if target is not None]
        self.own_address = own_address
        self.guard = guard  # signatures and credentials (--subscriptions-sign-check ...), checked first
        self.rejected = 0
        self.rejected_logged_at = 0.0
        self.rejected_pending = 0
        self.last_reason = ""
        self.published_version: tuple[int, int] = (-1, -1)
        self.publish_pending = False  # a change waits for next_publish_at (the master's loop retries it)
        self.next_publish_at = 0.0
        self.next_second = 0.0
        #: node events (new, back, gone, failed) and delivery problems: a flood of them is summarised
        self.events = LogLimiter(log)
        #: one datagram socket per address family the targets use (UDP v4/v6, UNIX paths and abstract names)
        self._forwarders: dict[int, socket.socket] = {}
        for family, _, _ in self.resubscribe:
            if family not in self._forwarders:
                self._forwarders[family] = _forwarder(family, resubscribe_bind)
        self.publish()

    def filenos(self) -> list[int]:
        fds = [s.fileno() for s in self.sockets]
        return fds + ([self.reports.fileno()] if self.reports is not None else [])

    def on_readable(self, fd: int, now: float) -> None:
        if self.reports is not None and fd == self.reports.fileno():
            self.on_reports()
            return
        self.receive(next(sock for sock in self.sockets if sock.fileno() == fd), now)

    def next_due(self) -> float:
        return min(self.next_second, self.next_publish_at) if self.publish_pending else self.next_second

    def tick(self, now: float) -> None:
        if self.publish_pending and now >= self.next_publish_at:
            self.publish()
        if now >= self.next_second:
            self.next_second = now + 1.0
            self.each_second(now)

    def receive(self, sock: socket.socket, now: float) -> None:
        """Every datagram waiting on ``sock`` (up to a batch), then one publication of the table."""
        if self.guard is not None and self.guard.reads_credentials(sock):
            self._on_readable_with_credentials(sock, now)
            return
        for _ in range(BATCH):
            try:
                datagram, source = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.events.warning("subscription socket error: %s", exc)
                break
            self.handle_datagram(datagram, now, time.time(), _sender(source))
        self.publish()

    def _on_readable_with_credentials(self, sock: socket.socket, now: float) -> None:
        """``on_readable`` for a UNIX socket whose senders' credentials the guard checks."""
        assert self.guard is not None
        for _ in range(BATCH):
            try:
                datagram, credentials = self.guard.receive(sock, MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("subscription socket error: %s", exc)
                break
            self.handle_datagram(datagram, now, time.time(), credentials=credentials)
        self.publish()

    def handle_datagram(
        self, datagram: bytes, now: float, wall: float, sender: bytes = b"", credentials: Credentials | None = None
    ) -> Change | None:
        """Decode and apply one datagram from ``sender`` (its source host, the unit of a table share)."""
        try:
            sub = decode_subscription(datagram)
        except RemoteProtocolError as exc:
            self._rejected(str(exc), now)
            return None
        if self.guard is not None:
            refused = self.guard.check(sub, now, wall, credentials)
            if refused:
                self._rejected(refused, now)
                return None
        displaced = self.table.displaced
        change = self.table.apply(sub, now, wall, sender)
        key, address = printable(sub.key), printable(sub.address)
        if change is Change.ADDED:
            self.events.info("%s => new node: %s", key, address)
            if self.table.displaced != displaced:
                self.events.warning(
                    "subscription table full: %d unused key(s) given up for %s", self.table.displaced - displaced, key
                )
            if sub.notify:
                self._notify(sub)
        elif change is Change.REVIVED:
            self.events.info("%s => node %s is back", key, address)
        elif change is Change.REMOVED:
            self.events.info("%s => node %s unsubscribed", key, address)
        elif change is Change.FULL:
            self._rejected(f"table full, refusing {key} => {address}", now)
        if self._forwarders and RESUBSCRIBED_RECORD not in datagram:
            self._forward(sub)
        return change

    def _rejected(self, reason: str, now: float) -> None:
        """Count; log at most one summary line a second (a flood must not flood the log too)."""
        self.rejected += 1
        self.rejected_pending += 1
        self.last_reason = reason
        self._report_rejected(now)

    def _report_rejected(self, now: float) -> None:
        if self.rejected_pending and now - self.rejected_logged_at >= 1.0:
            log.warning("rejected %d subscription packet(s); last: %s", self.rejected_pending, self.last_reason)
            self.rejected_pending = 0
            self.rejected_logged_at = now

    def _notify(self, sub: Subscription) -> None:
        assert sub.notify is not None
        message = b"[subscription ack] " + sub.key + b" => new node: " + sub.address
        target = sub.notify.decode("utf-8", "surrogateescape")
        try:
            if ":" in target and not target.startswith("/"):
                host, _, port = target.rpartition(":")
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                    out.sendto(message, (host, int(port)))
            else:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
                    out.setblocking(False)
                    out.sendto(message, target)
        except (OSError, ValueError) as exc:
            self.events.info("cannot send the subscription ack to %s: %s", printable(sub.notify), exc)

    def _forward(self, sub: Subscription) -> None:
        forwarded = Subscription(
            key=sub.key,
            address=self.own_address,
            command=sub.command,
            modifier1=sub.modifier1,
            modifier2=sub.modifier2,
        )
        packet = bytearray(encode_subscription(forwarded))
        packet += RESUBSCRIBED_RECORD
        packet[1:3] = (len(packet) - 4).to_bytes(2, "little")
        for family, target, name in self.resubscribe:
            try:
                self._forwarders[family].sendto(bytes(packet), target)
            except OSError as exc:
                self.events.info("cannot forward a subscription to %s: %s", name, exc)

    def on_reports(self) -> None:
        """Reports from the router workers: ``KEY\0ADDRESS``, the node could not be connected (dead for all
        until it announces again); ``\0KEY``, a request was routed by KEY (it is in use: never displaced)."""
        assert self.reports is not None
        for _ in range(BATCH):
            try:
                report = self.reports.recv(1024)
            except (BlockingIOError, InterruptedError):
                break
            if report.startswith(b"\0"):
                self.table.mark_used(report[1:])
                continue
            key, _, address = report.partition(b"\0")
            if self.table.mark_failed(key, address):
                self.events.warning("%s => marking %s as failed", printable(key), printable(address))
        self.publish()

    def each_second(self, now: float) -> None:
        """Rejection summary, signature counters, held-back log lines, and expiry of silent nodes."""
        self._report_rejected(now)
        if self.guard is not None:
            self.guard.tick(time.time())
        self.events.flush(now)
        for node in self.table.expire(now):
            self.events.warning(
                "%s => removing %s (no announce received in %.0f seconds)",
                printable(node.key),
                printable(node.address),
                self.table.tolerance,
            )
        self.publish(counters_too=True)

    def publish(self, counters_too: bool = False) -> None:
        """Publish a changed table, at once unless publishing takes a noticeable share of the time; changed
        counters only when asked (once a second, in tick), so a flood of rejected packets does not make the
        master rewrite the image all the time.

        Publishing a large table costs the master its encoding and every router a decode, so after each
        publish the next waits for four times what this one took (nothing, for tables of ordinary size):
        a flood of announces to a full table cannot keep the processes busy republishing it.
        """
        table_version, rejected = self.published_version
        if self.table.version == table_version and (not counters_too or self.rejected == rejected):
            self.publish_pending = False
            return
        started = time.monotonic()
        if started < self.next_publish_at:
            self.publish_pending = True
            return
        counters = {"rejected": self.rejected, "displaced": self.table.displaced}
        self.publish_pending = False
        if not self.image.publish((self.table.snapshot(), counters)):
            log.error("the node table no longer fits its shared memory; routers keep the previous one")
            return
        self.published_version = (self.table.version, self.rejected)
        finished = time.monotonic()
        self.next_publish_at = finished + min(PUBLISH_BACKOFF_MAX_S, 4 * (finished - started))

    def close(self) -> None:
        self._report_rejected(float("inf"))
        for sock in self.sockets:
            sock.close()
        for forwarder in self._forwarders.values():
            forwarder.close()


def _sender(source: object) -> bytes:
    """The host part of a datagram's source address (UDP); b"" for UNIX datagram sockets."""
    if isinstance(source, tuple) and source:
        return str(source[0]).encode()
    return b""


def _forward_target(address: Address) -> tuple[int, tuple[str, int] | str | bytes, str] | None:
    """How to reach a --fastrouter-resubscribe address: UDP host:port, a UNIX datagram path, an abstract name."""
    if isinstance(address, TcpAddress):
        host = address.host if address.host not in ("", "*") else "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return family, (host, address.port), str(address)
    if isinstance(address, UnixAddress):
        return socket.AF_UNIX, address.path, address.path
    if isinstance(address, AbstractAddress):
        return socket.AF_UNIX, address.sockaddr, str(address)
    log.warning("--fastrouter-resubscribe %s: not a datagram address; ignored", address)
    return None


def _forwarder(family: int, bind: Address | None) -> socket.socket:
    """The socket forwarded datagrams leave from (UDP ones from --fastrouter-resubscribe-bind, if given)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family != socket.AF_UNIX and isinstance(bind, TcpAddress):
        try:
            sock.bind((bind.host, bind.port))
        except OSError as exc:
            log.warning("--fastrouter-resubscribe-bind %s: %s; forwarding from any address", bind, exc.strerror)
    sock.setblocking(False)
    return sock
