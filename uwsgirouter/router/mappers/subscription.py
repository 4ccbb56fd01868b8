"""``--fastrouter-subscription-server``: routing by the subscription table, inside a router worker.

The worker reads the master's published image whenever its sequence changed, and keeps its own ``Node``
objects across images (matched by key and address) so that balancing state and counters survive
updates. Connect failures are marked locally at once and reported to the master, which marks the node
dead for every worker until it announces itself again.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router.mappers.base import Mapper
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.text import printable

log = logging.getLogger("uwsgirouter.router")
_notes = LogLimiter(log)

#: uWSGI's dotsplit stops after this many lookups (a.b.example.com -> .b.example.com -> ...).
DOTSPLIT_LOOKUPS = 5


def djb33x_bucket(key: bytes) -> int:
    """uWSGI's hash bucket of a subscription key (``djb33x % 65535``), shown as "hash" in the stats."""
    value = 5381
    for byte in key:
        value = ((value * 33) ^ byte) & 0xFFFFFFFF
    return value % 65535


class Pool:
    """The nodes of one key, with the balancing algorithm's state."""

    __slots__ = ("dead", "details", "entries", "hits", "key", "nodes", "reported", "weights")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.entries: list[tuple[Any, ...]] = []  # as published; equal entries mean an unchanged pool
        self.hits = 0
        self.reported = False  # the master was told this key carries requests
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
        self.pools: dict[bytes, Pool] = {}  # built from the current image
        self.stale: dict[bytes, Pool] = {}  # built from an earlier one, reused while the entries match
        self.entries: dict[bytes, list[tuple[Any, ...]]] = {}
        self.seen = -1
        self.current: dict[Node, int] = {}  # smooth wrr state
        self.references: dict[Node, int] = {}  # in-flight sessions per node (lrc, wlrc)
        self.requests: dict[Node, int] = {}
        self.live = 0
        self.counters: dict[str, int] = {}  # published by the master alongside the table (stats)

    def refresh(self) -> bool:
        """Adopt the master's newest image, if there is one; True when it changed.

        Only the raw entries are taken here; a key's pool is built when a request first needs it (or the
        stats ask), reusing the previous pool when its entries did not change. So a large table that
        changes often (a flood of announces) costs the router a decode, not a rebuild of every pool.
        """
        if self.image.sequence == self.seen:
            return False
        result = self.image.read()
        if result is None:
            return False
        self.seen, (snapshot, self.counters) = result
        self.entries = entries = dict(snapshot)
        stale = self.stale
        stale.update(self.pools)
        self.pools = {}
        for key in [key for key in stale if key not in entries]:
            self._forget(stale.pop(key).nodes)
        self.live = sum(1 for nodes in entries.values() for entry in nodes if not entry[4])
        return True

    def _pool(self, key: bytes) -> Pool | None:
        """The pool of ``key`` in the current image, built on first use."""
        pool = self.pools.get(key)
        if pool is None and key in self.entries:
            pool = self._adopt(key)
        return pool

    def _adopt(self, key: bytes) -> Pool:
        """The pool of ``key``, one of the current image's: the previous one if its entries did not change."""
        entries = self.entries[key]
        previous = self.stale.pop(key, None)
        if previous is not None and previous.entries == entries:
            pool = previous
        else:
            pool = self._build(key, entries, previous)
        self.pools[key] = pool
        return pool

    def _build(self, key: bytes, entries: list[tuple[Any, ...]], previous: Pool | None) -> Pool:
        old = {node.name: node for node in previous.nodes} if previous is not None else {}
        pool = Pool(key)
        pool.entries = entries
        for address, modifier1, modifier2, weight, dead, *details in entries:
            name = address.decode("utf-8", "surrogateescape")
            node = old.pop(name, None)
            if node is None or node.modifier1 != modifier1 or node.modifier2 != modifier2:
                try:
                    node = make_node(name, modifier1, modifier2)
                except (ValueError, OSError) as exc:
                    _notes.warning("subscription node %s for key %s is unusable: %s", name, printable(key), exc)
                    continue
            pool.nodes.append(node)
            pool.weights[node] = weight
            pool.details[node] = details
            if dead:
                pool.dead.add(node)
        if previous is not None:
            pool.hits, pool.reported = previous.hits, previous.reported
            self._forget(old.values())
        return pool

    def _forget(self, nodes: Iterable[Node]) -> None:
        """Balancing state of nodes that left the table."""
        for node in nodes:
            self.current.pop(node, None)
            self.requests.pop(node, None)

    def all_pools(self) -> dict[bytes, Pool]:
        """Every key's pool, in table order (for the stats document)."""
        self.refresh()
        return {key: self.pools.get(key) or self._adopt(key) for key in self.entries}

    def stats(self) -> dict[str, Any]:
        """uWSGI's ``subscriptions`` (per key its pool, per node its announce and counters) and the master's
        counters of refused packets and displaced keys."""
        subscriptions = []
        for key, pool in self.all_pools().items():
            nodes = []
            for node in pool.nodes:
                cores, load, last_check, failcnt = pool.details[node]  # every node of a pool has them
                nodes.append(
                    {
                        "name": node.name,
                        "modifier1": node.modifier1,
                        "modifier2": node.modifier2,
                        "last_check": last_check,
                        "pid": 0,
                        "uid": 0,
                        "gid": 0,
                        "requests": node.stats.hits,
                        "last_requests": 0,
                        "tx": node.stats.bytes_from_node,
                        "rx": node.stats.bytes_to_node,
                        "cores": cores,
                        "load": load,
                        "weight": pool.weights[node],
                        "wrr": self.current.get(node, 0),
                        "ref": self.references.get(node, 0),
                        "failcnt": max(failcnt, node.stats.failures),
                        "death_mark": 1 if node in pool.dead else 0,
                    }
                )
            subscriptions.append(
                {
                    "key": key.decode("utf-8", "replace"),
                    "hash": djb33x_bucket(key),
                    "hits": pool.hits,
                    "sni_enabled": 0,
                    "nodes": nodes,
                }
            )
        return {
            "subscriptions": subscriptions,
            "subscription_packets_rejected": self.counters.get("rejected", 0),
            "subscription_keys_displaced": self.counters.get("displaced", 0),
        }

    def live_nodes(self) -> int:
        """Nodes not marked dead, across all keys (cheap mode watches it)."""
        self.refresh()
        return self.live

    def _pool_for(self, key: bytes) -> Pool | None:
        pool = self._pool(key)
        if pool is not None or not self.dotsplit:
            if pool is None and self.fallback_key is not None:
                return self._pool(self.fallback_key)
            return pool
        candidate = key
        for _ in range(DOTSPLIT_LOOKUPS - 1):
            dot = candidate.find(b".", 1)
            if dot < 0:
                return None
            candidate = candidate[dot:]
            pool = self._pool(candidate)
            if pool is not None:
                return pool
        return None

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        self.refresh()
        pool = self._pool_for(key)
        if pool is None:
            return None
        pool.hits += 1
        if not pool.reported:
            self._report_used(pool)
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

    def _report_used(self, pool: Pool) -> None:
        """Tell the master, once, that this key carries requests: a full table never gives it up."""
        pool.reported = True
        if self.report is not None:
            try:
                self.report.send(b"\0" + pool.key)
            except OSError:
                pool.reported = False  # try again with the next request

    def _smooth_wrr(self, live: list[Node], pool: Pool) -> Node:
        """nginx's smooth weighted round robin: exact weights, interleaved (docs/differences.md, "wrr")."""
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
