"""The subscription mapper's edges, in process: images adopted once, pools reused, dotsplit's five lookups,
lrc and wlrc, in-flight references, the reports to the master, and live-node counting for cheap mode."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from uwsgirouter.protocol import Command, Subscription
from uwsgirouter.router.mappers import SubscriptionMapper
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.subscription.table import NodeTable

KEY = b"example.com"


def sub(key: bytes = KEY, address: bytes = b"127.0.0.1:3031", **kw: object) -> Subscription:
    return Subscription(key=key, address=address, **kw)  # type: ignore[arg-type]


def table_of(*addresses: bytes, key: bytes = KEY, **kw: object) -> NodeTable:
    table = NodeTable()
    for address in addresses:
        table.apply(sub(key=key, address=address, **kw), 0, 0)
    return table


class Image:
    """A published image and a mapper reading it."""

    def __init__(self, table: NodeTable, counters: dict[str, int] | None = None, **kwargs: Any) -> None:
        self.image = TableImage(1 << 20)
        self.publish(table, counters)
        self.mapper = SubscriptionMapper(self.image, **kwargs)

    def publish(self, table: NodeTable, counters: dict[str, int] | None = None) -> None:
        assert self.image.publish((table.snapshot(), counters or {}))


class Reports:
    """Stands in for the worker's report socket; fails the sends it is told to."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[bytes] = []
        self.failures = failures

    def send(self, data: bytes) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError("no buffer space")
        self.sent.append(data)
        return len(data)


def pick(mapper: SubscriptionMapper, key: bytes = KEY, tried: tuple[Node, ...] = ()) -> Node:
    node = mapper.pick(key, tried, 0)
    assert node is not None
    return node


def test_nothing_published_routes_nothing() -> None:
    mapper = SubscriptionMapper(TableImage(1 << 16))
    assert mapper.refresh() is False
    assert mapper.pick(KEY, (), 0) is None
    assert mapper.live_nodes() == 0
    assert mapper.counters == {} and mapper.all_pools() == {}


def test_an_image_is_adopted_once() -> None:
    published = Image(table_of(b"127.0.0.1:1"), counters={"announces": 3})
    mapper = published.mapper
    assert mapper.refresh() is True
    assert mapper.counters == {"announces": 3}
    assert mapper.refresh() is False
    published.publish(table_of(b"127.0.0.1:1"))
    assert mapper.refresh() is True
    assert mapper.refresh() is False


def test_an_unchanged_pool_is_reused_with_its_nodes_and_hits() -> None:
    table = table_of(b"127.0.0.1:1")
    published = Image(table)
    first = pick(published.mapper)
    pick(published.mapper)
    published.publish(table)  # a new image, the same entries
    assert pick(published.mapper) is first
    assert published.mapper.all_pools()[KEY].hits == 3


def test_nodes_carry_the_announced_modifiers_and_a_change_makes_a_new_node() -> None:
    table = table_of(b"127.0.0.1:1", modifier1=5, modifier2=3)
    published = Image(table)
    node = pick(published.mapper)
    assert (node.modifier1, node.modifier2) == (5, 3)
    table.apply(sub(address=b"127.0.0.1:1", command=Command.UNSUBSCRIBE), 1, 1)
    table.apply(sub(address=b"127.0.0.1:1", modifier1=6, modifier2=3), 1, 1)
    published.publish(table)
    again = pick(published.mapper)
    assert again is not node and (again.modifier1, again.modifier2) == (6, 3)


def test_a_node_name_that_is_not_utf8_is_kept_byte_for_byte() -> None:
    reports = Reports()
    published = Image(table_of(b"/tmp/\xff.sock"), report=reports)
    node = pick(published.mapper)
    assert node.name == "/tmp/\udcff.sock" and node.sockaddr == b"/tmp/\xff.sock"
    published.mapper.failed(node, 0)
    assert reports.sent[-1] == KEY + b"\0/tmp/\xff.sock"


