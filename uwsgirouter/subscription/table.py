"""The node table: which nodes serve which key, kept by the master. Pure logic, time passed in.

Semantics follow uWSGI 2.0 (reference section 2) with the deliberate differences of DECISIONS D3/D4:
a subscribe adds a node or refreshes it (cores, load, weight; a death mark is cleared; modifier1 and
modifier2 stay as first announced, as in uWSGI); an unsubscribe removes it; a node not announced for
``tolerance`` seconds is removed by the master's timer (uWSGI only checks when a request comes); a
connect failure reported by a router marks the node dead until its next announce. Capacity is bounded:
when full, new keys or nodes are refused and the existing ones keep working.
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
    FULL = "full"  # refused: the table is at capacity


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


class NodeTable:
    """Keys in first-announce order, each with its nodes in arrival order (uWSGI's list order)."""

    def __init__(self, max_nodes: int = 4096, max_keys: int = 1024, tolerance: float = 17.0) -> None:
        self.max_nodes = max_nodes
        self.max_keys = max_keys
        self.tolerance = tolerance
        self.keys: dict[bytes, list[TableNode]] = {}
        self.node_count = 0
        self.version = 0  # bumped on every change routers must see

    def apply(self, sub: Subscription, now: float, wall: float) -> Change:
        """One decoded datagram."""
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
        if self.node_count >= self.max_nodes or (nodes is None and len(self.keys) >= self.max_keys):
            return Change.FULL
        node = TableNode(
            sub.key, sub.address, sub.modifier1, sub.modifier2, sub.cores, sub.load, max(1, sub.weight), now, wall
        )
        self.keys.setdefault(sub.key, []).append(node)
        self.node_count += 1
        self.version += 1
        return Change.ADDED

    def remove(self, key: bytes, address: bytes) -> Change:
        nodes = self.keys.get(key)
        if nodes:
            for index, node in enumerate(nodes):
                if node.address == address:
                    del nodes[index]
                    self.node_count -= 1
                    if not nodes:
                        del self.keys[key]
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
