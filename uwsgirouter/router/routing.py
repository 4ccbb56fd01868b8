"""Choosing the node for a request: the mapper's pick, then retries, fallbacks, a broken node again, cheap mode.

``choose_node`` is the whole policy as a pure function of its arguments (tests call it with a mapper and lists);
``Routing`` holds what is fixed per router process and reports going cheap to the worker. The order, as uWSGI's
corerouter has it, with our additions (docs/differences.md):

1. after ``max_retries`` failed attempts: no node;
2. after a failed attempt, when fallbacks are configured: the first fallback not tried yet, else no node;
3. the mapper's pick for the key (it skips the nodes already tried and the ones marked dead);
4. no pick on the first attempt with ``--fastrouter-fallback-on-no-key``: the first fallback;
5. no pick while a node broke without answering: that node again (it may answer now; gone, it refuses the connect);
6. no pick in cheap mode with no live node at all: the local app (the shared socket's own address), once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router.mappers import Mapper
from uwsgirouter.router.nodes import Node

#: The node to try (None: none left) and whether cheap mode found no live node (the router then goes cheap). A plain
#: tuple: a NamedTuple's constructor is Python code, even in the compiled build.
Choice = tuple[Node | None, bool]


def choose_node(
    mapper: Mapper,
    key: bytes,
    tried: Sequence[Node],
    broken: Node | None,
    now: float,
    fallbacks: Sequence[Node] = (),
    max_retries: int = 3,
    fallback_on_no_key: bool = False,
    cheap: bool = False,
    local: Node | None = None,
) -> Choice:
    """The next node for ``key`` after the attempts in ``tried`` (see the module docstring for the order)."""
    attempts = len(tried)
    if attempts and attempts > max_retries:
        return None, False
    if attempts and fallbacks:
        for node in fallbacks:
            if node not in tried:
                return node, False
        return None, False
    picked = mapper.pick(key, tried, now)
    if picked is not None:
        return picked, False
    if not attempts and fallback_on_no_key and fallbacks:
        return fallbacks[0], False
    if broken is not None:
        return broken, False
    if cheap and not mapper.live_nodes():
        return (local if local is not None and local not in tried else None), True
    return None, False


class Routing:
    """What every session of one router process routes with."""

    __slots__ = (
        "cheap",
        "fallback_on_no_key",
        "fallbacks",
        "local",
        "mapper",
        "max_retries",
        "notes",
        "on_no_live_node",
        "own_addresses",
    )

    def __init__(
        self,
        mapper: Mapper,
        notes: LogLimiter,
        fallbacks: Sequence[Node] = (),
        max_retries: int = 3,
        fallback_on_no_key: bool = False,
        own_addresses: frozenset[object] = frozenset(),
        cheap: bool = False,
        local: Node | None = None,
        on_no_live_node: Callable[[], None] | None = None,
    ) -> None:
        self.mapper = mapper
        #: per-request lines (no node, refused key, invalid request, broken node), rate-limited
        self.notes = notes
        self.fallbacks = tuple(fallbacks)
        self.max_retries = max_retries
        self.fallback_on_no_key = fallback_on_no_key
        #: addresses that reach this router itself: a node announced with one is skipped, never connected
        self.own_addresses = own_addresses
        #: cheap mode: the router stops accepting while no node is live
        self.cheap = cheap
        #: in cheap mode, the shared socket's own address (the local app workers answer there)
        self.local = local
        self.on_no_live_node = on_no_live_node

    def choose(self, key: bytes, tried: Sequence[Node], broken: Node | None, now: float) -> Node | None:
        node, no_live_node = choose_node(
            self.mapper,
            key,
            tried,
            broken,
            now,
            self.fallbacks,
            self.max_retries,
            self.fallback_on_no_key,
            self.cheap,
            self.local,
        )
        if no_live_node and self.on_no_live_node is not None:
            self.on_no_live_node()
        return node

    def is_self(self, node: Node) -> bool:
        """Whether connecting to ``node`` would reach this router (the local app in cheap mode is not)."""
        return node.sockaddr in self.own_addresses and node is not self.local