def test_an_unusable_node_is_left_out_and_the_others_serve() -> None:
    published = Image(table_of(b"127.0.0.1:99999", b"127.0.0.1:2"))
    assert [pick(published.mapper).name for _ in range(2)] == ["127.0.0.1:2"] * 2


def test_a_subscribed_host_name_is_never_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/differences.md, "Node host names": a name from a subscription would block the router on DNS."""

    def no_lookup(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"the router looked up {args[0]!r}")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    published = Image(table_of(b"localhost:3031", b"127.0.0.1:2"))
    assert [pick(published.mapper).name for _ in range(3)] == ["127.0.0.1:2"] * 3
    with pytest.raises(ValueError, match="'localhost' is not a numeric address"):
        make_node("localhost:3031")


def test_the_stats_details_and_dead_marks_come_from_the_table() -> None:
    table = table_of(b"127.0.0.1:1", b"127.0.0.1:2", cores=4, load=2)
    table.mark_failed(KEY, b"127.0.0.1:1")
    published = Image(table)
    assert [pick(published.mapper).name for _ in range(3)] == ["127.0.0.1:2"] * 3
    pool = published.mapper.all_pools()[KEY]
    details = [pool.details[node] for node in pool.nodes]
    assert [d[:2] for d in details] == [[4, 2], [4, 2]] and [d[3] for d in details] == [1, 0]
    assert published.mapper.live_nodes() == 1


def test_stats_are_uwsgis_subscriptions_with_the_masters_counters() -> None:
    table = NodeTable()
    table.apply(sub(address=b"127.0.0.1:1", modifier1=5, modifier2=2, cores=4, load=2, weight=3), 0, 1234.9)
    table.apply(sub(address=b"127.0.0.1:2", weight=1), 0, 1000)
    table.apply(sub(key=b"\xff.example", address=b"127.0.0.1:3"), 0, 1000)
    table.keys[KEY][0].failcnt = 7  # the master's count (every router's reports)
    published = Image(table, counters={"rejected": 3, "displaced": 2, "announces": 9})
    mapper = published.mapper
    one = pick(mapper)
    assert pick(mapper) is one  # smooth wrr, weights 3 and 1: one, one
    mapper.done(one)  # one of its two sessions is over
    two = next(node for node in mapper.all_pools()[KEY].nodes if node is not one)
    two.stats.failures = 5  # this router's own count is larger than the master's
    mapper.failed(two, 0)
    one.stats.hits, one.stats.bytes_from_node, one.stats.bytes_to_node = 9, 100, 50
    doc = mapper.stats()
    assert list(doc) == ["subscriptions", "subscription_packets_rejected", "subscription_keys_displaced"]
    assert doc["subscription_packets_rejected"] == 3 and doc["subscription_keys_displaced"] == 2
    first, second = doc["subscriptions"]
    assert list(first) == ["key", "hash", "hits", "sni_enabled", "nodes"]
    assert {k: v for k, v in first.items() if k != "nodes"} == {
        "key": "example.com",
        "hash": 30778,
        "hits": 2,
        "sni_enabled": 0,
    }
    fields = ["name", "modifier1", "modifier2", "last_check", "pid", "uid", "gid", "requests", "last_requests"]
    fields += ["tx", "rx", "cores", "load", "weight", "wrr", "ref", "failcnt", "death_mark"]
    assert [list(node) for node in first["nodes"]] == [fields, fields]
    assert [list(node.values()) for node in first["nodes"]] == [
        ["127.0.0.1:1", 5, 2, 1234, 0, 0, 0, 9, 0, 100, 50, 4, 2, 3, -2, 1, 7, 0],
        ["127.0.0.1:2", 0, 0, 1000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 5, 1],
    ]
    # a key that is not UTF-8 is shown with replacement characters; a pool never picked has no balancing state
    assert (second["key"], second["hash"], second["hits"]) == ("\ufffd.example", 34161, 0)
    assert [(node["wrr"], node["ref"], node["failcnt"], node["death_mark"]) for node in second["nodes"]] == [
        (0, 0, 0, 0)
    ]


def test_stats_read_the_newest_image_and_count_nothing_without_counters() -> None:
    published = Image(table_of(b"127.0.0.1:1"))
    doc = published.mapper.stats()
    assert [entry["key"] for entry in doc["subscriptions"]] == ["example.com"]
    assert (doc["subscription_packets_rejected"], doc["subscription_keys_displaced"]) == (0, 0)
    published.publish(table_of(b"127.0.0.1:1", key=b"other.example"), counters={"rejected": 1})
    doc = published.mapper.stats()  # no request came in between: the stats themselves adopt the new image
    assert [entry["key"] for entry in doc["subscriptions"]] == ["other.example"]
    assert doc["subscription_packets_rejected"] == 1


def test_live_nodes_counts_nodes_not_marked_dead_once_each() -> None:
    table = table_of(b"127.0.0.1:1", b"127.0.0.1:2", b"127.0.0.1:3")
    table.apply(sub(key=b"other.com", address=b"127.0.0.1:1"), 0, 0)
    table.mark_failed(KEY, b"127.0.0.1:3")
    published = Image(table)
    mapper = published.mapper
    assert mapper.live_nodes() == 3
    node = pick(mapper)
    mapper.failed(node, 0)
    assert mapper.live_nodes() == 2
    mapper.failed(node, 0)  # already dead: counted once
    assert mapper.live_nodes() == 2


def test_a_key_that_has_its_own_pool_does_not_use_the_fallback() -> None:
    table = table_of(b"127.0.0.1:1")
    table.apply(sub(key=b"fallback", address=b"127.0.0.1:9"), 0, 0)
    mapper = Image(table, fallback_key=b"fallback").mapper
    assert pick(mapper).name == "127.0.0.1:1"
    assert pick(mapper, b"unknown.org").name == "127.0.0.1:9"


def test_dotsplit_looks_up_the_key_and_four_shorter_ones() -> None:
    table = table_of(b"127.0.0.1:1", key=b".e.example.com")
    table.apply(sub(key=b".example.com", address=b"127.0.0.1:2"), 0, 0)
    mapper = Image(table, dotsplit=True).mapper
    assert pick(mapper, b"a.example.com").name == "127.0.0.1:2"
    assert pick(mapper, b"a.b.c.d.e.example.com").name == "127.0.0.1:1"  # the 5th lookup
    assert mapper.pick(b"a.b.c.d.x.y.example.com", (), 0) is None  # .example.com would be the 7th


def test_hits_and_the_in_use_report_are_per_key_and_retried_until_sent() -> None:
    reports = Reports(failures=1)
    mapper = Image(table_of(b"127.0.0.1:1"), report=reports).mapper
    for _ in range(3):
        pick(mapper)
    assert reports.sent == [b"\0" + KEY], "the failed report was sent again with the next request, then never"
    assert mapper.all_pools()[KEY].hits == 3


def test_a_failure_is_marked_in_the_pool_that_holds_the_node_and_a_lost_report_is_no_error() -> None:
    table = table_of(b"127.0.0.1:1")
    table.apply(sub(key=b"other.example", address=b"127.0.0.1:2"), 0, 0)
    table.apply(sub(key=b"other.example", address=b"127.0.0.1:3"), 0, 0)
    reports = Reports()
    mapper = Image(table, report=reports).mapper
    pick(mapper)  # example.com's pool is built first: the failed node is not in it
    node = pick(mapper, b"other.example")
    reports.failures = 1
    mapper.failed(node, 0)  # the report is lost (the master expires the node on its own)
    assert node in mapper.all_pools()[b"other.example"].dead and mapper.live_nodes() == 2
    mapper.failed(node, 0)
    assert reports.sent == [b"\0" + KEY, b"\0other.example", b"other.example\0" + node.name.encode()]
    assert mapper.live_nodes() == 2


def test_a_failure_of_a_node_no_pool_holds_marks_nothing() -> None:
    reports = Reports()
    published = Image(table_of(b"127.0.0.1:1", b"127.0.0.1:2"), report=reports)
    mapper = published.mapper
    gone = pick(mapper)
    published.publish(table_of(b"127.0.0.1:2"))  # the node leaves the table while its session connects
    pick(mapper)
    mapper.failed(gone, 0)
    assert reports.sent == [b"\0" + KEY]  # nothing to report: the node is no longer announced
    assert mapper.live_nodes() == 1 and not mapper.all_pools()[KEY].dead


def test_references_and_requests_per_node() -> None:
    mapper = Image(table_of(b"127.0.0.1:1")).mapper
    node = pick(mapper)
    pick(mapper)
    assert mapper.references == {node: 2} and mapper.requests == {node: 2}
    mapper.done(node)
    assert mapper.references == {node: 1}
    mapper.failed(node, 0)  # the session moves on: its reference goes too
    assert mapper.references == {} and mapper.requests == {node: 2}


def test_a_node_that_leaves_the_table_is_forgotten() -> None:
    table = table_of(b"127.0.0.1:1", b"127.0.0.1:2")
    published = Image(table)
    mapper = published.mapper
    gone = pick(mapper)
    pick(mapper)
    table.apply(sub(address=gone.name.encode(), command=Command.UNSUBSCRIBE), 1, 1)
    published.publish(table)
    pick(mapper)
    assert gone not in mapper.current and gone not in mapper.requests
    table.apply(sub(key=b"other.com", address=b"127.0.0.1:3"), 1, 1)
    table.apply(sub(command=Command.UNSUBSCRIBE, address=b"127.0.0.1:1"), 1, 1)
    table.apply(sub(command=Command.UNSUBSCRIBE, address=b"127.0.0.1:2"), 1, 1)
    published.publish(table)
    assert mapper.pick(KEY, (), 0) is None
    assert mapper.current == {} and mapper.requests == {}


def test_lrc_ties_go_to_the_node_with_fewer_requests() -> None:
    mapper = Image(table_of(b"127.0.0.1:1", b"127.0.0.1:2"), algo="lrc").mapper
    one = pick(mapper)
    mapper.done(one)
    two = pick(mapper)
    assert two is not one
    mapper.done(two)
    assert pick(mapper) is one  # 1 request each: the first of the least
    mapper.done(one)
    assert pick(mapper) is two  # one has 2 requests, two has 1


def test_wlrc_divides_in_flight_sessions_by_weight_and_lrc_does_not() -> None:
    table = NodeTable()
    table.apply(sub(address=b"127.0.0.1:1", weight=1), 0, 0)
    table.apply(sub(address=b"127.0.0.1:3", weight=3), 0, 0)
    for algo, third in (("wlrc", "127.0.0.1:3"), ("lrc", "127.0.0.1:1")):
        mapper = Image(table, algo=algo).mapper
        first, second = pick(mapper), pick(mapper)
        assert {first.name, second.name} == {"127.0.0.1:1", "127.0.0.1:3"}
        # one session on each: wlrc sees 1/1 against 1/3, lrc a tie broken by requests (1 each: the first)
        assert pick(mapper).name == third, algo


def test_a_node_that_joins_starts_even_in_smooth_wrr() -> None:
    table = table_of(b"127.0.0.1:1", b"127.0.0.1:2")
    published = Image(table)
    mapper = published.mapper
    assert [pick(mapper).name for _ in range(2)] == ["127.0.0.1:1", "127.0.0.1:2"]  # a whole cycle: even again
    table.apply(sub(address=b"127.0.0.1:3"), 1, 1)
    published.publish(table)
    assert [pick(mapper).name for _ in range(3)] == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]


def test_nodes_never_picked_are_forgotten_too() -> None:
    table = table_of(b"127.0.0.1:1", b"127.0.0.1:2")
    published = Image(table, algo="lrc")
    pick(published.mapper)
    for address in (b"127.0.0.1:1", b"127.0.0.1:2"):
        table.apply(sub(address=address, command=Command.UNSUBSCRIBE), 1, 1)
    published.publish(table)
    assert published.mapper.pick(KEY, (), 0) is None
    assert published.mapper.requests == {}
