"""Per-worker heartbeat slots in shared memory: workers write, the master reads.

The segment is an anonymous shared ``mmap`` created by the master before it forks, so every worker
inherits it and nothing needs unlinking. Each slot is written by one worker only; a sequence number
written before and after the data (odd while writing) lets the master detect and retry a torn read.
The sequence is always stored and loaded as one 8-byte word of its own, before and after the data:
a multi-word copy may move its parts in any order.
Times are ``time.monotonic()`` values, which CLOCK_MONOTONIC makes comparable across processes.

Besides liveness, a slot carries the worker's own counters (requests, exceptions, bytes sent, time spent
in requests), so the master's stats server can show them without asking the worker anything.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

# seq, pid, last beat, busy since (0 = idle), requests served, exceptions, bytes sent, microseconds spent in
# requests, average response time (uWSGI's running average, microseconds), requests in flight, flags
_SLOT = struct.Struct("=QqddQQQQQII")
_SEQ = struct.Struct("=Q")
_DATA = struct.Struct("=qddQQQQQII")
#: flags: a router worker in cheap mode (not accepting while no node is live)
CHEAP = 1
SLOT_SIZE = _SLOT.size
_READ_TRIES = 100


@dataclass(frozen=True, slots=True)
class Beat:
    pid: int
    last_beat: float
    busy_since: float
    requests: int
    exceptions: int = 0
    tx: int = 0
    running_us: int = 0
    avg_rt_us: int = 0
    in_flight: int = 0
    flags: int = 0


@dataclass(slots=True)
class Counters:
    """What a worker counts for the stats server, beside ``requests``; written to its slot with each beat."""

    exceptions: int = 0
    tx: int = 0
    running_us: int = 0
    avg_rt_us: int = 0
    in_flight: int = 0
    flags: int = 0

    def request_done(self, seconds: float, sent: int) -> None:
        """One request took ``seconds`` and sent ``sent`` bytes; the average is uWSGI's ``(avg + rt) / 2``."""
        micros = max(0, int(seconds * 1_000_000))
        self.running_us += micros
        self.avg_rt_us = (self.avg_rt_us + micros) // 2
        self.tx += sent


_NO_COUNTERS = Counters()


class HeartbeatTable:
    """``slots`` fixed slots; ``beat`` from a worker, ``read`` from the master."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, max(1, slots) * SLOT_SIZE)
        self._seq = [0] * slots

    def beat(
        self,
        slot: int,
        pid: int,
        now: float,
        busy_since: float = 0.0,
        requests: int = 0,
        counters: Counters | None = None,
    ) -> None:
        """Record that the worker in ``slot`` is alive at ``now`` (and busy since ``busy_since``)."""
        c = counters or _NO_COUNTERS
        seq = self._seq[slot] + 1
        offset = slot * SLOT_SIZE
        _SEQ.pack_into(self._map, offset, seq)  # odd, on its own: a write is under way
        _DATA.pack_into(
            self._map,
            offset + 8,
            pid,
            now,
            busy_since,
            requests,
            c.exceptions,
            c.tx,
            c.running_us,
            c.avg_rt_us,
            min(c.in_flight, 0xFFFFFFFF),
            c.flags,
        )
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
            fields = _SLOT.unpack_from(self._map, offset)
            if _SEQ.unpack_from(self._map, offset)[0] == seq:
                return Beat(*fields[1:])
        return None

    def clear(self, slot: int) -> None:
        """Forget a slot (before a new worker takes it) so a stale beat never counts for it."""
        offset = slot * SLOT_SIZE
        self._map[offset : offset + SLOT_SIZE] = bytes(SLOT_SIZE)
        self._seq[slot] = 0
