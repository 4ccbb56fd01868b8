"""Post-buffering (``--fastrouter-post-buffering N``): hold a request body until it is complete.

Up to N bytes stay in memory; a larger body goes to a temporary file that is unlinked from the start
(O_TMPFILE where the kernel has it), so nothing is ever left on disk, even when the client goes away
midway or the router is killed. The node is connected only once the whole body is here, so a slow
upload never holds one of the application's workers.
"""

from __future__ import annotations

import tempfile
from typing import IO


class BodyBuffer:
    """``expected`` body bytes: memory up to ``memory_limit``, then a temporary file."""

    __slots__ = ("directory", "file", "left", "memory", "memory_limit", "read_offset")

    def __init__(self, expected: int, memory_limit: int, directory: str | None = None) -> None:
        self.left = expected
        self.memory_limit = memory_limit
        self.directory = directory
        self.memory = bytearray()
        self.file: IO[bytes] | None = None
        self.read_offset = 0

    @property
    def complete(self) -> bool:
        return self.left == 0

    @property
    def spilled(self) -> bool:
        return self.file is not None

    def feed(self, data: bytes) -> bytes:
        """Take body bytes; returns whatever came after the body (relayed after it, as uWSGI does)."""
        take, extra = data[: self.left], data[self.left :]
        self.left -= len(take)
        if self.file is None and len(self.memory) + len(take) <= self.memory_limit:
            self.memory += take
            return extra
        if self.file is None:
            # Unbuffered: a full disk (ENOSPC) fails the write that hit it, which the session answers with
            # an error, instead of a flush at close time that nothing could answer for.
            self.file = tempfile.TemporaryFile(dir=self.directory, buffering=0)  # noqa: SIM115 - see close()
            self._write(self.memory)
            self.memory = bytearray()
        self._write(take)
        return extra

    def _write(self, data: bytes | bytearray) -> None:
        assert self.file is not None
        view = memoryview(data)
        while view:
            written = self.file.write(view)
            view = view[written or 0 :]

    def next_chunk(self, size: int) -> bytes:
        """The next ``size`` bytes of a spilled body, to send; b"" once it is all sent."""
        assert self.file is not None
        self.file.seek(self.read_offset)
        chunk = self.file.read(size)
        self.read_offset += len(chunk)
        return chunk

    def close(self) -> None:
        """Drop the body; the unlinked file's space is freed with its descriptor (closing cannot fail)."""
        if self.file is not None:
            file, self.file = self.file, None
            try:
                file.close()
            except OSError:
                pass
