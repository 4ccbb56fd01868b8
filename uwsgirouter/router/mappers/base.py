"""The mapper interface: what the data path and the stats document ask of whichever mapper routes requests.

One mapper is active per router (choose.py picks it with uWSGI's precedence). The data path only calls
``pick``, ``failed`` and ``done``; cheap mode asks ``live_nodes``; the stats server asks ``stats``. So a mapper
is added or changed here without the session, the worker or the stats document knowing its type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from uwsgirouter.router.loop import mypyc_attr
from uwsgirouter.router.nodes import Node


class UnsafeKey(Exception):
    """The key cannot be used to build a path (docs/differences.md, "Hostile keys"); the router answers 502 and logs
    it."""


@mypyc_attr(allow_interpreted_subclasses=True)  # tests (and users' experiments) may subclass it in Python
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

    def stats(self) -> dict[str, Any]:
        """This mapper's part of the router's stats document (router/stats.py), keys in uWSGI's order."""
        return {}


class NoMapper(Mapper):
    """The seed's "most useless setup": listeners and no way to route; every request gets a 502."""

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        return None
