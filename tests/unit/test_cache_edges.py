"""The shared cache's edges: exact limits and messages, the item in slot 0, keys of exactly --keysize,
deadlines in the past, the earliest deadline kept for the sweeper, and which lock each operation takes."""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator

import pytest

from uwsgirouter import cache as cache_module
from uwsgirouter.cache import INT64_MAX, INT64_MIN, MAX_KEYSIZE, Cache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def full(clock: Clock) -> Iterator[Cache]:
    """A 10-item cache holding its 9 items: the last one set, k8, went to slot 0."""
    c = Cache("full", 10, blocksize=16, keysize=8, clock=clock)
    try:
        assert all(c.set(b"k%d" % i, b"v%d" % i) for i in range(9))
        yield c
    finally:
        c.close()


def test_geometry_limits_and_messages() -> None:
    for kwargs, message in (
        ({"items": 0}, "cache 'x': items must be 1..4294967294"),
        ({"items": 10, "blocksize": 0}, "cache 'x': blocksize must be at least 1"),
        ({"items": 10, "keysize": 0}, f"cache 'x': keysize must be 1..{MAX_KEYSIZE}"),
        ({"items": 10, "keysize": MAX_KEYSIZE + 1}, f"cache 'x': keysize must be 1..{MAX_KEYSIZE}"),
    ):
        with pytest.raises(ValueError) as info:
            Cache("x", **kwargs)  # type: ignore[arg-type]
        assert str(info.value) == message
    for kwargs in ({"blocksize": 1, "keysize": 1}, {"keysize": MAX_KEYSIZE}):
        c = Cache("x", 3, **kwargs)  # type: ignore[arg-type]
        try:
            key = b"k" * c.keysize
            assert c.set(key, b"v") and c.get(key) == b"v"
        finally:
            c.close()


def test_the_item_in_slot_0_is_an_item_like_the_others(full: Cache) -> None:
    assert full.exists(b"k8") is True
    assert full.inc(b"k8") is True  # not a number: its bytes, padded to 8, read as one
    assert full.num(b"k8") == struct.unpack("=q", b"v8".ljust(8, b"\0"))[0] + 1
    assert full.delete(b"k8") is True
    assert full.exists(b"k8") is False
    assert full.set(b"k9", b"v9") is True  # slot 0 again
    assert full.exists(b"k9") and full.get(b"k9") == b"v9"


def test_an_expired_item_in_slot_0_is_reclaimed(clock: Clock) -> None:
    c = Cache("full", 10, blocksize=16, clock=clock)
    try:
        assert all(c.set(b"k%d" % i, b"v") for i in range(8))
        assert c.set(b"last", b"v", expires=5)  # slot 0
        clock.now += 6
        assert c.inc(b"last", 1, 5) is True  # expired: a new item in its place, again for 5 s
        assert c.num(b"last") == 1
        clock.now += 100
        assert c.set(b"new", b"v") is True  # a full cache sweeps: the expired slot 0 is free again
        assert c.get(b"new") == b"v"
    finally:
        c.close()


def test_keys_of_exactly_keysize_and_empty_keys(full: Cache) -> None:
    key = b"K" * full.keysize
    assert full.delete(b"k0")
    assert full.inc(key, 5) is True
    assert full.exists(key) is True and full.num(key) == 5
    assert full.delete(key) is True
    assert full.inc(b"") is False and full.exists(b"") is False and full.delete(b"") is False


def test_math_defaults_and_limits(clock: Clock) -> None:
    c = Cache("math", 10, blocksize=16, clock=clock)
    try:
        assert c.inc(b"a") and c.num(b"a") == 1
        assert c.dec(b"b") and c.num(b"b") == -1
        assert c.set(b"c", b"\x03" + b"\0" * 7) and c.mul(b"c") and c.num(b"c") == 6
        assert c.set(b"d", b"\x07" + b"\0" * 7) and c.div(b"d") and c.num(b"d") == 3
        assert c.mul(b"e") and c.div(b"f")  # new items start at 0
        clock.now += 3600
        assert sorted(c.keys()) == [b"a", b"b", b"c", b"d", b"e", b"f"], "no expiry unless asked for"
        assert c.inc(b"g", INT64_MAX) and c.num(b"g") == INT64_MAX
        assert c.inc(b"h", INT64_MIN) and c.num(b"h") == INT64_MIN
        with pytest.raises(OverflowError) as info:
            c.inc(b"i", INT64_MAX + 1)
        assert str(info.value) == f"{INT64_MAX + 1} does not fit in a signed 64-bit integer"
    finally:
        c.close()


