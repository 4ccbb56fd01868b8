"""The shared cache (uwsgirouter.cache), the uwsgi.cache_* API and the --fastrouter-use-cache mapper.

Return conventions and limits are uWSGI 2.0.31's, as the real binary gave them (a --file probe run in
the master of ``uwsgi --master --cache 10 --fastrouter ...``).
"""

from __future__ import annotations

import logging
import os
import select
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from uwsgirouter import uwsgi_module
from uwsgirouter.cache import Cache
from uwsgirouter.cache_config import CacheSet
from uwsgirouter.config import load_config
from uwsgirouter.errors import ConfigError
from uwsgirouter.router.mappers.cache import MAX_CACHED_VALUES, CacheMapper, build_cache_mapper


class Clock:
    """An injectable wall clock."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache() -> Iterator[Cache]:
    c = Cache("test", 101, blocksize=100, keysize=32)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(clock: Clock) -> Iterator[Cache]:
    c = Cache("timed", 11, blocksize=64, clock=clock)
    try:
        yield c
    finally:
        c.close()


# == the Cache object ====================================================================================


def test_set_get_update_delete_exists(cache: Cache) -> None:
    assert cache.get(b"k") is None
    assert cache.set(b"k", b"v") is True
    assert cache.set(b"k", b"w") is False  # set fails when the key exists
    assert cache.get(b"k") == b"v"
    assert cache.update(b"k", b"w") is True  # update overwrites
    assert cache.get(b"k") == b"w"
    assert cache.update(b"new", b"x") is True  # ... or creates
    assert cache.exists(b"k") is True
    assert cache.exists(b"missing") is False
    assert cache.delete(b"k") is True
    assert cache.delete(b"k") is False
    assert cache.get(b"k") is None
    assert cache.exists(b"k") is False
    assert cache.keys() == [b"new"]
    assert cache.items_count == 1


def test_values_of_every_length_and_binary_keys(cache: Cache) -> None:
    for n in range(1, 100):
        key = bytes([n, 0, 255]) + b"\0" * (n % 5)
        assert cache.update(key, bytes(range(n)))
    for n in range(1, 100):
        assert cache.get(bytes([n, 0, 255]) + b"\0" * (n % 5)) == bytes(range(n))
    assert cache.update(b"x" * 10, b"long value here") and cache.update(b"x" * 10, b"ab")
    assert cache.get(b"x" * 10) == b"ab"  # a shorter overwrite is not padded with the old bytes


def test_clear_and_keys(cache: Cache) -> None:
    for i in range(50):
        cache.set(b"k%d" % i, b"v")
    assert sorted(cache.keys()) == sorted(b"k%d" % i for i in range(50))
    assert cache.clear() is True
    assert cache.keys() == [] and cache.items_count == 0
    assert cache.get(b"k1") is None
    assert cache.set(b"k1", b"again") and cache.get(b"k1") == b"again"


def test_limits_as_uwsgi() -> None:
    c = Cache("limits", 10)  # uWSGI's defaults: blocksize 65536, keysize 2048
    try:
        assert c.set(b"e", b"") is False and c.update(b"e", b"") is False  # empty value
        assert c.set(b"", b"v") is False and c.get(b"") is None  # empty key
        assert c.set(b"v", b"x" * 65536) is True
        assert c.set(b"w", b"x" * 65537) is False
        assert c.set(b"big", b"x" * 70000) is False
        assert c.set(b"a" * 2048, b"1") is True
        assert c.set(b"b" * 2049, b"1") is False
        assert c.get(b"b" * 2049) is None and c.exists(b"b" * 2049) is False and c.delete(b"b" * 2049) is False
        assert c.get(b"x" * 65536) is None  # a long key is no error on reads
    finally:
        c.close()


def test_custom_sizes(cache: Cache) -> None:
    assert cache.set(b"k" * 32, b"v" * 100)
    assert not cache.set(b"k" * 33, b"v")
    assert not cache.set(b"k", b"v" * 101)
    assert not cache.update(b"k" * 32, b"v" * 101)
    assert cache.get(b"k" * 32) == b"v" * 100  # a failed update leaves the old value


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError):
        Cache("x", 0)
    with pytest.raises(ValueError):
        Cache("x", 10, blocksize=0)
    with pytest.raises(ValueError):
        Cache("x", 10, keysize=65535)


def test_capacity_is_items_minus_one_and_full_set_fails_cleanly() -> None:
    c = Cache("cap", 10, blocksize=16)  # uWSGI: --cache 10 holds 9 items (slot 0 is reserved)
    try:
        assert [c.set(b"k%d" % i, b"v%d" % i) for i in range(12)] == [True] * 9 + [False] * 3
        assert c.items_count == 9
        assert c.update(b"other", b"x") is False
        assert c.inc(b"n") is False
        assert all(c.get(b"k%d" % i) == b"v%d" % i for i in range(9))  # nothing lost
        assert c.update(b"k3", b"changed") is True  # overwriting needs no new slot
        assert c.delete(b"k0") and c.set(b"other", b"x")
        assert c.set(b"more", b"x") is False
        assert sorted(c.keys()) == sorted([b"other", *(b"k%d" % i for i in range(1, 9))])
    finally:
        c.close()


def test_a_full_cache_logs_its_state(caplog: pytest.LogCaptureFixture) -> None:
    c = Cache("tiny", 2, blocksize=8)
    try:
        with caplog.at_level(logging.WARNING, "uwsgirouter.cache"):
            assert c.set(b"a", b"1") and not c.set(b"b", b"2") and not c.set(b"c", b"3")
        assert [r.getMessage() for r in caplog.records] == ['*** DANGER cache "tiny" is FULL !!! *** (1 items)']
    finally:
        c.close()


def test_a_one_item_cache_holds_nothing() -> None:
    c = Cache("none", 1)
    try:
        assert c.set(b"a", b"1") is False and c.get(b"a") is None and c.keys() == []
    finally:
        c.close()


def test_many_deletes_leave_tombstones_that_are_cleaned(cache: Cache) -> None:
    # far more inserts and deletes than the index has buckets: lookups stay correct throughout
    live: dict[bytes, bytes] = {}
    for i in range(5000):
        key = b"key%d" % i
        assert cache.set(key, b"v%d" % i)
        live[key] = b"v%d" % i
        if len(live) > 60:
            old = next(iter(live))
            assert cache.delete(old)
            del live[old]
            assert cache.get(old) is None
    assert sorted(cache.keys()) == sorted(live)
    assert all(cache.get(k) == v for k, v in live.items())
    assert cache.items_count == len(live)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["set", "update", "delete", "get", "inc", "clear"]),
            st.integers(0, 11),
            st.binary(min_size=0, max_size=10),
        ),
        max_size=60,
    )
)
def test_behaves_like_a_bounded_dict(ops: list[tuple[str, int, bytes]]) -> None:
    c = Cache("model", 9, blocksize=8)
    model: dict[bytes, bytes] = {}
    try:
        for op, k, value in ops:
            key = b"k%d" % k
            room = len(model) < 8
            if op == "set":
                ok = bool(value) and len(value) <= 8 and key not in model and room
                assert c.set(key, value) is ok
                if ok:
                    model[key] = value
            elif op == "update":
                ok = bool(value) and len(value) <= 8 and (key in model or room)
                assert c.update(key, value) is ok
                if ok:
                    model[key] = value
            elif op == "delete":
                assert c.delete(key) is (model.pop(key, None) is not None)
            elif op == "inc":
                ok = key in model or room
                before = struct.unpack("=q", model[key][:8].ljust(8, b"\0"))[0] if key in model else 0
                assert c.inc(key, 3) is ok
                if ok:
                    model[key] = struct.pack("=q", before + 3)
            elif op == "clear":
                c.clear()
                model.clear()
            assert c.get(key) == model.get(key)
        assert sorted(c.keys()) == sorted(model)
    finally:
        c.close()


# == expiry ==============================================================================================


def test_expired_items_are_missing_and_reclaimed(timed: Cache, clock: Clock) -> None:
    assert timed.set(b"k", b"v", expires=10)
    assert timed.set(b"forever", b"v")
    clock.now += 9.9
    assert timed.get(b"k") == b"v" and timed.exists(b"k")
    clock.now += 0.1
    assert timed.get(b"k") is None
    assert not timed.exists(b"k")
    assert timed.keys() == [b"forever"] and timed.items_count == 1
    assert timed.num(b"k") is None
    assert timed.set(b"k", b"new")  # set succeeds over an expired item
    assert timed.get(b"k") == b"new"
    clock.now += 10**6
    assert timed.get(b"k") == b"new" and timed.get(b"forever") == b"v"  # expires=0: never


def test_delete_of_an_expired_item_reports_missing(timed: Cache, clock: Clock) -> None:
    assert timed.set(b"k", b"v", 1)
    clock.now += 2
    assert timed.delete(b"k") is False
    assert timed.set(b"k", b"v") and timed.delete(b"k") is True


def test_update_sets_the_expiry_and_math_keeps_it(timed: Cache, clock: Clock) -> None:
    assert timed.update(b"k", b"v", 5)
    assert timed.update(b"k", b"w")  # expires 0: never
    clock.now += 100
    assert timed.get(b"k") == b"w"
    assert timed.inc(b"n", 1, 5)  # a new number gets the expiry
    assert timed.inc(b"n", 1, 1000)  # an existing one keeps it (uWSGI's FIXEXPIRE)
    clock.now += 5
    assert timed.num(b"n") is None
    assert timed.inc(b"n")  # an expired number starts again
    assert timed.num(b"n") == 1


def test_negative_expires_is_a_deadline_in_the_past(timed: Cache) -> None:
    assert timed.set(b"k", b"v", -1) is True
    assert timed.get(b"k") is None


def test_a_full_cache_reclaims_expired_items(timed: Cache, clock: Clock) -> None:
    for i in range(10):
        assert timed.set(b"k%d" % i, b"v", expires=5 if i % 2 else 0)
    assert not timed.set(b"more", b"v")
    clock.now += 6
    assert all(timed.set(b"n%d" % i, b"v") for i in range(5))
    assert not timed.set(b"more", b"v")
    assert sorted(timed.keys()) == sorted([*(b"k%d" % i for i in range(0, 10, 2)), *(b"n%d" % i for i in range(5))])


def test_a_full_cache_scans_for_expired_items_only_when_one_is_due(
    timed: Cache, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rebuilds: list[float] = []
    rebuild = timed._rebuild

    def counted(now: float) -> None:
        rebuilds.append(now)
        rebuild(now)

    monkeypatch.setattr(timed, "_rebuild", counted)
    for i in range(10):
        assert timed.set(b"k%d" % i, b"v", expires=50 if i == 3 else 0)
    for _ in range(100):
        assert not timed.set(b"more", b"v")
    assert rebuilds == []  # full, and nothing expired yet: no scan per failed write
    clock.now += 50
    assert timed.set(b"more", b"v") and not timed.set(b"again", b"v")
    assert len(rebuilds) == 1  # one scan, which found the next deadline: none
    assert timed.get(b"k3") is None and timed.get(b"more") == b"v"


def test_expiry_with_the_real_clock() -> None:
    c = Cache("real", 4, blocksize=8)
    try:
        assert c.set(b"k", b"v", 1)
        deadline = time.monotonic() + 3
        while c.get(b"k") is not None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert c.set(b"k", b"again")
    finally:
        c.close()


# == numbers =============================================================================================


def test_numbers_are_native_int64_values(cache: Cache) -> None:
    assert cache.inc(b"n")
    assert cache.get(b"n") == struct.pack("=q", 1) == (1).to_bytes(8, sys.byteorder)
    assert cache.inc(b"n", 5) and cache.num(b"n") == 6
    assert cache.dec(b"n", 10) and cache.get(b"n") == b"\xfc" + b"\xff" * 7 and cache.num(b"n") == -4
    assert cache.mul(b"n", 3) and cache.num(b"n") == -12
    assert cache.div(b"n", 2) and cache.num(b"n") == -6
    assert cache.div(b"n", 0) and cache.num(b"n") == 0  # uWSGI: division by zero gives 0
    assert cache.mul(b"n") is True and cache.div(b"n") is True  # defaults: 2


def test_math_on_new_items(cache: Cache) -> None:
    assert cache.dec(b"d") and cache.num(b"d") == -1
    assert cache.mul(b"m", 3) and cache.num(b"m") == 0
    assert cache.div(b"v", 3) and cache.num(b"v") == 0
    c = Cache("initial", 4, math_initial=10)
    try:
        assert c.inc(b"n", 5) and c.num(b"n") == 15
        assert c.div(b"d") and c.num(b"d") == 5
    finally:
        c.close()


def test_c_arithmetic(cache: Cache) -> None:
    cache.update(b"d", struct.pack("=q", -7))
    assert cache.div(b"d", 2) and cache.num(b"d") == -3  # truncates toward zero, as C
    cache.update(b"d", struct.pack("=q", 7))
    assert cache.div(b"d", -2) and cache.num(b"d") == -3
    cache.update(b"o", struct.pack("=q", 2**63 - 1))
    assert cache.inc(b"o") and cache.num(b"o") == -(2**63)  # wraps
    assert cache.div(b"o", -1) and cache.num(b"o") == -(2**63)  # (C would trap)
    with pytest.raises(OverflowError):
        cache.inc(b"o", 2**63)


def test_math_on_non_numbers(cache: Cache) -> None:
    cache.update(b"s", b"abc")
    assert cache.num(b"s") is None  # not 8 bytes
    assert cache.inc(b"s")  # the value read padded with zero bytes, as uWSGI reads a fresh block
    assert cache.get(b"s") == b"bbc\0\0\0\0\0" and cache.num(b"s") == 6513250
    cache.update(b"l", b"abcdefghij")
    assert cache.inc(b"l") and cache.get(b"l") == b"bbcdefgh"  # the first 8 bytes
    small = Cache("small", 4, blocksize=4)
    try:
        assert small.inc(b"n") is False  # a number needs 8 bytes
        assert small.set(b"n", b"1234") and small.inc(b"n") is False
    finally:
        small.close()


# == many processes, many threads ========================================================================

WRITERS = 4
OPS = 5000
SHARED = 40


def _value(writer: int, seq: int) -> bytes:
    """A value that says who wrote it and can be checked whole: torn copies do not pass ``_check``."""
    length = (seq * 7919 + writer * 104729) % 3000 + 1
    fill = bytes([(writer * 31 + seq) % 251]) * length
    return b"%d:%d:" % (writer, seq) + fill + b":%d" % length


def _check(value: bytes) -> None:
    writer, seq, _ = value.split(b":", 2)
    assert value == _value(int(writer), int(seq)), value[:40]


def _writer(c: Cache, writer: int, out: int, start: int) -> None:
    os.read(start, 1)  # wait until every writer is forked: they all run at once
    own: dict[bytes, bytes] = {}
    for i in range(OPS):
        seq = i + 1
        r = (i * 2654435761 + writer * 40503) % 100
        if r < 30:  # own key: set or update, then read back
            key = b"w%d-%d" % (writer, i % 400)
            value = _value(writer, seq)
            if key in own:
                assert c.set(key, value) is False
                assert c.update(key, value)
            else:
                assert c.set(key, value)
            own[key] = value
            assert c.get(key) == value
        elif r < 40 and own:  # own key: delete
            key = next(iter(own))
            assert c.delete(key)
            del own[key]
            assert c.get(key) is None
        elif r < 65:  # shared key: update
            assert c.update(b"shared%d" % (i % SHARED), _value(writer, seq))
        elif r < 70:  # shared key: delete (another writer may have deleted it first)
            c.delete(b"shared%d" % (i % SHARED))
        else:  # shared key: read; whatever is there was written whole by someone
            found = c.get(b"shared%d" % (i % SHARED))
            if found is not None:
                _check(found)
        if i % 500 == 0:
            c.inc(b"counter")
    os.write(out, repr(sorted(own.items())).encode())


def test_many_processes_at_once() -> None:
    c = Cache("shared", WRITERS * 420 + SHARED + 10, blocksize=3100)
    pids: list[tuple[int, int]] = []
    start_read, start_write = os.pipe()
    try:
        for writer in range(WRITERS):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                status = 1
                try:
                    os.close(read_end)
                    os.close(start_write)
                    _writer(c, writer, write_end, start_read)
                    status = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(status)
            os.close(write_end)
            pids.append((pid, read_end))
        os.close(start_write)  # EOF: go
        start_write = -1
        results: list[bytes] = []
        for pid, read_end in pids:
            chunks = []
            while chunk := os.read(read_end, 1 << 16):
                chunks.append(chunk)
            os.close(read_end)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            results.append(b"".join(chunks))
        for writer, raw in enumerate(results):
            own = dict(eval(raw))  # our own repr of a list of (bytes, bytes)
            assert own, writer
            for key, value in own.items():  # every key a writer set and did not delete is there
                assert c.get(key) == value
            stored = c.keys()
            leftover = [k for k in stored if k.startswith(b"w%d-" % writer)]
            assert sorted(leftover) == sorted(own)  # and nothing it deleted came back
        for i in range(SHARED):
            value = c.get(b"shared%d" % i)
            if value is not None:
                _check(value)
        assert c.num(b"counter") == WRITERS * (OPS // 500)  # no lost increments
    finally:
        os.close(start_read)
        if start_write >= 0:
            os.close(start_write)
        c.close()


def test_threads_of_one_process_exclude_each_other(cache: Cache) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(500):
                assert cache.inc(b"n")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.num(b"n") == 2000


def test_the_lock_excludes_a_forked_child(cache: Cache) -> None:
    """A POSIX lock is per process: a child forked while the parent holds it must wait for it."""
    cache.set(b"k", b"before")
    read_end, write_end = os.pipe()
    cache._lock(True)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                os.write(write_end, cache.get(b"k") or b"none")
            finally:
                os._exit(0)
        ready, _, _ = select.select([read_end], [], [], 0.3)
        assert not ready  # the child is waiting for the lock
        cache._write(cache._probe(cache._hash(b"k"), b"k")[1], None, b"after", None)
    finally:
        cache._unlock()
    ready, _, _ = select.select([read_end], [], [], 5)
    assert ready and os.read(read_end, 100) == b"after"
    os.waitpid(pid, 0)
    os.close(read_end)
    os.close(write_end)


def test_children_see_the_parents_writes_and_the_other_way_round(cache: Cache) -> None:
    cache.set(b"from-parent", b"1")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        ok = cache.get(b"from-parent") == b"1" and cache.set(b"from-child", b"2")
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get(b"from-child") == b"2"


# == CacheSet from the configuration ======================================================================


def _caches(*args: str) -> CacheSet:
    return CacheSet.from_config(load_config(list(args), {}))


def test_cache_set_from_config() -> None:
    caches = _caches(
        "--cache2",
        "name=a,items=5,blocksize=100,keysize=10",
        "--cache",
        "10",
        "--cache-blocksize",
        "200",
        "--cache2",
        "maxitems=3,name=b",
        "--cache2",
        "name=c,max_items=4,math_initial=7",
    )
    try:
        # uWSGI builds the --cache one first, wherever it is written
        assert [(c.name, c.items, c.blocksize, c.keysize) for c in caches] == [
            ("default", 10, 200, 2048),
            ("a", 5, 100, 10),
            ("b", 3, 65536, 2048),
            ("c", 4, 65536, 2048),
        ]
        assert caches.default is caches.get_cache(None) is caches.get_cache("") is caches.get_cache("default")
        assert caches.get_cache("b") is caches.caches[2]
        assert caches.get_cache("nope") is None and caches.get_cache("a@127.0.0.1:3000") is None
        assert caches.caches[3].math_initial == 7
    finally:
        caches.close()


def test_first_cache2_is_the_default_without_cache() -> None:
    caches = _caches("--cache2", "name=x,items=2", "--cache2", "name=y,items=2")
    try:
        assert caches.default is caches.get_cache("x")
    finally:
        caches.close()


def test_no_cache() -> None:
    caches = _caches()
    assert len(caches) == 0 and caches.default is None and caches.get_cache(None) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("items=5", "needs a name"),
        ("name=,items=5", "needs a name"),
        ("name=a", "number of items"),
        ("name=a,items=0", "items must be at least 1"),
        ("name=a,items=x", "is not a number"),
        ("name=a,items=5,blocksize=0", "blocksize must be at least 1"),
        ("name=a,items=5,keysize=65535", "keysize must be 1..65534"),
        ("name=a@b,items=5", "cannot contain '@'"),
    ],
)
def test_bad_cache2(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _caches("--cache2", spec)


def test_unsupported_cache2_keys_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "uwsgirouter.cache"):
        caches = _caches("--cache2", "name=a,items=2,purge_lru=1,hash=djb33x,frob=1")
    caches.close()
    assert [r.getMessage() for r in caplog.records] == [
        "--cache2 a: purge_lru= is not supported by uwsgirouter; ignored",
        "--cache2 a: unknown key frob=; ignored",
    ]


# == uwsgi.cache_* =======================================================================================


@pytest.fixture
def uwsgi(tmp_path: Path) -> Iterator[Any]:
    saved = sys.modules.get("uwsgi")
    caches = _caches("--cache", "10", "--cache2", "name=small,items=5,blocksize=8,keysize=4")
    uwsgi_module.install_cache(caches)
    module = uwsgi_module.install(load_config([], {}))
    try:
        yield module
    finally:
        uwsgi_module.install_cache(None)
        caches.close()
        if saved is None:
            sys.modules.pop("uwsgi", None)
        else:
            sys.modules["uwsgi"] = saved


def test_uwsgi_conventions(uwsgi: Any) -> None:
    assert uwsgi.cache_set("k", "v") is True
    assert uwsgi.cache_set("k", "w") is None  # not False
    assert uwsgi.cache_get("k") == b"v" and uwsgi.cache_get(b"k") == b"v"
    assert uwsgi.cache_get("nope") is None
    assert uwsgi.cache_update("k", b"w") is True and uwsgi.cache_get("k") == b"w"
    assert uwsgi.cache_exists("k") is True and uwsgi.cache_exists("nope") is None
    assert uwsgi.cache_del("k") is True and uwsgi.cache_del("k") is None
    assert uwsgi.cache_set("e", "") is None and uwsgi.cache_update("e", b"") is None
    assert uwsgi.cache_set("big", b"x" * 70000) is None and uwsgi.cache_set("b", b"x" * 65536) is True
    assert uwsgi.cache_set("a" * 2048, "1") is True and uwsgi.cache_set("b" * 2049, "1") is None
    assert uwsgi.cache_set("", "1") is None and uwsgi.cache_get("") is None
    assert uwsgi.cache_set("é", "ü") is True and uwsgi.cache_get(b"\xc3\xa9") == "ü".encode()
    assert sorted(uwsgi.cache_keys()) == sorted([b"a" * 2048, b"b", "é".encode()])
    assert all(type(k) is bytes for k in uwsgi.cache_keys())
    assert uwsgi.cache_clear() is True and uwsgi.cache_keys() == []


def test_uwsgi_numbers(uwsgi: Any) -> None:
    assert uwsgi.cache_inc("n") is True and uwsgi.cache_get("n") == struct.pack("=q", 1)
    assert uwsgi.cache_num("n") == 1
    assert uwsgi.cache_inc("n", 5) is True and uwsgi.cache_num("n") == 6
    assert uwsgi.cache_dec("n", 10) is True and uwsgi.cache_num("n") == -4
    assert uwsgi.cache_mul("n", 3) is True and uwsgi.cache_num("n") == -12
    assert uwsgi.cache_div("n") is True and uwsgi.cache_num("n") == -6  # default 2
    assert uwsgi.cache_mul("n") is True and uwsgi.cache_num("n") == -12  # default 2
    assert uwsgi.cache_dec("n") is True and uwsgi.cache_num("n") == -13  # default 1
    assert uwsgi.cache_num("missing") == 0  # 0, not None
    uwsgi.cache_update("short", "ab")
    assert uwsgi.cache_num("short") == 0
    assert uwsgi.cache_inc("t", True) is True and uwsgi.cache_num("t") == 1  # bool is an int
    assert uwsgi.cache_inc("n", 1, 0, "small") is True and uwsgi.cache_num("n", "small") == 1


def test_uwsgi_named_caches(uwsgi: Any) -> None:
    assert uwsgi.cache_set("k", "default") is True
    assert uwsgi.cache_set("k", "small", 0, "small") is True
    assert uwsgi.cache_get("k", "default") == b"default" and uwsgi.cache_get("k", "") == b"default"
    assert uwsgi.cache_get("k", "small") == b"small"
    assert uwsgi.cache_set("k" * 5, "1", 0, "small") is None  # keysize 4
    assert uwsgi.cache_set("v", "123456789", 0, "small") is None  # blocksize 8
    assert uwsgi.cache_keys("small") == [b"k"]
    assert uwsgi.cache_exists("k", "small") is True and uwsgi.cache_del("k", "small") is True
    # unknown cache: None everywhere, 0 for cache_num, ValueError for cache_keys (as uWSGI)
    assert uwsgi.cache_get("k", "nocache") is None
    assert uwsgi.cache_set("x", "y", 0, "nocache") is None
    assert uwsgi.cache_update("x", "y", 0, "nocache") is None
    assert uwsgi.cache_exists("k", "nocache") is None
    assert uwsgi.cache_del("k", "nocache") is None
    assert uwsgi.cache_clear("nocache") is None
    assert uwsgi.cache_inc("k", 1, 0, "nocache") is None
    assert uwsgi.cache_num("k", "nocache") == 0
    with pytest.raises(ValueError, match="no local uWSGI cache available"):
        uwsgi.cache_keys("nocache")


def test_uwsgi_remote_cache_is_refused_and_logged_once(
    uwsgi: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uwsgi_module, "_remote_logged", set())  # "once" is per process: start afresh
    with caplog.at_level(logging.WARNING, "uwsgirouter.cache"):
        assert uwsgi.cache_get("k", "c@127.0.0.1:1") is None
        assert uwsgi.cache_set("k", "v", 0, "c@127.0.0.1:1") is None
        assert uwsgi.cache_num("k", "c@127.0.0.1:1") == 0
    assert len(caplog.records) == 1
    assert "remote cache 'c@127.0.0.1:1' is not supported" in caplog.records[0].getMessage()


def test_uwsgi_argument_errors(uwsgi: Any) -> None:
    with pytest.raises(TypeError):
        uwsgi.cache_get(1)
    with pytest.raises(TypeError):
        uwsgi.cache_set("k", bytearray(b"v"))
    with pytest.raises(TypeError, match="must be str, not bytes"):
        uwsgi.cache_get("k", b"default")
    with pytest.raises(TypeError, match="must be str, not NoneType"):
        uwsgi.cache_get("k", None)
    with pytest.raises(TypeError):
        uwsgi.cache_inc("k", 1.5)
    with pytest.raises(TypeError):
        uwsgi.cache_set("k", "v", None)
    with pytest.raises(OverflowError):
        uwsgi.cache_inc("k", 2**63)
    with pytest.raises(UnicodeEncodeError):
        uwsgi.cache_set("\udcff", "v")
    with pytest.raises(TypeError):
        uwsgi.cache_get(key="k")
    with pytest.raises(TypeError):
        uwsgi.cache_get("k", "default", 1)
    assert uwsgi.cache_keys() == []  # nothing was stored by the failed calls


def test_uwsgi_functions_exist_without_caches() -> None:
    functions = uwsgi_module.cache_functions(None)
    assert functions["cache_get"]("k") is None
    assert functions["cache_set"]("k", "v") is None
    assert functions["cache_exists"]("k") is None
    assert functions["cache_clear"]() is None
    assert functions["cache_inc"]("k") is None
    assert functions["cache_num"]("k") == 0
    with pytest.raises(ValueError, match="no local uWSGI cache available"):
        functions["cache_keys"]()
    assert "cache_get" in uwsgi_module._registered


# == the --fastrouter-use-cache mapper ===================================================================


def test_mapper_address_and_modifier1(cache: Cache) -> None:
    mapper = CacheMapper(cache)
    cache.set(b"example.com:8000", b"127.0.0.1:4040")
    cache.set(b"unbit.it", b"127.0.0.1:4040,5")
    node = mapper.pick(b"example.com:8000", (), 0.0)
    assert node is not None
    assert (node.name, node.sockaddr, node.modifier1, node.modifier2) == ("127.0.0.1:4040", ("127.0.0.1", 4040), 0, 0)
    node = mapper.pick(b"unbit.it", (), 0.0)
    assert node is not None and node.name == "127.0.0.1:4040" and node.modifier1 == 5
    assert mapper.pick(b"unknown", (), 0.0) is None
    assert mapper.pick(b"unbit.it", (), 0.0) is node  # parsed once


def test_mapper_round_robin_and_tried(cache: Cache) -> None:
    mapper = CacheMapper(cache)
    cache.set(b"k", b"127.0.0.1:1|127.0.0.1:2,3|/tmp/app.sock")

    def names(n: int, tried: tuple[Any, ...] = ()) -> list[str | None]:
        picked = [mapper.pick(b"k", tried, 0.0) for _ in range(n)]
        return [p.name if p else None for p in picked]

    assert names(6) == ["127.0.0.1:1", "127.0.0.1:2", "/tmp/app.sock"] * 2
    first = mapper.pick(b"k", (), 0.0)
    assert first is not None and first.name == "127.0.0.1:1"
    second = mapper.pick(b"k", (first,), 0.0)
    assert second is not None and second.name == "127.0.0.1:2" and second.modifier1 == 3
    third = mapper.pick(b"k", (first, second), 0.0)
    assert third is not None and third.name == "/tmp/app.sock"
    assert mapper.pick(b"k", (first, second, third), 0.0) is None
    cache.set(b"one", b"127.0.0.1:9")
    only = mapper.pick(b"one", (), 0.0)
    assert only is not None and mapper.pick(b"one", (only,), 0.0) is None
    cache.update(b"one", b"127.0.0.1:9,1")  # a new value (new Node objects): tried still counts by name
    assert mapper.pick(b"one", (only,), 0.0) is None


def test_mapper_two_nodes_alternate(cache: Cache) -> None:
    mapper = CacheMapper(cache)
    cache.set(b"k", b"127.0.0.1:1|127.0.0.1:2")
    picks = [mapper.pick(b"k", (), 0.0) for _ in range(4)]
    assert [p.name if p else None for p in picks] == ["127.0.0.1:1", "127.0.0.1:2"] * 2


def test_mapper_sees_changes_at_once(cache: Cache) -> None:
    mapper = CacheMapper(cache)
    cache.set(b"k", b"127.0.0.1:1")
    assert (node := mapper.pick(b"k", (), 0.0)) is not None and node.name == "127.0.0.1:1"
    cache.update(b"k", b"127.0.0.1:2")
    assert (node := mapper.pick(b"k", (), 0.0)) is not None and node.name == "127.0.0.1:2"
    cache.delete(b"k")
    assert mapper.pick(b"k", (), 0.0) is None


@pytest.mark.parametrize(
    "value", [b"example.com:80", b"127.0.0.1:99999", b"127.0.0.1:1,x", b"", b"|", b"[::1:80", b"1.2.3.4:x"]
)
def test_mapper_unusable_values(cache: Cache, value: bytes, caplog: pytest.LogCaptureFixture) -> None:
    mapper = CacheMapper(cache)
    cache.update(b"k", value or b"|")
    with caplog.at_level(logging.WARNING, "uwsgirouter.router"):
        assert mapper.pick(b"k", (), 0.0) is None
        assert mapper.pick(b"k", (), 0.0) is None
    assert 1 <= len(caplog.records) <= 2  # one per bad part, once per value
    assert all("not a usable node" in r.getMessage() for r in caplog.records)


def test_mapper_skips_a_bad_part(cache: Cache, caplog: pytest.LogCaptureFixture) -> None:
    mapper = CacheMapper(cache)
    cache.set(b"k", b"127.0.0.1:1||127.0.0.1:2")
    with caplog.at_level(logging.WARNING, "uwsgirouter.router"):
        picks = [mapper.pick(b"k", (), 0.0) for _ in range(4)]
    assert [p.name if p else None for p in picks] == ["127.0.0.1:1", "127.0.0.1:2"] * 2
    assert len(caplog.records) == 1


def test_mapper_memory_is_bounded() -> None:
    c = Cache("flood", MAX_CACHED_VALUES * 2 + 2, blocksize=32, keysize=16)
    try:
        mapper = CacheMapper(c)
        for i in range(MAX_CACHED_VALUES * 2):
            c.set(b"k%d" % i, b"127.0.%d.%d:%d|127.0.0.1:1" % (i // 256 % 256, i % 256, 1000 + i % 60000))
            assert mapper.pick(b"k%d" % i, (), 0.0) is not None
        assert len(mapper._nodes) <= MAX_CACHED_VALUES
        assert len(mapper._counters) <= MAX_CACHED_VALUES
    finally:
        c.close()


def test_build_cache_mapper() -> None:
    caches = _caches("--cache", "5", "--cache2", "name=other,items=5")
    try:
        assert build_cache_mapper(caches, "").cache is caches.default
        assert build_cache_mapper(caches, None).cache is caches.default
        assert build_cache_mapper(caches, "other").cache is caches.get_cache("other")
        with pytest.raises(ConfigError, match="unable to find cache 'nope'"):
            build_cache_mapper(caches, "nope")
    finally:
        caches.close()
    with pytest.raises(ConfigError, match="needs a cache"):
        build_cache_mapper(CacheSet(), "")
