"""``--fastrouter-use-base`` and ``--fastrouter-use-pattern``: the node's address is built from the key.

The key comes from the client (the Host header, usually), so it is checked before it is pasted into a
filesystem path (docs/differences.md, "Hostile keys").
"""

from __future__ import annotations

from collections.abc import Sequence

from uwsgirouter.config.ini import apply_magic
from uwsgirouter.router.mappers.base import Mapper, UnsafeKey
from uwsgirouter.router.nodes import Node, make_node

#: Keys longer than this are refused before any path is built (docs/differences.md, "Hostile keys").
MAX_PATH_KEY_SIZE = 255
#: Nodes built from keys (base, pattern) kept for reuse; beyond it they are built per request.
MAX_CACHED_NODES = 4096


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
