"""The subscription server, run by the master: UDP (or UNIX datagram) sockets -> node table -> image.

Datagrams are decoded strictly (DECISIONS D3); a rejected one is counted and reported in at most one
log line per second. Failure reports from router workers arrive on a datagram socketpair. After each
batch the table is published to the shared-memory image if it changed, and once a second nodes that
stopped announcing are expired (D4).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from uwsgirouter.address import Address, TcpAddress, UnixAddress
from uwsgirouter.protocol import RemoteProtocolError, Subscription, decode_subscription, encode_subscription
from uwsgirouter.router.responses import printable
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.subscription.table import Change, NodeTable

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
    sock.setblocking(False)
    return sock


class SubscriptionServer:
    """Owns the table; the master's loop calls ``on_readable``, ``on_reports`` and ``tick``."""

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
        self.resubscribe = [_sockaddr(a) for a in resubscribe]
        self.own_address = own_address
        self.guard = guard  # signatures and credentials (--subscriptions-sign-check ...), checked first
        self.rejected = 0
        self.rejected_logged_at = 0.0
        self.rejected_pending = 0
        self.last_reason = ""
        self.published_version: tuple[int, int] = (-1, -1)
        self._forwarder: socket.socket | None = None
        if self.resubscribe:
            self._forwarder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if isinstance(resubscribe_bind, TcpAddress):
                self._forwarder.bind((resubscribe_bind.host, resubscribe_bind.port))
            self._forwarder.setblocking(False)
        self.publish()

    def filenos(self) -> list[int]:
        fds = [s.fileno() for s in self.sockets]
        return fds + ([self.reports.fileno()] if self.reports is not None else [])

    def on_readable(self, sock: socket.socket, now: float) -> None:
        if self.guard is not None and self.guard.reads_credentials(sock):
            self._on_readable_with_credentials(sock, now)
            return
        for _ in range(BATCH):
            try:
                datagram = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("subscription socket error: %s", exc)
                break
            self.handle_datagram(datagram, now, time.time())
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
        self, datagram: bytes, now: float, wall: float, credentials: Credentials | None = None
    ) -> Change | None:
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
        change = self.table.apply(sub, now, wall)
        key, address = printable(sub.key), printable(sub.address)
        if change is Change.ADDED:
            log.info("%s => new node: %s", key, address)
            if sub.notify:
                self._notify(sub)
        elif change is Change.REVIVED:
            log.info("%s => node %s is back", key, address)
        elif change is Change.REMOVED:
            log.info("%s => node %s unsubscribed", key, address)
        elif change is Change.FULL:
            self._rejected(f"table full, refusing {key} => {address}", now)
        if self._forwarder is not None and RESUBSCRIBED_RECORD not in datagram:
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
            log.info("cannot send the subscription ack to %s: %s", printable(sub.notify), exc)

    def _forward(self, sub: Subscription) -> None:
        assert self._forwarder is not None
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
        for target in self.resubscribe:
            try:
                self._forwarder.sendto(bytes(packet), target)
            except OSError as exc:
                log.info("cannot forward a subscription to %s: %s", target, exc)

    def on_reports(self) -> None:
        """Router workers could not connect to these nodes: dead for all until they announce again."""
        assert self.reports is not None
        for _ in range(BATCH):
            try:
                report = self.reports.recv(1024)
            except (BlockingIOError, InterruptedError):
                break
            key, _, address = report.partition(b"\0")
            if self.table.mark_failed(key, address):
                log.warning("%s => marking %s as failed", printable(key), printable(address))
        self.publish()

    def tick(self, now: float) -> None:
        self._report_rejected(now)
        if self.guard is not None:
            self.guard.tick(time.time())
        for node in self.table.expire(now):
            log.warning(
                "%s => removing %s (no announce received in %.0f seconds)",
                printable(node.key),
                printable(node.address),
                self.table.tolerance,
            )
        self.publish(counters_too=True)

    def publish(self, counters_too: bool = False) -> None:
        """Publish a changed table at once; changed counters only when asked (once a second, in tick),
        so a flood of rejected packets does not make the master rewrite the image all the time."""
        table_version, rejected = self.published_version
        if self.table.version == table_version and (not counters_too or self.rejected == rejected):
            return
        if not self.image.publish((self.table.snapshot(), {"rejected": self.rejected})):
            log.error("the node table no longer fits its shared memory; routers keep the previous one")
            return
        self.published_version = (self.table.version, self.rejected)

    def close(self) -> None:
        self._report_rejected(float("inf"))
        for sock in self.sockets:
            sock.close()
        if self._forwarder is not None:
            self._forwarder.close()


def _sockaddr(address: Address) -> tuple[str, int] | str:
    if isinstance(address, TcpAddress):
        return (address.host or "127.0.0.1", address.port)
    return str(address)
