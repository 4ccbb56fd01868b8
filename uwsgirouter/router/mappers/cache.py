"""``--fastrouter-use-cache[=NAME]``: the node for a key is the value the shared cache holds for it.

The value is ``addr[,modifier1]`` (``127.0.0.1:4040``, ``127.0.0.1:4040,5``, ``/tmp/app.sock``), or
several such nodes separated by ``|``, used in turn. uWSGI picks ``hits % count`` with the cache
item's shared hit counter; here each router process keeps its own counter per key (bounded), which
spreads requests the same way. A retry skips the nodes already tried. The forwarded modifier1 is
the value's (0 without one) and modifier2 is 0, as in uWSGI.

The cache is filled by other processes (a ``--file``/``--import`` script in the master, app workers),
so every request reads it: a change is seen at once. Parsed nodes are kept per distinct value in a
bounded dict, so a flood of distinct values cannot grow memory; a value that is not a usable address
is left out (no usable node at all: the router answers 502) and logged once while the value stays
in that dict.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from uwsgirouter.cache import Cache
from uwsgirouter.cache_config import CacheSet
from uwsgirouter.errors import ConfigError
from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router.mappers.base import Mapper
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.text import printable

log = logging.getLogger("uwsgirouter.router")
#: lines a request can cause (a mapper that raises or returns junk for some keys) are rate-limited
_notes = LogLimiter(log)

#: Distinct cache values whose parsed nodes are kept; beyond it the dict starts again.
MAX_CACHED_VALUES = 4096
#: Keys whose round-robin position is kept.
MAX_COUNTERS = 4096


class CacheMapper(Mapper):
    """Looks the key up in ``cache`` on every pick."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self._nodes: dict[bytes, tuple[Node, ...]] = {}
        self._counters: dict[bytes, int] = {}

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        value = self.cache.get(key)
        if value is None:
            return None
        nodes = self._nodes_for(value)
        count = len(nodes)
        # by name: the value may have changed (new Node objects) since a node was tried
        skip = {node.name for node in tried} if tried else ()
        if count == 1:
            node = nodes[0]
            return None if node.name in skip else node
        start = self._counters.get(key, 0)
        for step in range(count):
            node = nodes[(start + step) % count]
            if node.name not in skip:
                if len(self._counters) >= MAX_COUNTERS and key not in self._counters:
                    self._counters.clear()
                self._counters[key] = (start + step + 1) % count
                return node
        return None

    def _nodes_for(self, value: bytes) -> tuple[Node, ...]:
        nodes = self._nodes.get(value)
        if nodes is None:
            nodes = self._parse(value)
            if len(self._nodes) >= MAX_CACHED_VALUES:
                self._nodes.clear()
            self._nodes[value] = nodes
        return nodes

    def _parse(self, value: bytes) -> tuple[Node, ...]:
        """The usable nodes of ``a[,m1]|b[,m1]|...``; an unusable part is logged and left out."""
        nodes = []
        text = value.decode("utf-8", "surrogateescape")
        for part in text.split("|"):
            address, comma, modifier = part.partition(",")
            address, modifier = address.strip(), modifier.strip()
            try:
                if comma and modifier and not modifier.isdigit():
                    raise ValueError(f"modifier1 {modifier!r} is not a number")
                nodes.append(make_node(address, int(modifier) % 256 if modifier else 0))
            except ValueError as exc:
                _notes.warning(
                    "cache %r value %s: %s is not a usable node (%s)",
                    self.cache.name,
                    printable(value, 120),
                    printable(part.encode("utf-8", "surrogateescape")) or "''",
                    exc,
                )
        return tuple(nodes)


def build_cache_mapper(caches: CacheSet, name: str | None) -> CacheMapper:
    """The mapper for ``--fastrouter-use-cache[=NAME]`` ("" or None: the first cache); ConfigError if missing."""
    cache = caches.get_cache(name)
    if cache is None:
        if not len(caches):
            raise ConfigError("--fastrouter-use-cache needs a cache: add --cache N or --cache2 name=...,items=N")
        raise ConfigError(f"--fastrouter-use-cache: unable to find cache {name!r}")
    return CacheMapper(cache)
