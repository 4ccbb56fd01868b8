"""The instance side: announce this instance's sockets to subscription servers (``--subscribe-to``).

Grammar (as uWSGI 2.0 parses it): ``[ADDR=]SERVER:KEY[,MODIFIER1[,DIGEST:PRIVKEY]]`` or ``[ADDR=]SERVER:@MAPFILE``,
where ``=N=`` as ADDR names shared socket N. A SERVER starting with ``/`` is a UNIX datagram path and
the key follows the next ``:``; otherwise SERVER is ``host:port`` and the key follows the second ``:``
(so keys may contain colons). ``--subscribe2`` takes ``server=,key=,addr=,socket=,weight=,sign=,...``.
Announces go out at start, one second later, then every ``--subscribe-freq`` seconds. A target with
``DIGEST:PRIVKEY`` sends signed packets (see ``signing``); mapping-file lines are never signed, as in uWSGI.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from uwsgirouter.errors import ConfigError
from uwsgirouter.protocol import Command, Subscription, encode_subscription
from uwsgirouter.services.base import Lifecycle, Service

log = logging.getLogger("uwsgirouter.subscription")


@dataclass(frozen=True, slots=True)
class Target:
    """One announce: to ``server``, for ``key``, naming ``address``."""

    server: str
    key: str
    address: str
    modifier1: int = 0
    modifier2: int = 0
    weight: int | None = None
    check_file: str | None = None
    sign: str | None = None  #: ``DIGEST:PRIVKEY``


def _split_server(text: str) -> tuple[str, str] | None:
    """``SERVER:REST`` by uWSGI's rule; None when the required colons are missing (silently ignored)."""
    if text.startswith("/"):
        server, colon, rest = text.partition(":")
        return (server, rest) if colon else None
    first = text.find(":")
    second = text.find(":", first + 1) if first >= 0 else -1
    if second < 0:
        return None
    return text[:second], text[second + 1 :]


def parse_subscribe_to(spec: str, default_address: str | None, shared_names: Sequence[str]) -> list[Target]:
    """Targets of one ``--subscribe-to`` value (several for a mapping file)."""
    address = default_address
    if spec.startswith("=") and spec.count("=") >= 2:
        index, _, spec = spec[1:].partition("=")
        if index.isdigit() and int(index) < len(shared_names):
            address = shared_names[int(index)]
    elif "=" in spec:
        address, _, spec = spec.partition("=")
    split = _split_server(spec)
    if split is None or not address:
        return []
    server, rest = split
    if rest.startswith("@"):
        return [_target(server, line, address, signed=False) for line in _mapping_file(rest[1:])]
    return [_target(server, rest, address)]


def _target(server: str, key_spec: str, address: str, signed: bool = True) -> Target:
    key, _, rest = key_spec.partition(",")
    modifier, _, sign = rest.partition(",")
    return Target(
        server, key, address, int(modifier) if modifier.isdigit() else 0, sign=sign if signed and sign else None
    )