@pytest.mark.parametrize("expires", [-1000, -999])
def test_a_deadline_at_or_before_the_epoch_is_in_the_past(clock: Clock, expires: int) -> None:
    c = Cache("past", 10, blocksize=16, clock=clock)
    try:
        assert c.set(b"k", b"v", expires=expires)  # now + expires is 0 or 1: long gone, not "never"
        assert c.get(b"k") is None and c.exists(b"k") is False
    finally:
        c.close()


def test_the_earliest_deadline_is_kept_for_the_sweeper(clock: Clock) -> None:
    c = Cache("sweep", 10, blocksize=16, clock=clock)
    try:
        assert all(c.set(b"k%d" % i, b"v") for i in range(6))
        assert c.set(b"soon", b"v", expires=5)
        assert c.set(b"later", b"v", expires=50)
        assert c.set(b"latest", b"v", expires=500)
        clock.now += 6  # only "soon" is due
        assert c.set(b"n1", b"v") is True
        assert c.set(b"n2", b"v") is False
        clock.now += 45  # "later" is due: the sweep found it as the next deadline
        assert c.set(b"n2", b"v") is True
        assert c.get(b"latest") == b"v"
    finally:
        c.close()


def test_the_index_is_rebuilt_with_expiring_items_in_it(clock: Clock) -> None:
    c = Cache("churn", 101, blocksize=16, clock=clock)
    try:
        for i in range(600):  # many more writes and deletes than buckets: the index is rebuilt many times
            assert c.set(b"k%d" % i, b"v", expires=1000 + i)
            if i >= 20:
                assert c.delete(b"k%d" % (i - 20))
        assert sorted(c.keys()) == sorted(b"k%d" % i for i in range(580, 600))
        clock.now += 1000 + 590
        assert sorted(c.keys()) == sorted(b"k%d" % i for i in range(591, 600))
        assert all(c.set(b"n%d" % i, b"v") for i in range(100 - 9))  # the expired ones were reclaimed
    finally:
        c.close()


def test_readers_share_the_lock_and_writers_take_it_alone(full: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[int] = []
    real = fcntl.lockf

    def spy(fd: int, mode: int) -> None:
        if mode != fcntl.LOCK_UN:
            modes.append(mode)
        real(fd, mode)

    monkeypatch.setattr(fcntl, "lockf", spy)  # the module uwsgirouter.cache calls
    shared, exclusive = fcntl.LOCK_SH, fcntl.LOCK_EX
    for call, mode in (
        (lambda: full.get(b"k1"), shared),
        (lambda: full.exists(b"k1"), shared),
        (lambda: full.keys(), shared),
        (lambda: full.items_count, shared),
        (lambda: full.set(b"k1", b"x"), exclusive),
        (lambda: full.update(b"k1", b"x"), exclusive),
        (lambda: full.inc(b"k2"), exclusive),
        (lambda: full.delete(b"k3"), exclusive),
        (lambda: full.clear(), exclusive),
    ):
        modes.clear()
        call()
        assert modes == [mode]


def test_closing_twice_closes_nothing_else() -> None:
    c = Cache("close", 3)
    c.close()
    spare = os.open(os.devnull, os.O_RDONLY)
    try:
        c.close()
        os.fstat(spare)
        os.fstat(1)
    finally:
        os.close(spare)


def test_an_expired_item_in_slot_0_of_a_cache_with_room_is_renewed_in_place(clock: Clock) -> None:
    c = Cache("renew", 10, blocksize=16, clock=clock)
    try:
        assert all(c.set(b"k%d" % i, b"v") for i in range(8))
        assert c.set(b"last", b"v", expires=5)  # slot 0
        assert c.delete(b"k0")  # room again
        clock.now += 6
        assert c.inc(b"last") is True
        assert c.num(b"last") == 1
    finally:
        c.close()


def test_math_on_a_new_key_in_a_full_cache_sweeps_the_expired_items(clock: Clock) -> None:
    c = Cache("sweep", 10, blocksize=16, clock=clock)
    try:
        assert all(c.set(b"k%d" % i, b"v", expires=5 if i == 4 else 0) for i in range(9))
        assert c.inc(b"n") is False
        clock.now += 6
        assert c.inc(b"n") is True and c.num(b"n") == 1
    finally:
        c.close()


def test_a_forked_child_gets_fresh_thread_locks(full: Cache) -> None:
    full._tlock.acquire()  # as a thread of the parent may hold it at the fork
    cache_module._reinit_after_fork()  # what os.register_at_fork runs in the child
    assert full.get(b"k1") == b"v1"  # no deadlock: the held lock was replaced
