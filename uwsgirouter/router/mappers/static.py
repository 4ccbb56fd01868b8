"""``--fastrouter-to`` (and ``--fastrouter-use-socket``): a fixed list of nodes named in the configuration."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from uwsgirouter.errors import ConfigError
from uwsgirouter.router.mappers.base import Mapper
from uwsgirouter.router.nodes import Node, make_node

log = logging.getLogger("uwsgirouter.router")


class StaticMapper(Mapper):
    """Round robin over a fixed list, skipping nodes that failed recently."""

    def __init__(self, nodes: Sequence[Node], gracetime: float) -> None:
        self.nodes = list(nodes)
        self.gracetime = gracetime
        self._next = 0

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        count = len(self.nodes)
        for step in range(count):
            node = self.nodes[(self._next + step) % count]
            if node.dead_until > now or node in tried:
                continue
            if node.dead_until:
                node.dead_until = 0.0
                log.info("static node %s is tried again after its grace time", node.name)
            self._next = (self._next + step + 1) % count
            return node
        return None

    def failed(self, node: Node, now: float) -> None:
        if self.gracetime > 0:
            node.dead_until = now + self.gracetime

    def stats(self) -> dict[str, Any]:
        """uWSGI's ``static_nodes``: per node its counters, and the end of its grace time as a wall-clock second."""
        now = time.monotonic()
        wall_offset = time.time() - now
        return {
            "static_nodes": [
                {
                    "name": n.name,
                    "hits": n.stats.hits,
                    "grace": int(n.dead_until + wall_offset) if n.dead_until else 0,
                    "failcnt": n.stats.failures,
                    "tx": n.stats.bytes_from_node,
                    "rx": n.stats.bytes_to_node,
                    "death_mark": 1 if n.dead_until > now else 0,
                }
                for n in self.nodes
            ]
        }


def static_nodes(addresses: Sequence[object]) -> list[Node]:
    """Nodes named in the configuration: host names are resolved once, here, at start."""
    nodes = []
    for address in addresses:
        try:
            nodes.append(make_node(str(address), allow_dns=True))
        except ValueError as exc:
            raise ConfigError(f"node {address}: {exc}") from None
    return nodes