def _mapping_file(path: str) -> list[str]:
    """One ``KEY[,MODIFIER1]`` per line; blank lines and ``#`` comments skipped; a missing file is skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        log.warning("subscription mapping file %s: %s", path, exc.strerror)
        return []
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def parse_subscribe2(items: dict[str, str], socket_names: Sequence[str], default_address: str | None) -> list[Target]:
    server, key = items.get("server"), items.get("key")
    if not server or not key:
        return []
    address = items.get("addr") or default_address
    if items.get("socket", "").isdigit() and int(items["socket"]) < len(socket_names):
        address = socket_names[int(items["socket"])]
    if not address:
        return []

    def number(name: str) -> int:
        return int(items[name]) if items.get(name, "").isdigit() else 0

    weight = int(items["weight"]) if items.get("weight", "").isdigit() else None
    return [
        Target(
            server,
            key,
            address,
            number("modifier1"),
            number("modifier2"),
            weight,
            items.get("check") or None,
            items.get("sign") or None,
        )
    ]


class Signer:
    """Signs one target's packets as a uWSGI node does: a ``unix`` var, then ``sign`` over the vars.

    The private key is read at start (a bad one stops the instance with a clear error, where uWSGI
    would silently send unsigned packets) and again whenever its file changes. ``unix`` is the clock
    (plus 1 for an unsubscribe, as uWSGI) but never repeats, so a router that refuses replays (ours)
    never mistakes two announces in one second for one.
    """

    def __init__(self, spec: str) -> None:
        from uwsgirouter.subscription import signing  # cryptography is loaded only by signing instances

        self._signing = signing
        try:
            self.digest, self.path = signing.split_sign_spec(spec)
            self.key = signing.load_private_key(self.path)
        except ValueError as exc:
            raise ConfigError(f"cannot sign subscriptions with {spec!r}: {exc}") from None
        self.identity = _file_identity(self.path)
        self.last_unix = 0

    def sign(self, sub: Subscription, wall: float) -> bytes:
        """The datagram of ``sub``, signed; ``wall`` is the Unix time."""
        self._reload()
        unix = max(int(wall) + (1 if sub.command == Command.UNSUBSCRIBE else 0), self.last_unix + 1)
        self.last_unix = unix
        unsigned = replace(sub, unix=unix, sign=None)
        signature = self._signing.sign(self.key, encode_subscription(unsigned)[4:], self.digest)
        return encode_subscription(replace(unsigned, sign=signature))

    def _reload(self) -> None:
        identity = _file_identity(self.path)
        if identity == self.identity:
            return
        self.identity = identity
        try:
            self.key = self._signing.load_private_key(self.path)
        except ValueError as exc:
            log.warning("%s; still signing with the key read before", exc)
            return
        log.info("private key %s changed on disk; signing with the new key", self.path)


def _file_identity(path: str) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


class Subscriber(Service):
    """Sends this instance's announces (a master service): at start, then on its timer; unsubscribes when the
    instance stops, and on a reload with ``unsubscribe_on_reload``."""

    name = "announcing subscriptions"

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        frequency: float = 10.0,
        cores: int = 0,
        weight: int = 0,
        force_modifier1: int | None = None,
        blocked: bool = False,
        notify: str | None = None,
        unsubscribe_on_reload: bool = False,
    ) -> None:
        self.targets = list(targets)
        self.signers = {t: Signer(t.sign) for t in self.targets if t.sign}
        self.frequency = frequency
        self.cores = cores
        self.weight = weight
        self.force_modifier1 = force_modifier1
        self.blocked = blocked
        self.notify = notify.encode() if notify else None
        self.next_at = 0.0
        self.unsubscribe_on_reload = unsubscribe_on_reload
        self.stopped = False
        #: the instance is paused (uWSGI's p): no announce until it resumes
        self.paused = False
        self.sent_rounds = 0
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setblocking(False)
        self._unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._unix.setblocking(False)

    def packet(self, target: Target, command: Command, wall: float | None = None) -> bytes:
        sub = Subscription(
            key=target.key.encode(),
            address=target.address.encode(),
            command=command,
            modifier1=self.force_modifier1 if self.force_modifier1 is not None else target.modifier1,
            modifier2=target.modifier2,
            cores=self.cores,
            load=0,
            weight=target.weight if target.weight is not None else self.weight,
            notify=self.notify,
        )
        signer = self.signers.get(target)
        if signer is None:
            return encode_subscription(sub)
        return signer.sign(sub, time.time() if wall is None else wall)

    def send_all(self, command: Command) -> None:
        for target in self.targets:
            if target.check_file and os.path.exists(target.check_file):
                continue  # uWSGI 2.0: a check= file that exists suppresses the announce
            self._send(target, self.packet(target, command))

    def _send(self, target: Target, packet: bytes) -> None:
        try:
            if target.server.startswith("/"):
                self._unix.sendto(packet, target.server)
            else:
                host, _, port = target.server.rpartition(":")
                self._udp.sendto(packet, (host or "127.0.0.1", int(port)))
        except (OSError, ValueError) as exc:
            log.info("cannot announce %s to %s: %s", target.key, target.server, exc)

    def next_due(self) -> float | None:
        return None if self.blocked or self.stopped or self.paused or not self.targets else self.next_at

    def on_lifecycle(self, event: Lifecycle) -> None:
        if event is Lifecycle.STOPPING:
            self.stop_announcing()
        elif event is Lifecycle.RELOADING and self.unsubscribe_on_reload:
            self.unsubscribe()
            self.next_at = time.monotonic() + 1.0

    def stop_announcing(self) -> None:
        """Unsubscribe once and announce no more: the instance is stopping."""
        if not self.stopped:
            self.unsubscribe()
            self.stopped = True

    def set_paused(self, paused: bool) -> None:
        """uWSGI's pause: unsubscribe now and announce no more; on resume, announce at once (neither while
        the subscriptions are blocked)."""
        if paused == self.paused or self.stopped:
            return
        self.paused = paused
        if paused:
            self.unsubscribe()
        else:
            self.next_at = 0.0

    def tick(self, now: float) -> None:
        """At start, after one second, then every ``frequency`` seconds."""
        if self.blocked or self.stopped or self.paused or not self.targets or now < self.next_at:
            return
        self.send_all(Command.SUBSCRIBE)
        self.sent_rounds += 1
        self.next_at = now + (1.0 if self.sent_rounds == 1 else self.frequency)

    def unsubscribe(self) -> None:
        if not self.blocked and self.targets:
            self.send_all(Command.UNSUBSCRIBE)
            log.info("unsubscribed from %d subscription server(s)", len({t.server for t in self.targets}))

    def close(self) -> None:
        self._udp.close()
        self._unix.close()
