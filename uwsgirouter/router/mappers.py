"""Mappers: how a request's key becomes a node.

One mapper is active per router, chosen with uWSGI's precedence (``use-cache > use-pattern >
subscription-server > use-base > use-code-string > use-socket > to``). The data path only calls
``pick``, ``failed`` and ``done``, so later mappers (cache, subscriptions, code) plug in unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from uwsgirouter.config import Config
from uwsgirouter.config.ini import apply_magic
from uwsgirouter.errors import ConfigError
from uwsgirouter.router.nodes import Node, make_node

log = logging.getLogger("uwsgirouter.router")

#: Keys longer than this are refused before any path is built (docs/differences.md, "Hostile keys").
MAX_PATH_KEY_SIZE = 255
#: Nodes built from keys (base, pattern) kept for reuse; beyond it they are built per request.
MAX_CACHED_NODES = 4096


class UnsafeKey(Exception):
    """The key cannot be used to build a path (docs/differences.md, "Hostile keys"); the router answers 502 and logs
    it."""


class Mapper:
    """Base: maps a key to a node, and hears how connecting to it went."""

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        """A node for ``key`` not in ``tried``, or None when there is none (left)."""
        raise NotImplementedError

    def failed(self, node: Node, now: float) -> None:
        """Connecting to ``node`` failed (refused, timed out, missing socket)."""

    def done(self, node: Node) -> None:
        """A session that used ``node`` has ended."""

    def live_nodes(self) -> int | None:
        """Nodes alive right now, for cheap mode; None for mappers whose nodes do not come and go."""
        return None


def check_path_key(key: bytes) -> str:
    """The key as text, if it is safe to paste into a filesystem path (docs/differences.md, "Hostile keys"); else
    ``UnsafeKey``."""
    if len(key) > MAX_PATH_KEY_SIZE:
        raise UnsafeKey("longer than 255 bytes")
    if key in (b".", b".."):
        raise UnsafeKey("a relative directory name")
    if b"/" in key or b"\\" in key or b"\0" in key:
        raise UnsafeKey("contains '/', '\\' or NUL")
    return key.decode("utf-8", "surrogateescape")


class _PathMapper(Mapper):
    """Shared by base and pattern: the node is a function of the (checked) key, cached."""

    def __init__(self) -> None:
        self._nodes: dict[bytes, Node] = {}

    def address_for(self, key: str) -> str:
        raise NotImplementedError

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        node = self._nodes.get(key)
        if node is None:
            try:
                node = make_node(self.address_for(check_path_key(key)))
            except (ValueError, OSError):
                return None
            if len(self._nodes) >= MAX_CACHED_NODES:
                self._nodes.clear()
            self._nodes[key] = node
        return None if node in tried else node


class BaseDirMapper(_PathMapper):
    """``--fastrouter-use-base DIR``: DIR + key, a plain concatenation as in uWSGI."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def address_for(self, key: str) -> str:
        return self.base + key


class PatternMapper(_PathMapper):
    """``--fastrouter-use-pattern P``: ``%s`` becomes the key, ``%%`` a ``%``, other ``%X`` vanish."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = pattern

    def address_for(self, key: str) -> str:
        return apply_magic(self.pattern, {"s": key, "%": "%"})


class StaticMapper(Mapper):
    """``--fastrouter-to``: round robin over a fixed list, skipping nodes that failed recently."""

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


def static_nodes(addresses: Sequence[object]) -> list[Node]:
    """Nodes named in the configuration: host names are resolved once, here, at start."""
    nodes = []
    for address in addresses:
        try:
            nodes.append(make_node(str(address), allow_dns=True))
        except ValueError as exc:
            raise ConfigError(f"node {address}: {exc}") from None
    return nodes


def build_mapper(config: Config, socket_names: Sequence[str] = ()) -> Mapper | None:
    """The one active mapper, by uWSGI's precedence; None when nothing routes requests."""
    if config.fastrouter_use_pattern is not None:
        return PatternMapper(config.fastrouter_use_pattern)
    if config.fastrouter_use_base is not None:
        return BaseDirMapper(config.fastrouter_use_base)
    if config.fastrouter_use_socket is not None and socket_names:
        return StaticMapper(static_nodes([socket_names[config.fastrouter_use_socket]]), 0)
    if config.fastrouter_to:
        return StaticMapper(static_nodes(config.fastrouter_to), config.fastrouter_gracetime)
    return None
