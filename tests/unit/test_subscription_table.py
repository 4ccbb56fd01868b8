"""The node table as pure logic (time passed in), its shared-memory image, and the balancing."""

from __future__ import annotations

import multiprocessing
from collections import Counter

import pytest

from uwsgirouter.protocol import Command, Subscription
from uwsgirouter.router.mappers import SubscriptionMapper
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.subscription.table import Change, NodeTable


def sub(key: bytes = b"example.com", address: bytes = b"127.0.0.1:3031", **kw: object) -> Subscription:
    return Subscription(key=key, address=address, **kw)  # type: ignore[arg-type]


def test_subscribe_refresh_and_unsubscribe() -> None:
    table = NodeTable()
    assert table.apply(sub(weight=0), now=1, wall=1000) is Change.ADDED
    assert table.keys[b"example.com"][0].weight == 1, "weight 0 counts as 1"
    assert table.apply(sub(cores=4, load=2), now=5, wall=1004) is Change.REFRESHED
    node = table.keys[b"example.com"][0]
    assert (node.cores, node.load, node.last_seen, node.last_check) == (4, 2, 5, 1004)
    assert table.apply(sub(command=Command.UNSUBSCRIBE), now=6, wall=1005) is Change.REMOVED
    assert not table.keys and table.node_count == 0
    assert table.apply(sub(command=Command.UNSUBSCRIBE), now=6, wall=1005) is Change.UNKNOWN


def test_modifiers_stay_as_first_announced_like_uwsgi() -> None:
    table = NodeTable()
    table.apply(sub(modifier1=5), now=1, wall=1)
    table.apply(sub(modifier1=6), now=2, wall=2)
    assert table.keys[b"example.com"][0].modifier1 == 5


def test_nodes_keep_arrival_order_and_identity_is_the_exact_address() -> None:
    table = NodeTable()
    for address in (b"127.0.0.1:2", b"127.0.0.1:1", b"127.0.0.1:1 "):
        table.apply(sub(address=address), now=1, wall=1)
    assert [n.address for n in table.keys[b"example.com"]] == [b"127.0.0.1:2", b"127.0.0.1:1", b"127.0.0.1:1 "]


def test_expiry_runs_on_the_timer_after_the_tolerance() -> None:
    table = NodeTable(tolerance=17)
    table.apply(sub(address=b"a:1"), now=0, wall=0)
    table.apply(sub(address=b"b:1"), now=10, wall=10)
    assert [n.address for n in table.expire(now=17)] == []
    assert [n.address for n in table.expire(now=17.5)] == [b"a:1"]
    assert [n.address for n in table.expire(now=28)] == [b"b:1"]
    assert not table.keys


def test_death_mark_until_the_next_announce() -> None:
    table = NodeTable()
    table.apply(sub(), now=0, wall=0)
    version = table.version
    assert table.mark_failed(b"example.com", b"127.0.0.1:3031")
    assert table.version > version
    assert table.live_count() == 0
    assert not table.mark_failed(b"example.com", b"127.0.0.1:3031"), "already dead"
    assert table.apply(sub(), now=1, wall=1) is Change.REVIVED
    assert table.live_count() == 1


def test_a_full_table_refuses_only_when_every_key_is_in_use() -> None:
    table = NodeTable(max_nodes=3, max_keys=2)
    assert table.apply(sub(key=b"a", address=b"x:1"), 0, 0) is Change.ADDED
    assert table.apply(sub(key=b"b", address=b"x:1"), 0, 0) is Change.ADDED
    table.mark_used(b"a")
    table.mark_used(b"b")
    assert table.apply(sub(key=b"c", address=b"x:1"), 0, 0) is Change.FULL
    assert table.apply(sub(key=b"a", address=b"x:2"), 0, 0) is Change.ADDED
    assert table.apply(sub(key=b"a", address=b"x:3"), 0, 0) is Change.FULL
    assert table.apply(sub(key=b"a", address=b"x:1"), 1, 1) is Change.REFRESHED
    assert set(table.keys) == {b"a", b"b"} and table.node_count == 3 and table.displaced == 0


def test_a_full_table_gives_up_the_oldest_unused_key_for_a_new_one() -> None:
    table = NodeTable(max_nodes=100, max_keys=3)
    for key in (b"old", b"used", b"newer"):
        table.apply(sub(key=key, address=b"x:1"), 0, 0, b"10.0.0.1")
    table.mark_used(b"used")
    version = table.version
    assert table.apply(sub(key=b"fresh", address=b"x:1"), 0, 0, b"10.0.0.2") is Change.ADDED
    assert list(table.keys) == [b"used", b"newer", b"fresh"], "the oldest key no request used is given up"
    assert table.displaced == 1 and table.node_count == 3 and table.version > version
    assert table.apply(sub(key=b"fresher", address=b"x:1"), 0, 0, b"10.0.0.3") is Change.ADDED
    assert list(table.keys) == [b"used", b"fresh", b"fresher"]
    assert b"used" in table.keys, "a key that carried requests is never given up"


