"""The node table's edges: versions, weights, fields of a new node, and who gives way when it is full.

A full table gives up unused keys: a sender over its share (a quarter of --subscription-max-keys) loses its
own, others take a heavy sender's first, then the oldest unused key; the key being announced never goes.
"""

from __future__ import annotations

from uwsgirouter.protocol import Command, Subscription
from uwsgirouter.subscription.table import Change, NodeTable


def sub(key: bytes = b"example.com", address: bytes = b"127.0.0.1:3031", **kw: object) -> Subscription:
    return Subscription(key=key, address=address, **kw)  # type: ignore[arg-type]


def test_defaults_are_uwsgis() -> None:
    table = NodeTable()
    assert (table.max_nodes, table.max_keys, table.tolerance) == (65536, 65536, 17.0)


def test_a_new_node_keeps_every_announced_field() -> None:
    table = NodeTable()
    table.apply(sub(modifier1=5, modifier2=3, cores=4, load=2, weight=7), now=1, wall=1000, sender=b"10.0.0.1")
    node = table.keys[b"example.com"][0]
    assert (node.modifier1, node.modifier2, node.cores, node.load, node.weight) == (5, 3, 4, 2, 7)
    assert (node.last_seen, node.last_check, node.sender) == (1, 1000, b"10.0.0.1")


def test_the_version_grows_with_every_change_routers_must_see() -> None:
    table = NodeTable()
    versions = [table.version]

    def step(expect_change: bool) -> None:
        versions.append(table.version)
        if expect_change:
            assert versions[-1] > versions[-2]
        else:
            assert versions[-1] == versions[-2]

    table.apply(sub(weight=2), 0, 0)
    step(True)
    table.apply(sub(weight=2, cores=8), 1, 1)  # a refresh routers need not see
    step(False)
    table.apply(sub(weight=0), 2, 2)  # weight 0 counts as 1: a change
    step(True)
    assert table.keys[b"example.com"][0].weight == 1
    table.apply(sub(weight=1), 3, 3)
    step(False)
    table.mark_failed(b"example.com", b"127.0.0.1:3031")
    step(True)
    assert table.apply(sub(weight=1), 4, 4) is Change.REVIVED
    step(True)
    assert table.keys[b"example.com"][0].death_mark is False
    table.apply(sub(command=Command.UNSUBSCRIBE), 5, 5)
    step(True)


def test_failures_are_counted_and_unknown_keys_are_not_failed() -> None:
    table = NodeTable()
    table.apply(sub(), 0, 0)
    assert table.mark_failed(b"example.com", b"127.0.0.1:3031") is True
    assert table.mark_failed(b"example.com", b"127.0.0.1:3031") is False
    assert table.keys[b"example.com"][0].failcnt == 2
    assert table.mark_failed(b"other.com", b"127.0.0.1:3031") is False


def test_the_key_being_announced_never_gives_way_to_its_own_node() -> None:
    table = NodeTable(max_nodes=2, max_keys=100)
    table.apply(sub(key=b"a", address=b"x:1"), 0, 0, b"s")
    table.apply(sub(key=b"b", address=b"x:1"), 0, 0, b"s")
    assert table.apply(sub(key=b"a", address=b"x:2"), 0, 0, b"s") is Change.ADDED
    assert list(table.keys) == [b"a"] and [n.address for n in table.keys[b"a"]] == [b"x:1", b"x:2"]
    assert table.displaced == 1


def test_a_sender_over_its_share_with_nothing_else_of_its_own_to_give_is_refused() -> None:
    table = NodeTable(max_nodes=1, max_keys=4)  # share: 1 key
    table.apply(sub(key=b"a", address=b"x:1"), 0, 0, b"s")
    assert table.apply(sub(key=b"a", address=b"x:2"), 0, 0, b"s") is Change.FULL
    table.mark_used(b"a")  # now it has no unused key at all
    assert table.apply(sub(key=b"b", address=b"x:1"), 0, 0, b"s") is Change.FULL
    assert list(table.keys) == [b"a"] and table.displaced == 0


