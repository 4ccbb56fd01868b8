"""Choosing the node (router/routing.py) as a pure function: a fake mapper, lists of nodes, no socket."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router.mappers import Mapper
from uwsgirouter.router.nodes import Node
from uwsgirouter.router.routing import Routing, choose_node

KEY = b"example.com"


def node(name: str) -> Node:
    return Node(name, socket.AF_UNIX, name.encode())


A, B, C = node("a"), node("b"), node("c")
F1, F2 = node("fallback1"), node("fallback2")
LOCAL = node("local")


class FakeMapper(Mapper):
    """Picks the first of its nodes not tried; records what it was asked; ``live`` is its live-node count."""

    def __init__(self, nodes: Sequence[Node] = (), live: int | None = None) -> None:
        self.nodes = list(nodes)
        self.live = live
        self.asked: list[tuple[bytes, list[Node], float]] = []

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        self.asked.append((key, list(tried), now))
        return next((n for n in self.nodes if n not in tried), None)

    def live_nodes(self) -> int | None:
        return self.live


def test_the_first_attempt_is_the_mappers_pick_for_the_key() -> None:
    mapper = FakeMapper([A, B])
    assert choose_node(mapper, KEY, [], None, 12.5) == (A, False)
    assert mapper.asked == [(KEY, [], 12.5)]


def test_retries_ask_the_mapper_again_with_what_was_tried() -> None:
    mapper = FakeMapper([A, B, C])
    assert choose_node(mapper, KEY, [A], None, 1.0)[0] is B
    assert choose_node(mapper, KEY, [A, B], None, 1.0)[0] is C
    assert mapper.asked[-1] == (KEY, [A, B], 1.0)


def test_after_max_retries_failed_attempts_there_is_no_node() -> None:
    mapper = FakeMapper([A, B, C, node("d")])
    assert choose_node(mapper, KEY, [A, B], None, 0, max_retries=2)[0] is C, "2 retries: 3 attempts"
    assert choose_node(mapper, KEY, [A, B, C], None, 0, max_retries=2) == (None, False)
    assert choose_node(mapper, KEY, [A], None, 0, max_retries=0) == (None, False)
    assert len(mapper.asked) == 1, "the mapper is not asked once the retries are spent"


def test_zero_retries_still_allows_the_first_attempt() -> None:
    assert choose_node(FakeMapper([A]), KEY, [], None, 0, max_retries=0)[0] is A


def test_after_a_failure_the_fallbacks_are_tried_in_order_and_the_mapper_is_not_asked() -> None:
    mapper = FakeMapper([A, B])
    assert choose_node(mapper, KEY, [A], None, 0, fallbacks=(F1, F2)) == (F1, False)
    assert choose_node(mapper, KEY, [A, F1], None, 0, fallbacks=(F1, F2)) == (F2, False)
    assert choose_node(mapper, KEY, [A, F1, F2], None, 0, fallbacks=(F1, F2)) == (None, False)
    assert mapper.asked == []


def test_the_first_attempt_ignores_the_fallbacks_when_the_mapper_picks() -> None:
    assert choose_node(FakeMapper([A]), KEY, [], None, 0, fallbacks=(F1,), fallback_on_no_key=True)[0] is A


def test_no_pick_on_the_first_attempt_goes_to_the_first_fallback_only_with_fallback_on_no_key() -> None:
    mapper = FakeMapper([])
    assert choose_node(mapper, KEY, [], None, 0, fallbacks=(F1, F2), fallback_on_no_key=True) == (F1, False)
    assert choose_node(mapper, KEY, [], None, 0, fallbacks=(F1, F2)) == (None, False)
    assert choose_node(mapper, KEY, [], None, 0, fallback_on_no_key=True) == (None, False)


def test_no_pick_while_a_node_broke_gives_that_node_again() -> None:
    mapper = FakeMapper([A])
    assert choose_node(mapper, KEY, [A], A, 0) == (A, False)
    assert choose_node(FakeMapper([A, B]), KEY, [A], A, 0)[0] is B, "another node comes first"


def test_cheap_mode_with_no_live_node_gives_the_local_app_once_and_says_so() -> None:
    mapper = FakeMapper([], live=0)
    assert choose_node(mapper, KEY, [], None, 0, cheap=True, local=LOCAL) == (LOCAL, True)
    assert choose_node(mapper, KEY, [LOCAL], None, 0, cheap=True, local=LOCAL) == (None, True)
    assert choose_node(mapper, KEY, [], None, 0, cheap=True) == (None, True), "no local app"


def test_cheap_mode_with_a_live_node_or_off_does_not_go_local() -> None:
    assert choose_node(FakeMapper([], live=1), KEY, [], None, 0, cheap=True, local=LOCAL) == (None, False)
    assert choose_node(FakeMapper([], live=0), KEY, [], None, 0, local=LOCAL) == (None, False)


def test_a_broken_node_comes_before_the_local_app() -> None:
    assert choose_node(FakeMapper([], live=0), KEY, [A], A, 0, cheap=True, local=LOCAL) == (A, False)


def notes() -> LogLimiter:
    return LogLimiter(logging.getLogger("uwsgirouter.router"))


def test_routing_passes_its_settings_to_the_policy() -> None:
    mapper = FakeMapper([A, B])
    routing = Routing(mapper, notes(), fallbacks=[F1], max_retries=1, fallback_on_no_key=True)
    assert routing.fallbacks == (F1,)
    assert routing.choose(KEY, [], None, 3.0) is A
    assert routing.choose(KEY, [A], None, 3.0) is F1
    assert routing.choose(KEY, [A, F1], None, 3.0) is None
    assert routing.choose(b"other", [], None, 4.0) is A and mapper.asked[-1] == (b"other", [], 4.0)
    assert Routing(FakeMapper([]), notes(), fallbacks=[F1], fallback_on_no_key=True).choose(KEY, [], None, 0) is F1
    assert Routing(FakeMapper([]), notes(), fallbacks=[F1]).choose(KEY, [], None, 0) is None


def test_routing_default_retries_are_three() -> None:
    nodes = [node(str(n)) for n in range(6)]
    routing = Routing(FakeMapper(nodes), notes())
    assert routing.choose(KEY, nodes[:3], None, 0) is nodes[3]
    assert routing.choose(KEY, nodes[:4], None, 0) is None


def test_routing_tells_the_worker_when_cheap_mode_finds_no_live_node() -> None:
    told: list[str] = []
    routing = Routing(
        FakeMapper([], live=0), notes(), cheap=True, local=LOCAL, on_no_live_node=lambda: told.append("cheap")
    )
    assert routing.choose(KEY, [], None, 0) is LOCAL
    assert told == ["cheap"]
    routing.mapper = FakeMapper([], live=2)
    assert routing.choose(KEY, [], None, 0) is None
    assert told == ["cheap"], "a live node somewhere: not cheap"
    quiet = Routing(FakeMapper([], live=0), notes(), cheap=True)
    assert quiet.choose(KEY, [], None, 0) is None  # no callback set: nothing to tell


def test_routing_broken_node_is_passed_on() -> None:
    assert Routing(FakeMapper([A]), notes()).choose(KEY, [A], A, 0) is A


def test_a_node_with_one_of_the_routers_own_addresses_is_itself_unless_it_is_the_local_app() -> None:
    own = Node("own", socket.AF_INET, ("127.0.0.1", 3031))
    local = Node("local", socket.AF_INET, ("127.0.0.1", 3031))
    routing = Routing(FakeMapper(), notes(), own_addresses=frozenset({("127.0.0.1", 3031)}), local=local)
    assert routing.is_self(own) is True
    assert routing.is_self(local) is False
    assert routing.is_self(Node("other", socket.AF_INET, ("127.0.0.1", 3032))) is False
    assert Routing(FakeMapper(), notes()).is_self(own) is False


def test_choose_node_allows_three_retries_by_default() -> None:
    nodes = [node(str(n)) for n in range(6)]
    assert choose_node(FakeMapper(nodes), KEY, nodes[:3], None, 0) == (nodes[3], False)
    assert choose_node(FakeMapper(nodes), KEY, nodes[:4], None, 0) == (None, False)