def test_a_sender_over_its_share_only_displaces_its_own_keys() -> None:
    table = NodeTable(max_nodes=100, max_keys=8)  # a share is 8 * 0.25 = 2 keys
    table.apply(sub(key=b"legit-1", address=b"x:1"), 0, 0, b"10.0.0.1")
    for number in range(7):
        table.apply(sub(key=b"flood-%d" % number, address=b"x:1"), 0, 0, b"10.0.0.66")
    # The flooder holds 7 of 8 keys: its next key displaces its own oldest, never legit-1.
    for number in range(7, 50):
        assert table.apply(sub(key=b"flood-%d" % number, address=b"x:1"), 0, 0, b"10.0.0.66") is Change.ADDED
    assert b"legit-1" in table.keys and len(table.keys) == 8
    # Another sender's new key displaces the oldest unused key, the flooder's.
    assert table.apply(sub(key=b"legit-2", address=b"x:1"), 0, 0, b"10.0.0.2") is Change.ADDED
    assert {b"legit-1", b"legit-2"} <= set(table.keys) and len(table.keys) == 8
    assert table.keys_of == {b"10.0.0.1": 1, b"10.0.0.2": 1, b"10.0.0.66": 6}


def test_a_full_node_table_displaces_unused_keys_and_its_bookkeeping_stays_consistent() -> None:
    table = NodeTable(max_nodes=4, max_keys=100)
    table.apply(sub(key=b"a", address=b"x:1"), 0, 0, b"s")
    table.apply(sub(key=b"a", address=b"x:2"), 0, 0, b"s")
    table.apply(sub(key=b"b", address=b"x:1"), 0, 0, b"s")
    table.apply(sub(key=b"c", address=b"x:1"), 0, 0, b"s")
    table.mark_used(b"c")
    assert table.apply(sub(key=b"c", address=b"x:2"), 0, 0, b"t") is Change.ADDED
    assert list(table.keys) == [b"b", b"c"] and table.node_count == 3, "unused key a and its two nodes gave way"
    table.remove(b"b", b"x:1")
    table.expire(now=100)
    assert not table.keys and table.node_count == 0
    assert not table.unused and not table.unused_of and not table.keys_of and not table.owner and not table.heavy


def published(table: NodeTable, **kwargs: object) -> SubscriptionMapper:
    image = TableImage(1 << 20)
    assert image.publish((table.snapshot(), {}))
    return SubscriptionMapper(image, **kwargs)  # type: ignore[arg-type]


def test_smooth_wrr_gives_exact_weights() -> None:
    table = NodeTable()
    table.apply(sub(address=b"127.0.0.1:1", weight=1), 0, 0)
    table.apply(sub(address=b"127.0.0.1:2", weight=3), 0, 0)
    mapper = published(table)
    picks: Counter[str] = Counter()
    for _ in range(400):
        node = mapper.pick(b"example.com", (), 0)
        assert node is not None
        picks[node.name] += 1
        mapper.done(node)
    assert picks == {"127.0.0.1:1": 100, "127.0.0.1:2": 300}


def wrr_picks(weights: dict[str, int], count: int) -> list[str]:
    """``count`` picks of the smooth wrr over nodes announced in the order of ``weights`` (name -> weight)."""
    table = NodeTable()
    for name, weight in weights.items():
        table.apply(sub(address=name.encode(), weight=weight), 0, 0)
    mapper = published(table)
    names = []
    for _ in range(count):
        node = mapper.pick(b"example.com", (), 0)
        assert node is not None
        names.append(node.name)
        mapper.done(node)
    return names


# Derived by hand with nginx's smooth weighted round robin: each pick adds every node's weight to its
# current value, takes the largest (the first announced on a tie) and subtracts the total from it.
# Weights a=2, b=3, c=6 (total 11), current values (a, b, c) before each pick, after adding the weights:
#   (2,3,6)->c  (4,6,1)->b  (6,-2,7)->c  (8,1,2)->a  (-1,4,8)->c  (1,7,3)->b
#   (3,-1,9)->c  (5,2,4)->a  (-4,5,10)->c  (-2,8,5)->b  (0,0,11)->c, and every value is 0 again.
CYCLE_2_3_6 = ["c", "b", "c", "a", "c", "b", "c", "a", "c", "b", "c"]
# Weights a=5, b=1, c=1 (total 7): (5,1,1)->a (3,2,2)->a (1,3,3)->b (6,-3,4)->a (4,-2,5)->c (9,-1,-1)->a
# (7,0,0)->a, and every value is 0 again: nginx's well-known {a, a, b, a, c, a, a}.
CYCLE_5_1_1 = ["a", "a", "b", "a", "c", "a", "a"]