def test_a_sender_at_exactly_its_share_loses_its_own_oldest_key() -> None:
    table = NodeTable(max_nodes=100, max_keys=4)  # share: 1 key
    for key in (b"a", b"c", b"f"):
        table.apply(sub(key=key, address=b"x:1"), 0, 0, b"h1")
    table.apply(sub(key=b"b", address=b"x:1"), 0, 0, b"h2")
    assert table.apply(sub(key=b"e", address=b"x:1"), 0, 0, b"h2") is Change.ADDED
    assert list(table.keys) == [b"a", b"c", b"f", b"e"]
    assert table.displaced == 1


def test_a_sender_at_exactly_its_share_is_heavy_and_gives_way_first() -> None:
    table = NodeTable(max_nodes=100, max_keys=8)  # share: 2 keys
    for number in range(6):
        table.apply(sub(key=b"u%d" % number, address=b"x:1"), 0, 0, b"u%d" % number)
    table.apply(sub(key=b"a", address=b"x:1"), 0, 0, b"h")
    table.apply(sub(key=b"b", address=b"x:1"), 0, 0, b"h")
    assert list(table.heavy) == [b"h"]
    assert table.apply(sub(key=b"z", address=b"x:1"), 0, 0, b"n") is Change.ADDED
    assert b"a" not in table.keys and b"u0" in table.keys


def test_a_heavy_senders_key_being_announced_by_another_sender_stays() -> None:
    table = NodeTable(max_nodes=2, max_keys=4)  # share: 1 key
    table.apply(sub(key=b"x", address=b"n:1"), 0, 0, b"h")
    table.apply(sub(key=b"y", address=b"n:1"), 0, 0, b"h")
    assert table.apply(sub(key=b"x", address=b"n:2"), 0, 0, b"t") is Change.ADDED
    assert list(table.keys) == [b"x"] and len(table.keys[b"x"]) == 2


def test_a_heavy_sender_whose_keys_are_all_used_is_passed_over() -> None:
    table = NodeTable(max_nodes=100, max_keys=4)  # share: 1 key
    table.apply(sub(key=b"h1", address=b"n:1"), 0, 0, b"h")
    table.apply(sub(key=b"h2", address=b"n:1"), 0, 0, b"h")
    table.mark_used(b"h1")
    table.remove(b"h2", b"n:1")  # its last unused key gone: h has no unused keys left at all
    for key in (b"o1", b"o2", b"o3"):
        table.apply(sub(key=key, address=b"n:1"), 0, 0, key)
    for key in (b"o1", b"o2"):
        table.mark_used(key)
    assert table.apply(sub(key=b"new", address=b"n:1"), 0, 0, b"t") is Change.ADDED
    assert list(table.keys) == [b"h1", b"o1", b"o2", b"new"]
    assert table.apply(sub(key=b"newer", address=b"n:1"), 0, 0, b"h") is Change.FULL


def test_displacements_are_counted() -> None:
    table = NodeTable(max_nodes=100, max_keys=2)
    for key in (b"a", b"b", b"c", b"d"):
        table.apply(sub(key=key, address=b"n:1"), 0, 0)
    assert list(table.keys) == [b"c", b"d"] and table.displaced == 2


def test_key_counts_and_heaviness_follow_removals() -> None:
    table = NodeTable(max_nodes=100, max_keys=4)  # share: 1 key
    table.apply(sub(key=b"a", address=b"n:1"), 0, 0, b"h")
    table.apply(sub(key=b"b", address=b"n:1"), 0, 0, b"h")
    table.remove(b"a", b"n:1")
    assert table.keys_of == {b"h": 1}
    assert list(table.heavy) == [b"h"], "at exactly its share it is still heavy"
    table.remove(b"b", b"n:1")
    assert table.keys_of == {} and table.heavy == {}


def test_a_used_key_is_removed_cleanly() -> None:
    table = NodeTable()
    table.apply(sub(key=b"a", address=b"n:1"), 0, 0, b"s")
    table.apply(sub(key=b"b", address=b"n:1"), 0, 0, b"s")
    table.mark_used(b"a")
    assert table.remove(b"a", b"n:1") is Change.REMOVED
    assert table.keys_of == {b"s": 1} and list(table.unused) == [b"b"] and table.unused_of == {b"s": {b"b": None}}
