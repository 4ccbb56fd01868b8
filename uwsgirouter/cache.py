"""uWSGI's shared cache (``--cache N``, ``--cache2 name=...,items=N``): fixed size, in shared memory.

The master creates every cache before it forks; router workers and app workers inherit the anonymous
shared ``mmap`` and all read and write it. Layout of one cache's segment (every field 8-byte aligned)::

    header   magic, item count, tombstones, free-stack top (u64), earliest deadline (f64)
    index    nbuckets x u64: 0 empty, all ones a tombstone, else (tag << 32) | (slot + 1)
    free     capacity x u32: the stack of unused slots
    slots    capacity x (expires f64, keylen u32, vallen u32, key[keysize], value[blocksize])

The index is an open-addressing hash table (linear probing, at least 4 buckets per slot), so a lookup
costs O(1) on average; a deletion leaves a tombstone, and the index is rebuilt in place when live
entries and tombstones fill half of it. Keys are hashed with a keyed BLAKE2b whose random key is made
with the cache (and inherited by the fork), so clients cannot choose keys that collide.

Cross-process safety: a POSIX record lock (``fcntl.lockf``) on an unlinked temporary file, shared for
reads and exclusive for writes. POSIX locks belong to a process, so a forked child never inherits the
parent's lock (``flock`` locks would be shared across the fork); for the same reason they do not
exclude threads of one process from each other, so a per-process thread lock is taken first. Work
that needs no shared state (encoding, hashing, size checks) happens before the lock is taken.

Behaviour follows uWSGI 2.0.31 (``core/cache.c``), checked against the real binary:

* a cache of ``items`` holds ``items - 1`` values (uWSGI reserves slot 0);
* ``set`` fails when the key exists, ``update`` creates or overwrites; an empty key or value, a key
  longer than ``keysize`` (2048 by default) or a value longer than ``blocksize`` (65536) fails;
* numbers (``inc``/``dec``/``mul``/``div``) are 64-bit signed integers stored as 8 bytes in native
  byte order; a missing item starts at ``math_initial`` (0); arithmetic wraps like C's, division
  truncates toward zero and dividing by 0 gives 0; an existing item keeps its expiry. uWSGI reads the
  first 8 bytes of the item's block whatever the value's length, stale bytes included; we read the
  value padded with zero bytes (the same for a fresh block, and never another key's old bytes);
* ``expires`` is in seconds (0 = never) and becomes an absolute wall-clock deadline. An expired item
  is missing at once (uWSGI keeps it until its sweeper thread runs, every 3 s by default); it is
  reclaimed by the next write of that key, or when a write finds the cache full.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator

__all__ = [
    "DEFAULT_BLOCKSIZE",
    "DEFAULT_KEYSIZE",
    "Cache",
]

log = logging.getLogger("uwsgirouter.cache")

DEFAULT_BLOCKSIZE = 65536
DEFAULT_KEYSIZE = 2048
#: uWSGI refuses a keysize of 65535 or more (keys are sized by 16 bits).
MAX_KEYSIZE = 65534
#: Slots are numbered with 32 bits in the index.
MAX_ITEMS = 2**32 - 2
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_MAGIC = 0x75777367_63616368  # "uwsgcach"
_U64 = struct.Struct("=Q")
_I64 = struct.Struct("=q")
_HEADER = struct.Struct("=QQQQd")  # magic, count, tombstones, free top, earliest deadline (0 = none)
_F64 = struct.Struct("=d")
_U32 = struct.Struct("=I")
_SLOT_HEADER = struct.Struct("=dII")  # expires (0 = never), keylen (0 = free), vallen
_HEADER_SIZE = _HEADER.size
_COUNT_AT = 8
_TOMBS_AT = 16
_FREE_TOP_AT = 24
_NEXT_SCAN_AT = 32
_EMPTY = 0
_TOMB = 0xFFFF_FFFF_FFFF_FFFF
_SLOT_MASK = 0xFFFF_FFFF
_FULL_LOG_INTERVAL = 10.0

_live_caches: weakref.WeakSet[Cache] = weakref.WeakSet()


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _wrap64(n: int) -> int:
    """``n`` as C's int64_t arithmetic leaves it (two's complement wrap-around)."""
    return ((n - INT64_MIN) & 0xFFFF_FFFF_FFFF_FFFF) + INT64_MIN


def _c_div(a: int, b: int) -> int:
    """C division: truncates toward zero; uWSGI makes a division by 0 give 0."""
    if b == 0:
        return 0
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


_OPS: dict[str, Callable[[int, int], int]] = {
    "inc": lambda a, b: a + b,
    "dec": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": _c_div,
}


def _reinit_after_fork() -> None:
    for cache in list(_live_caches):
        cache._tlock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_after_fork)


class Cache:
    """One fixed-size cache in shared memory; safe to use from many processes (and threads).

    ``items`` is uWSGI's item count (``items - 1`` values fit, see the module docstring); values of up
    to ``blocksize`` bytes, keys of up to ``keysize``. ``clock`` returns wall-clock seconds (tests
    inject one).
    """

    def __init__(
        self,
        name: str,
        items: int,
        blocksize: int = DEFAULT_BLOCKSIZE,
        keysize: int = DEFAULT_KEYSIZE,
        math_initial: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= items <= MAX_ITEMS:
            raise ValueError(f"cache {name!r}: items must be 1..{MAX_ITEMS}")
        if blocksize < 1:
            raise ValueError(f"cache {name!r}: blocksize must be at least 1")
        if not 1 <= keysize <= MAX_KEYSIZE:
            raise ValueError(f"cache {name!r}: keysize must be 1..{MAX_KEYSIZE}")
        self.name = name
        self.items = items
        self.capacity = items - 1
        self.blocksize = blocksize
        self.keysize = keysize
        self.math_initial = _wrap64(math_initial)
        self._clock = clock
        self._secret = secrets.token_bytes(16)
        nbuckets = 8
        while nbuckets < 4 * self.capacity:
            nbuckets *= 2
        self._nbuckets = nbuckets
        self._mask = nbuckets - 1
        self._index_at = _HEADER_SIZE
        self._free_at = self._index_at + 8 * nbuckets
        self._slots_at = self._free_at + _align8(4 * self.capacity)
        self._key_at = _SLOT_HEADER.size
        self._value_at = _SLOT_HEADER.size + _align8(keysize)
        self._slot_size = self._value_at + _align8(blocksize)
        self.size = self._slots_at + self.capacity * self._slot_size
        self._map = mmap.mmap(-1, self.size)
        fd, path = tempfile.mkstemp(prefix="uwsgirouter-cache-")
        os.unlink(path)
        self._fd = fd
        self._tlock = threading.Lock()
        self._full_logged = 0.0
        self._reset()
        _live_caches.add(self)

    def __repr__(self) -> str:
        return f"<Cache {self.name!r} items={self.items} blocksize={self.blocksize} keysize={self.keysize}>"

    def close(self) -> None:
        """Release this process's mapping and lock file (other processes keep theirs)."""
        _live_caches.discard(self)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._map.close()

    # -- locking ----------------------------------------------------------------------------------

    def _lock(self, exclusive: bool) -> None:
        self._tlock.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except BaseException:
            self._tlock.release()
            raise

    def _unlock(self) -> None:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._tlock.release()

    # -- layout helpers (call with the lock held) -------------------------------------------------

    def _reset(self) -> None:
        """Empty cache: no index entries, every slot on the free stack."""
        self._map[self._index_at : self._free_at] = bytes(self._free_at - self._index_at)
        self._map[self._free_at : self._free_at + 4 * self.capacity] = array.array("I", range(self.capacity)).tobytes()
        _HEADER.pack_into(self._map, 0, _MAGIC, 0, 0, self.capacity, 0.0)

    def _hash(self, key: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(key, digest_size=8, key=self._secret).digest(), "little")

    def _slot_offset(self, slot: int) -> int:
        return self._slots_at + slot * self._slot_size

    def _probe(self, h: int, key: bytes) -> tuple[int, int, int]:
        """``(position, slot, insert_position)``: where ``key`` sits in the index (slot -1: absent)
        and, when absent, where it would go (the first tombstone on its path, else the empty bucket)."""
        m = self._map
        mask = self._mask
        index_at = self._index_at
        tag = h >> 32
        pos = h & mask
        insert = -1
        keylen = len(key)
        for _ in range(self._nbuckets):
            (entry,) = _U64.unpack_from(m, index_at + 8 * pos)
            if entry == _EMPTY:
                return pos, -1, pos if insert < 0 else insert
            if entry == _TOMB:
                if insert < 0:
                    insert = pos
            elif entry >> 32 == tag:
                slot = (entry & _SLOT_MASK) - 1
                offset = self._slot_offset(slot)
                _, slot_keylen, _ = _SLOT_HEADER.unpack_from(m, offset)
                if slot_keylen == keylen:
                    start = offset + self._key_at
                    if m[start : start + keylen] == key:
                        return pos, slot, insert
            pos = (pos + 1) & mask
        return -1, -1, insert

    def _live(self, slot: int, now: float) -> bool:
        (expires,) = _F64.unpack_from(self._map, self._slot_offset(slot))
        return not expires or expires > now

    def _value(self, slot: int) -> bytes:
        offset = self._slot_offset(slot)
        _, _, vallen = _SLOT_HEADER.unpack_from(self._map, offset)
        start = offset + self._value_at
        return self._map[start : start + vallen]

    def _write(self, slot: int, key: bytes | None, value: bytes, deadline: float | None) -> None:
        """Store ``value`` in ``slot`` (and ``key``, for a new item); ``deadline`` None keeps the expiry."""
        m = self._map
        offset = self._slot_offset(slot)
        old_deadline, keylen, _ = _SLOT_HEADER.unpack_from(m, offset)
        if key is not None:
            keylen = len(key)
            start = offset + self._key_at
            m[start : start + keylen] = key
        start = offset + self._value_at
        m[start : start + len(value)] = value
        _SLOT_HEADER.pack_into(m, offset, old_deadline if deadline is None else deadline, keylen, len(value))
        if deadline:
            (next_scan,) = _F64.unpack_from(m, _NEXT_SCAN_AT)
            if not next_scan or deadline < next_scan:
                _F64.pack_into(m, _NEXT_SCAN_AT, deadline)

    def _add_count(self, at: int, delta: int) -> int:
        (value,) = _U64.unpack_from(self._map, at)
        value += delta
        _U64.pack_into(self._map, at, value)
        return int(value)

    def _pop_free(self) -> int:
        (top,) = _U64.unpack_from(self._map, _FREE_TOP_AT)
        if not top:
            return -1
        top -= 1
        _U64.pack_into(self._map, _FREE_TOP_AT, top)
        return int(_U32.unpack_from(self._map, self._free_at + 4 * top)[0])

    def _push_free(self, slot: int) -> None:
        (top,) = _U64.unpack_from(self._map, _FREE_TOP_AT)
        _U32.pack_into(self._map, self._free_at + 4 * top, slot)
        _U64.pack_into(self._map, _FREE_TOP_AT, top + 1)

    def _remove(self, pos: int, slot: int) -> None:
        """Drop the item at index position ``pos`` (a tombstone takes its place)."""
        _U64.pack_into(self._map, self._index_at + 8 * pos, _TOMB)
        self._push_free(slot)
        self._add_count(_COUNT_AT, -1)
        self._add_count(_TOMBS_AT, 1)

    def _entries(self) -> Iterator[tuple[int, int]]:
        """``(position, slot)`` of every index entry (expired items included)."""
        index = array.array("Q")
        index.frombytes(self._map[self._index_at : self._free_at])
        for pos, entry in enumerate(index):
            if entry != _EMPTY and entry != _TOMB:
                yield pos, (entry & _SLOT_MASK) - 1

    def _key(self, slot: int) -> bytes:
        offset = self._slot_offset(slot)
        _, keylen, _ = _SLOT_HEADER.unpack_from(self._map, offset)
        start = offset + self._key_at
        return self._map[start : start + keylen]

    def _rebuild(self, now: float) -> None:
        """Rewrite the index without tombstones, dropping expired items; rebuild the free stack."""
        live = []
        next_scan = 0.0
        for _, slot in self._entries():
            (deadline,) = _F64.unpack_from(self._map, self._slot_offset(slot))
            if not deadline:
                live.append(slot)
            elif deadline > now:
                live.append(slot)
                next_scan = deadline if not next_scan else min(next_scan, deadline)
        self._map[self._index_at : self._free_at] = bytes(self._free_at - self._index_at)
        mask = self._mask
        for slot in live:
            h = self._hash(self._key(slot))
            pos = h & mask
            while _U64.unpack_from(self._map, self._index_at + 8 * pos)[0] != _EMPTY:
                pos = (pos + 1) & mask
            _U64.pack_into(self._map, self._index_at + 8 * pos, ((h >> 32) << 32) | (slot + 1))
        used = set(live)
        free = [slot for slot in range(self.capacity) if slot not in used]
        self._map[self._free_at : self._free_at + 4 * len(free)] = array.array("I", free).tobytes()
        _HEADER.pack_into(self._map, 0, _MAGIC, len(live), 0, len(free), next_scan)

    def _insert(self, h: int, key: bytes, insert: int, value: bytes, deadline: float, now: float) -> bool:
        """Store a new item (``insert`` from ``_probe``); False when the cache is full."""
        slot = self._pop_free()
        if slot < 0:
            (next_scan,) = _F64.unpack_from(self._map, _NEXT_SCAN_AT)
            if next_scan and next_scan <= now:  # some item has expired: reclaim them (as uWSGI's sweeper)
                self._rebuild(now)
                slot = self._pop_free()
            if slot < 0:
                self._log_full()
                return False
            insert = self._probe(h, key)[2]
        elif insert < 0:  # pragma: no cover - the index always has empty buckets
            self._push_free(slot)
            return False
        self._write(slot, key, value, deadline)
        (old,) = _U64.unpack_from(self._map, self._index_at + 8 * insert)
        _U64.pack_into(self._map, self._index_at + 8 * insert, ((h >> 32) << 32) | (slot + 1))
        count = self._add_count(_COUNT_AT, 1)
        tombs = self._add_count(_TOMBS_AT, -1) if old == _TOMB else int(_U64.unpack_from(self._map, _TOMBS_AT)[0])
        if 2 * (count + tombs) > self._nbuckets:
            self._rebuild(now)
        return True

    def _log_full(self) -> None:
        now = time.monotonic()
        if now - self._full_logged >= _FULL_LOG_INTERVAL:
            self._full_logged = now
            log.warning('*** DANGER cache "%s" is FULL !!! *** (%d items)', self.name, self.capacity)

    def _deadline(self, expires: int, now: float) -> float:
        if expires == 0:
            return 0.0
        # a negative expires is a deadline in the past (uWSGI wraps it around to "now - n" too)
        return now + expires if now + expires > 0 else 1e-9

    def _valid(self, key: bytes, value: bytes) -> bool:
        return 0 < len(key) <= self.keysize and 0 < len(value) <= self.blocksize

    # -- the API ----------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The value stored for ``key``, or None (missing, expired, or an impossible key)."""
        if not 0 < len(key) <= self.keysize:
            return None
        h = self._hash(key)
        self._lock(False)
        try:
            now = self._clock()
            _, slot, _ = self._probe(h, key)
            if slot < 0 or not self._live(slot, now):
                return None
            return self._value(slot)
        finally:
            self._unlock()

    def exists(self, key: bytes) -> bool:
        if not 0 < len(key) <= self.keysize:
            return False
        h = self._hash(key)
        self._lock(False)
        try:
            _, slot, _ = self._probe(h, key)
            return slot >= 0 and self._live(slot, self._clock())
        finally:
            self._unlock()

    def set(self, key: bytes, value: bytes, expires: int = 0) -> bool:
        """Store a new item; False if ``key`` holds an unexpired value, the cache is full, or a limit is hit."""
        return self._store(key, value, expires, overwrite=False)

    def update(self, key: bytes, value: bytes, expires: int = 0) -> bool:
        """Create or overwrite ``key`` (its expiry becomes ``expires``); False when full or a limit is hit."""
        return self._store(key, value, expires, overwrite=True)

    def _store(self, key: bytes, value: bytes, expires: int, overwrite: bool) -> bool:
        if not self._valid(key, value):
            return False
        h = self._hash(key)
        self._lock(True)
        try:
            now = self._clock()
            deadline = self._deadline(expires, now)
            _, slot, insert = self._probe(h, key)
            if slot >= 0:
                if not overwrite and self._live(slot, now):
                    return False
                self._write(slot, None, value, deadline)
                return True
            return self._insert(h, key, insert, value, deadline, now)
        finally:
            self._unlock()

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False if it was missing (or expired: it is reclaimed all the same)."""
        if not 0 < len(key) <= self.keysize:
            return False
        h = self._hash(key)
        self._lock(True)
        try:
            pos, slot, _ = self._probe(h, key)
            if slot < 0:
                return False
            live = self._live(slot, self._clock())
            self._remove(pos, slot)
            return live
        finally:
            self._unlock()

    def clear(self) -> bool:
        """Remove every item."""
        self._lock(True)
        try:
            self._reset()
        finally:
            self._unlock()
        return True

    def keys(self) -> list[bytes]:
        """The keys of every unexpired item (in no particular order)."""
        self._lock(False)
        try:
            now = self._clock()
            return [self._key(slot) for _, slot in self._entries() if self._live(slot, now)]
        finally:
            self._unlock()

    @property
    def items_count(self) -> int:
        """How many unexpired items the cache holds."""
        self._lock(False)
        try:
            now = self._clock()
            return sum(1 for _, slot in self._entries() if self._live(slot, now))
        finally:
            self._unlock()

    def num(self, key: bytes) -> int | None:
        """The 64-bit number stored for ``key``; None if missing or not an 8-byte value."""
        value = self.get(key)
        if value is None or len(value) != 8:
            return None
        return int(_I64.unpack(value)[0])

    def inc(self, key: bytes, n: int = 1, expires: int = 0) -> bool:
        """Add ``n`` (a missing item starts at ``math_initial``); ``expires`` applies to a new item only."""
        return self._math(key, "inc", n, expires)

    def dec(self, key: bytes, n: int = 1, expires: int = 0) -> bool:
        return self._math(key, "dec", n, expires)

    def mul(self, key: bytes, n: int = 2, expires: int = 0) -> bool:
        return self._math(key, "mul", n, expires)

    def div(self, key: bytes, n: int = 2, expires: int = 0) -> bool:
        """Divide, truncating toward zero; dividing by 0 gives 0."""
        return self._math(key, "div", n, expires)

    def _math(self, key: bytes, op: str, n: int, expires: int) -> bool:
        if not INT64_MIN <= n <= INT64_MAX:
            raise OverflowError(f"{n} does not fit in a signed 64-bit integer")
        if not 0 < len(key) <= self.keysize or self.blocksize < 8:
            return False
        function = _OPS[op]
        h = self._hash(key)
        self._lock(True)
        try:
            now = self._clock()
            _, slot, insert = self._probe(h, key)
            if slot >= 0 and self._live(slot, now):
                current = _I64.unpack(self._value(slot)[:8].ljust(8, b"\0"))[0]
                self._write(slot, None, _I64.pack(_wrap64(function(current, n))), None)
                return True
            value = _I64.pack(_wrap64(function(self.math_initial, n)))
            deadline = self._deadline(expires, now)
            if slot >= 0:  # expired: a new item in the same place
                self._write(slot, None, value, deadline)
                return True
            return self._insert(h, key, insert, value, deadline, now)
        finally:
            self._unlock()