@pytest.mark.parametrize(
    ("weights", "cycle"),
    [({"a": 2, "b": 3, "c": 6}, CYCLE_2_3_6), ({"a": 5, "b": 1, "c": 1}, CYCLE_5_1_1)],
    ids=["2:3:6", "5:1:1"],
)
def test_smooth_wrr_counts_exact_weights_per_cycle_and_interleaves(weights: dict[str, int], cycle: list[str]) -> None:
    cycles = 4
    picks = wrr_picks(weights, len(cycle) * cycles)
    assert picks == cycle * cycles, "smooth wrr order, the same in every cycle"
    for number in range(cycles):
        one = picks[number * len(cycle) : (number + 1) * len(cycle)]
        assert Counter(one) == weights, f"cycle {number}: each node exactly its weight"


def test_equal_weights_alternate() -> None:
    table = NodeTable()
    table.apply(sub(address=b"127.0.0.1:1"), 0, 0)
    table.apply(sub(address=b"127.0.0.1:2"), 0, 0)
    mapper = published(table)
    names = [mapper.pick(b"example.com", (), 0).name for _ in range(4)]  # type: ignore[union-attr]
    assert names in (["127.0.0.1:1", "127.0.0.1:2"] * 2, ["127.0.0.1:2", "127.0.0.1:1"] * 2)


@pytest.mark.parametrize("algo", ["lrc", "wlrc"])
def test_least_reference_prefers_idle_nodes(algo: str) -> None:
    table = NodeTable()
    table.apply(sub(address=b"127.0.0.1:1"), 0, 0)
    table.apply(sub(address=b"127.0.0.1:2"), 0, 0)
    mapper = published(table, algo=algo)
    first = mapper.pick(b"example.com", (), 0)
    second = mapper.pick(b"example.com", (), 0)
    assert first is not None and second is not None and first is not second
    mapper.done(first)
    assert mapper.pick(b"example.com", (), 0) is first


def test_dead_and_tried_nodes_are_skipped_and_failures_are_reported() -> None:
    import socket

    table = NodeTable()
    table.apply(sub(address=b"127.0.0.1:1"), 0, 0)
    table.apply(sub(address=b"127.0.0.1:2"), 0, 0)
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with master_end, worker_end:
        mapper = published(table, report=worker_end)
        node = mapper.pick(b"example.com", (), 0)
        assert node is not None
        assert master_end.recv(600) == b"\0example.com", "the first request by a key reports it in use"
        mapper.failed(node, 0)
        assert master_end.recv(600) == b"example.com\0" + node.name.encode()
        other = mapper.pick(b"example.com", (), 0)
        assert other is not None and other is not node
        assert mapper.pick(b"example.com", (other,), 0) is None


def test_dotsplit_and_fallback_key() -> None:
    table = NodeTable()
    table.apply(sub(key=b".example.com"), 0, 0)
    table.apply(sub(key=b"fallback", address=b"127.0.0.1:9"), 0, 0)
    split = published(table, dotsplit=True)
    assert split.pick(b"a.b.example.com", (), 0) is not None
    assert split.pick(b"example.com", (), 0) is None, "plain example.com does not match .example.com"
    plain = published(table, fallback_key=b"fallback")
    node = plain.pick(b"unknown.org", (), 0)
    assert node is not None and node.name == "127.0.0.1:9"


def test_state_survives_a_new_image() -> None:
    table = NodeTable()
    table.apply(sub(address=b"127.0.0.1:1"), 0, 0)
    image = TableImage(1 << 20)
    image.publish((table.snapshot(), {}))
    mapper = SubscriptionMapper(image)
    node = mapper.pick(b"example.com", (), 0)
    assert node is not None
    table.apply(sub(address=b"127.0.0.1:2"), 0, 0)
    image.publish((table.snapshot(), {}))
    again = mapper.pick(b"example.com", (node,), 0)
    assert again is not None and again.name == "127.0.0.1:2"
    assert node in mapper.all_pools()[b"example.com"].nodes, "the same Node object is kept"


def test_an_image_too_large_is_refused() -> None:
    table = NodeTable()
    table.apply(sub(address=b"x" * 200), 0, 0)
    assert not TableImage(64).publish((table.snapshot(), {}))


def _reader(image: TableImage, rounds: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    torn = 0
    seen = 0
    for _ in range(rounds):
        result = image.read()
        if result is None:
            continue
        _, (snapshot, _counters) = result
        seen += 1
        for key, nodes in snapshot:
            # every snapshot the writer publishes has n nodes for key b"k<n>" with addresses "<n>:<i>"
            n = int(key[1:])
            if len(nodes) != n or any(address != f"{n}:{i}".encode() for i, (address, *_) in enumerate(nodes)):
                torn += 1
    queue.put((seen, torn))


def test_a_concurrent_reader_never_sees_a_torn_image() -> None:
    image = TableImage(1 << 16)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    reader = context.Process(target=_reader, args=(image, 20000, queue))
    reader.start()
    try:
        for round_ in range(20000):
            n = 1 + round_ % 50
            image.publish(([(f"k{n}".encode(), [(f"{n}:{i}".encode(), 0, 0, 1, False) for i in range(n)])], {}))
        seen, torn = queue.get(timeout=60)
    finally:
        reader.join(10)
        if reader.is_alive():
            reader.kill()
    assert seen > 0
    assert torn == 0
