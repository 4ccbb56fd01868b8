"""Per-worker heartbeat slots in shared memory: workers write, the master reads.

The segment is an anonymous shared ``mmap`` created by the master before it forks, so every worker
inherits it and nothing needs unlinking. Each slot is written by one worker only; a sequence number
written before and after the data (odd while writing) lets the master detect and retry a torn read.
The sequence is always stored and loaded as one 8-byte word of its own, before and after the data:
a multi-word copy may move its parts in any order.
Times are ``time.monotonic()`` values, which CLOCK_MONOTONIC makes comparable across processes.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

# seq, pid, last beat, busy since (0 = idle), requests served
_SLOT = struct.Struct("=QqddQ")
_SEQ = struct.Struct("=Q")
_DATA = struct.Struct("=qddQ")
SLOT_SIZE = _SLOT.size
_READ_TRIES = 100


@dataclass(frozen=True, slots=True)
class Beat:
    pid: int
    last_beat: float
    busy_since: float
    requests: int


class HeartbeatTable:
    """``slots`` fixed slots; ``beat`` from a worker, ``read`` from the master."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, max(1, slots) * SLOT_SIZE)
        self._seq = [0] * slots

    def beat(self, slot: int, pid: int, now: float, busy_since: float = 0.0, requests: int = 0) -> None:
        """Record that the worker in ``slot`` is alive at ``now`` (and busy since ``busy_since``)."""
        seq = self._seq[slot] + 1
        offset = slot * SLOT_SIZE
        _SEQ.pack_into(self._map, offset, seq)  # odd, on its own: a write is under way
        _DATA.pack_into(self._map, offset + 8, pid, now, busy_since, requests)
        self._seq[slot] = seq + 1
        _SEQ.pack_into(self._map, offset, seq + 1)

    def read(self, slot: int) -> Beat | None:
        """The slot's latest complete beat, None if it was never written (or keeps being torn)."""
        offset = slot * SLOT_SIZE
        for _ in range(_READ_TRIES):
            (seq,) = _SEQ.unpack_from(self._map, offset)  # alone and first: see the module docstring
            if seq == 0:
                return None
            if seq % 2:
                continue
            _, pid, last, busy, requests = _SLOT.unpack_from(self._map, offset)
            if _SEQ.unpack_from(self._map, offset)[0] == seq:
                return Beat(pid, last, busy, requests)
        return None

    def clear(self, slot: int) -> None:
        """Forget a slot (before a new worker takes it) so a stale beat never counts for it."""
        offset = slot * SLOT_SIZE
        self._map[offset : offset + SLOT_SIZE] = bytes(SLOT_SIZE)
        self._seq[slot] = 0
