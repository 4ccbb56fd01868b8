"""The node table: which nodes serve which key, kept by the master. Pure logic, time passed in.

Semantics follow uWSGI 2.0 (core/subscription.c) with the deliberate differences of docs/differences.md
("Subscription packets", "Node expiry"): a subscribe adds a node or refreshes it (cores, load, weight; a
death mark is cleared; modifier1 and modifier2 stay as first announced, as in uWSGI); an unsubscribe
removes it; a node not announced for ``tolerance`` seconds is removed by the master's timer (uWSGI only
checks when a request comes); a connect failure reported by a router marks the node dead until its next
announce.

Capacity is bounded (keys and addresses are at most 255 bytes, so memory is too), and a flood cannot fill
it for others: when the table is full, a new key or node takes the place of a key that never carried a
request, the oldest first, and a sender (the datagram's source host) that already owns a large share of
the keys can only displace its own. Keys the routers use are never displaced by announces.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from uwsgirouter.protocol import Command, Subscription

#: address, modifier1, modifier2, weight, death mark, cores, load, last announce (unix time), failures
PublishedNode = tuple[bytes, int, int, int, bool, int, int, int, int]


class Change(Enum):
    ADDED = "added"
    REFRESHED = "refreshed"
    REVIVED = "revived"
    REMOVED = "removed"
    UNKNOWN = "unknown"  # unsubscribe of a node we do not have
    FULL = "full"  # refused: the table is at capacity and nothing may be displaced


@dataclass(slots=True)
class TableNode:
    key: bytes
    address: bytes
    modifier1: int
    modifier2: int
    cores: int
    load: int
    weight: int
    last_seen: float  # monotonic, for expiry
    last_check: float  # wall clock of the last announce, for the stats (uWSGI's last_check)
    death_mark: bool = False
    failcnt: int = 0
    last_requests: int = 0
    sender: bytes = b""  # the host that announced it (its share of the table)

    def publish(self) -> PublishedNode:
        """What routers need to route (address, modifiers, weight, dead or alive), then for the stats."""
        return (
            self.address,
            self.modifier1,
            self.modifier2,
            self.weight,
            self.death_mark,
            self.cores,
            self.load,
            int(self.last_check),
            self.failcnt,
        )


#: Of a full table, the share of keys one sender may hold and still displace others' unused keys.
SENDER_SHARE = 0.25


class NodeTable:
    """Keys in first-announce order, each with its nodes in arrival order (uWSGI's list order)."""

    def __init__(self, max_nodes: int = 65536, max_keys: int = 65536, tolerance: float = 17.0) -> None:
        self.max_nodes = max_nodes
        self.max_keys = max_keys
        self.tolerance = tolerance
        self.keys: dict[bytes, list[TableNode]] = {}
        self.node_count = 0
        self.version = 0  # bumped on every change routers must see
        #: keys no router has used yet, oldest first: the ones a full table gives up
        self.unused: dict[bytes, None] = {}
        #: the same, per sender that created them
        self.unused_of: dict[bytes, dict[bytes, None]] = {}
        #: keys created per sender (its share of the table)
        self.keys_of: dict[bytes, int] = {}
        self.owner: dict[bytes, bytes] = {}
        #: senders holding at least their share: their unused keys are the first to go
        self.heavy: dict[bytes, None] = {}
        self.displaced = 0  # keys given up to make room, for the stats

    def apply(self, sub: Subscription, now: float, wall: float, sender: bytes = b"") -> Change:
        """One decoded datagram, from ``sender`` (the source host; b"" when unknown)."""
        if sub.command == Command.UNSUBSCRIBE:
            return self.remove(sub.key, sub.address)
        nodes = self.keys.get(sub.key)
        if nodes is not None:
            for node in nodes:
                if node.address == sub.address:
                    revived = node.death_mark
                    weight = max(1, sub.weight)
                    if revived or weight != node.weight:
                        self.version += 1
                    node.cores, node.load, node.weight = sub.cores, sub.load, weight
                    node.last_seen, node.last_check = now, wall
                    node.death_mark = False
                    node.last_requests = 0
                    return Change.REVIVED if revived else Change.REFRESHED
        if not self._make_room(sub.key, new_key=nodes is None, sender=sender):
            return Change.FULL
        node = TableNode(
            sub.key,
            sub.address,
            sub.modifier1,
            sub.modifier2,
            sub.cores,
            sub.load,
            max(1, sub.weight),
            now,
            wall,
            sender=sender,
        )
        nodes = self.keys.get(sub.key)
        if nodes is None:
            self.keys[sub.key] = nodes = []
            self.unused[sub.key] = None
            self.unused_of.setdefault(sender, {})[sub.key] = None
            self.keys_of[sender] = count = self.keys_of.get(sender, 0) + 1
            if count >= self.max_keys * SENDER_SHARE:
                self.heavy[sender] = None
            self.owner[sub.key] = sender
        nodes.append(node)
        self.node_count += 1
        self.version += 1
        return Change.ADDED

    def _make_room(self, key: bytes, new_key: bool, sender: bytes) -> bool:
        """Room for one more node (of a new key): displace unused keys as needed; False if none may go."""
        while self.node_count >= self.max_nodes or (new_key and len(self.keys) >= self.max_keys):
            victim = self._victim(sender, spare=key)
            if victim is None:
                return False
            self._drop_key(victim)
            self.displaced += 1
        return True

    def _victim(self, sender: bytes, spare: bytes) -> bytes | None:
        """The key a full table gives up, never ``spare`` (the key being announced): a sender over its share
        loses its own oldest unused key; anyone else takes the oldest unused key of a sender over its share
        if there is one, else the oldest unused key of all."""
        share = self.max_keys * SENDER_SHARE
        if self.keys_of.get(sender, 0) >= share:
            return _first(self.unused_of.get(sender, {}), spare)
        for heavy in self.heavy:
            victim = _first(self.unused_of.get(heavy, {}), spare)
            if victim is not None:
                return victim
        return _first(self.unused, spare)

    def mark_used(self, key: bytes) -> None:
        """A router routed a request by ``key``: from now on announces can never displace it."""
        if key in self.unused:
            del self.unused[key]
            owned = self.unused_of.get(self.owner.get(key, b""))
            if owned is not None:
                owned.pop(key, None)

    def _drop_key(self, key: bytes) -> None:
        nodes = self.keys.pop(key, None)
        if nodes is None:
            return
        self.node_count -= len(nodes)
        self.version += 1
        self._forget_key(key)

    def _forget_key(self, key: bytes) -> None:
        self.unused.pop(key, None)
        sender = self.owner.pop(key, b"")
        owned = self.unused_of.get(sender)
        if owned is not None:
            owned.pop(key, None)
            if not owned:
                del self.unused_of[sender]
        count = self.keys_of.get(sender, 0) - 1
        if count > 0:
            self.keys_of[sender] = count
        else:
            self.keys_of.pop(sender, None)
        if count < self.max_keys * SENDER_SHARE:
            self.heavy.pop(sender, None)

    def remove(self, key: bytes, address: bytes) -> Change:
        nodes = self.keys.get(key)
        if nodes:
            for index, node in enumerate(nodes):
                if node.address == address:
                    del nodes[index]
                    self.node_count -= 1
                    if not nodes:
                        del self.keys[key]
                        self._forget_key(key)
                    self.version += 1
                    return Change.REMOVED
        return Change.UNKNOWN

    def mark_failed(self, key: bytes, address: bytes) -> bool:
        """A router could not connect: dead for every router until the node announces itself again."""
        for node in self.keys.get(key, ()):
            if node.address == address:
                node.failcnt += 1
                if not node.death_mark:
                    node.death_mark = True
                    self.version += 1
                    return True
        return False

    def expire(self, now: float) -> list[TableNode]:
        """Remove every node not announced within the tolerance; returns them (for the log)."""
        gone = [n for nodes in self.keys.values() for n in nodes if now - n.last_seen > self.tolerance]
        for node in gone:
            self.remove(node.key, node.address)
        return gone

    def live_count(self) -> int:
        return sum(1 for nodes in self.keys.values() for n in nodes if not n.death_mark)

    def snapshot(self) -> list[tuple[bytes, list[PublishedNode]]]:
        """The routing view published to the router workers."""
        return [(key, [n.publish() for n in nodes]) for key, nodes in self.keys.items()]


def _first(keys: dict[bytes, None], spare: bytes) -> bytes | None:
    """The oldest of ``keys`` that is not ``spare``."""
    for key in keys:
        if key != spare:
            return key
    return None
