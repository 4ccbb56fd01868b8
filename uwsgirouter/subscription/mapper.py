"""Routing by the subscription table, inside a router worker.

The worker reads the master's published image whenever its sequence changed, and keeps its own ``Node``
objects across images (matched by key and address) so that balancing state and counters survive
updates. Connect failures are marked locally at once and reported to the master, which marks the node
dead for every worker until it announces itself again.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

from uwsgirouter.router.mappers import Mapper
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.subscription.image import TableImage

log = logging.getLogger("uwsgirouter.router")

#: uWSGI's dotsplit stops after this many lookups (a.b.example.com -> .b.example.com -> ...).
DOTSPLIT_LOOKUPS = 5


class Pool:
    """The nodes of one key, with the balancing algorithm's state."""

    __slots__ = ("dead", "details", "hits", "nodes", "weights")

    def __init__(self) -> None:
        self.hits = 0
        self.details: dict[Node, list[int]] = {}  # cores, load, last announce, failures (for the stats)
        self.nodes: list[Node] = []
        self.weights: dict[Node, int] = {}
        self.dead: set[Node] = set()


class SubscriptionMapper(Mapper):
    """``--fastrouter-subscription-server``: nodes from the master's table, balanced by ``algo``."""

    def __init__(
        self,
        image: TableImage,
        report: socket.socket | None = None,
        algo: str = "wrr",
        dotsplit: bool = False,
        fallback_key: bytes | None = None,
    ) -> None:
        self.image = image
        self.report = report
        self.algo = algo
        self.dotsplit = dotsplit
        self.fallback_key = fallback_key
        self.pools: dict[bytes, Pool] = {}
        self.seen = -1
        self.current: dict[Node, int] = {}  # smooth wrr state
        self.references: dict[Node, int] = {}  # in-flight sessions per node (lrc, wlrc)
        self.requests: dict[Node, int] = {}
        self.live = 0
        self.counters: dict[str, int] = {}  # published by the master alongside the table (stats)

    def refresh(self) -> bool:
        """Adopt the master's newest image, if there is one; True when it changed."""
        if self.image.sequence == self.seen:
            return False
        result = self.image.read()
        if result is None:
            return False
        self.seen, (snapshot, self.counters) = result
        old = {(key, node.name): node for key, pool in self.pools.items() for node in pool.nodes}
        pools: dict[bytes, Pool] = {}
        for key, entries in snapshot:
            pool = Pool()
            for address, modifier1, modifier2, weight, dead, *details in entries:
                name = address.decode("utf-8", "surrogateescape")
                node = old.get((key, name))
                if node is None or node.modifier1 != modifier1 or node.modifier2 != modifier2:
                    try:
                        node = make_node(name, modifier1, modifier2)
                    except (ValueError, OSError) as exc:
                        log.warning("subscription node %s for key %r is unusable: %s", name, key, exc)
                        continue
                pool.nodes.append(node)
                pool.weights[node] = weight
                pool.details[node] = details
                if dead:
                    pool.dead.add(node)
            previous = self.pools.get(key)
            pool.hits = previous.hits if previous is not None else 0
            pools[key] = pool
        self.pools = pools
        alive = {node for pool in pools.values() for node in pool.nodes}
        self.current = {n: v for n, v in self.current.items() if n in alive}
        self.requests = {n: v for n, v in self.requests.items() if n in alive}
        self.live = sum(len(p.nodes) - len(p.dead) for p in pools.values())
        return True

    def live_nodes(self) -> int:
        """Nodes not marked dead, across all keys (cheap mode watches it)."""
        self.refresh()
        return self.live

    def _pool_for(self, key: bytes) -> Pool | None:
        pool = self.pools.get(key)
        if pool is not None or not self.dotsplit:
            if pool is None and self.fallback_key is not None:
                return self.pools.get(self.fallback_key)
            return pool
        candidate = key
        for _ in range(DOTSPLIT_LOOKUPS - 1):
            dot = candidate.find(b".", 1)
            if dot < 0:
                return None
            candidate = candidate[dot:]
            pool = self.pools.get(candidate)
            if pool is not None:
                return pool
        return None

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        self.refresh()
        pool = self._pool_for(key)
        if pool is None:
            return None
        pool.hits += 1
        live = [n for n in pool.nodes if n not in pool.dead and n not in tried]
        if not live:
            return None
        if len(live) == 1:
            node = live[0]
        elif self.algo == "wrr":
            node = self._smooth_wrr(live, pool)
        else:
            node = self._least_references(live, pool, weighted=self.algo == "wlrc")
        self.references[node] = self.references.get(node, 0) + 1
        self.requests[node] = self.requests.get(node, 0) + 1
        return node

    def _smooth_wrr(self, live: list[Node], pool: Pool) -> Node:
        """nginx's smooth weighted round robin: exact weights, interleaved (DECISIONS D10)."""
        current = self.current
        total = 0
        best: Node | None = None
        best_value = 0
        for node in live:
            weight = pool.weights.get(node, 1)
            value = current.get(node, 0) + weight
            current[node] = value
            total += weight
            if best is None or value > best_value:
                best, best_value = node, value
        assert best is not None
        current[best] = best_value - total
        return best

    def _least_references(self, live: list[Node], pool: Pool, weighted: bool) -> Node:
        """lrc / wlrc: fewest in-flight sessions (divided by weight), then fewest requests so far."""

        def load(node: Node) -> tuple[float, int]:
            refs = self.references.get(node, 0)
            divisor = pool.weights.get(node, 1) if weighted else 1
            return refs / divisor, self.requests.get(node, 0)

        return min(live, key=load)

    def failed(self, node: Node, now: float) -> None:
        self.done(node)  # the session moves on to another node: this one is no longer in use by it
        for key, pool in self.pools.items():
            if node in pool.nodes:
                if node not in pool.dead:
                    pool.dead.add(node)
                    self.live -= 1
                if self.report is not None:
                    try:
                        self.report.send(key + b"\0" + node.name.encode("utf-8", "surrogateescape"))
                    except OSError:
                        pass  # the master also expires nodes on its own; a lost report costs little
                return

    def done(self, node: Node) -> None:
        count = self.references.get(node, 0)
        if count > 1:
            self.references[node] = count - 1
        else:
            self.references.pop(node, None)
