"""The node table's image in shared memory: the master writes it, every router worker reads it.

An anonymous shared ``mmap`` created before the fork. A sequence lock protects it: the master makes the
sequence odd, writes the payload, then makes it even again; a reader copies the payload between two
reads of an equal, even sequence, so it never decodes a torn image, and the master never waits for a
reader. The payload is ``marshal`` data (written only by our own master, never by a peer), decoded only
when the sequence has changed.
"""

from __future__ import annotations

import marshal
import mmap
import struct
from typing import Any

# Sequence and payload length are separate 8-byte words, each written by its own aligned store: one
# 16-byte copy may store its halves in any order, which would let a reader pair an old sequence with
# a new length.
_WORD = struct.Struct("=Q")
_HEADER_SIZE = 16
_READ_TRIES = 1000

#: the table's keys with their nodes, and the master's counters (for the stats)
Snapshot = tuple[list[tuple[bytes, list[tuple[Any, ...]]]], dict[str, int]]


class TableImage:
    """A fixed-capacity, single-writer, many-reader published snapshot."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._map = mmap.mmap(-1, _HEADER_SIZE + capacity)
        self._seq = 0

    def publish(self, snapshot: Snapshot) -> bool:
        """Write a new snapshot; False (and nothing written) if it does not fit."""
        payload = marshal.dumps(snapshot)
        if len(payload) > self.capacity:
            return False
        self._seq += 1
        _WORD.pack_into(self._map, 0, self._seq)  # odd: a write is under way
        _WORD.pack_into(self._map, 8, len(payload))
        self._map[_HEADER_SIZE : _HEADER_SIZE + len(payload)] = payload
        self._seq += 1
        _WORD.pack_into(self._map, 0, self._seq)  # even again: complete
        return True

    @property
    def sequence(self) -> int:
        """Cheap check for readers: has anything been published since?"""
        return int(_WORD.unpack_from(self._map, 0)[0])

    def read(self) -> tuple[int, Snapshot] | None:
        """The latest complete snapshot and its sequence, or None if none was ever published."""
        for _ in range(_READ_TRIES):
            (seq,) = _WORD.unpack_from(self._map, 0)
            if seq == 0:
                return None
            if seq % 2:
                continue
            (length,) = _WORD.unpack_from(self._map, 8)
            payload = self._map[_HEADER_SIZE : _HEADER_SIZE + min(length, self.capacity)]
            if _WORD.unpack_from(self._map, 0)[0] == seq:
                data: Any = marshal.loads(payload)
                return seq, data
        return None
