"""The uwsgi packet: a 4-byte header and a block of length-prefixed vars.

Wire format (uWSGI ``struct uwsgi_header``, packed)::

    byte 0      modifier1 (u8)
    bytes 1-2   size of the vars block (u16, little-endian; the body is not counted)
    byte 3      modifier2 (u8)

The vars block is a run of records with no terminator and no padding::

    u16le keylen | key | u16le vallen | value

An empty key is an error, an empty value is legal, a record that runs past the end of the block is
an error. Duplicate keys are delivered in order; lookups let the last one win.

Everything here is a pure function on bytes. ``_parse_vars`` is the one hot loop shared by the
request reader and the subscription decoder; it slices records straight out of the caller's
``bytes`` so no intermediate copy of the block is made.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "HEADER_SIZE",
    "MAX_VARS_SIZE",
    "SUBSCRIPTION_MODIFIER1",
    "Header",
    "decode_header",
    "decode_vars",
    "encode_header",
    "encode_packet",
    "encode_vars",
]

HEADER_SIZE: Final = 4
#: The size field is 16 bits wide, so no vars block (and no key or value) can be longer.
MAX_VARS_SIZE: Final = 65535
#: modifier1 of a subscription datagram (receivers ignore it, senders always use it).
SUBSCRIPTION_MODIFIER1 = 224

_HEADER = struct.Struct("<BHB")
_U16 = struct.Struct("<H")

BytesLike = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded packet header; ``size`` is the length of the vars block that follows it."""

    modifier1: int
    size: int
    modifier2: int


def decode_header(data: BytesLike) -> Header:
    """Decode the first 4 bytes of ``data`` (anything after them is ignored).

    Raises:
        RemoteProtocolError: ``data`` is shorter than 4 bytes.
    """
    if len(data) < HEADER_SIZE:
        raise RemoteProtocolError(f"uwsgi header needs {HEADER_SIZE} bytes, got {len(data)}")
    modifier1, size, modifier2 = _HEADER.unpack_from(data)
    return Header(modifier1, size, modifier2)


def encode_header(modifier1: int, size: int, modifier2: int) -> bytes:
    """Encode a header.

    Raises:
        LocalProtocolError: a modifier is outside 0..255 or ``size`` outside 0..65535.
    """
    if not 0 <= modifier1 <= 255:
        raise LocalProtocolError(f"modifier1 {modifier1} is outside 0..255")
    if not 0 <= modifier2 <= 255:
        raise LocalProtocolError(f"modifier2 {modifier2} is outside 0..255")
    if not 0 <= size <= MAX_VARS_SIZE:
        raise LocalProtocolError(f"vars block size {size} is outside 0..{MAX_VARS_SIZE}")
    return _HEADER.pack(modifier1, size, modifier2)


def _parse_vars(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    """Parse the vars block ``data[start:end]``; error offsets are relative to ``start``.

    Taking bounds instead of a slice lets the request reader parse the vars inside the raw packet it
    keeps anyway, without copying the block first. The u16 lengths are read by indexing two bytes:
    measured ~15 % faster than ``struct.unpack_from`` on a typical nginx request.
    """
    return _walk_vars(data, start, end, True)


def _check_vars(data: bytes, start: int, end: int) -> None:
    """Raise what ``_parse_vars`` would for a malformed block, without making a single object for a good one (the
    router reads only a few vars of a request, and those from the raw bytes: ``RequestHead.get``)."""
    _walk_vars(data, start, end, False)


def _walk_vars(data: bytes, start: int, end: int, collect: bool) -> list[tuple[bytes, bytes]]:
    pairs: list[tuple[bytes, bytes]] = []
    pos = start
    while pos < end:
        if pos + 2 > end:
            raise RemoteProtocolError(f"vars block: truncated key length at offset {pos - start}")
        key_len = data[pos] | data[pos + 1] << 8
        if not key_len:
            raise RemoteProtocolError(f"vars block: empty key at offset {pos - start}")
        key_start = pos + 2
        key_end = key_start + key_len
        if key_end + 2 > end:
            if key_end > end:
                raise RemoteProtocolError(
                    f"vars block: key of {key_len} bytes at offset {pos - start} runs past the end ({end - start})"
                )
            raise RemoteProtocolError(f"vars block: truncated value length at offset {key_end - start}")
        value_len = data[key_end] | data[key_end + 1] << 8
        value_start = key_end + 2
        pos = value_start + value_len
        if pos > end:
            raise RemoteProtocolError(
                f"vars block: value of {value_len} bytes at offset {key_end - start} runs past the end ({end - start})"
            )
        if collect:
            pairs.append((data[key_start:key_end], data[value_start:pos]))
    return pairs


def decode_vars(block: BytesLike) -> list[tuple[bytes, bytes]]:
    """Decode a whole vars block into ``(key, value)`` pairs, in wire order, duplicates kept.

    Raises:
        RemoteProtocolError: the block is malformed; the message says what is wrong and at which offset.
    """
    data = block if type(block) is bytes else bytes(block)
    return _parse_vars(data, 0, len(data))


def encode_vars(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Encode ``(key, value)`` pairs into a vars block, in the given order.

    Raises:
        LocalProtocolError: a key is empty, a key or value is longer than 65535 bytes, or the block
            would be longer than 65535 bytes.
    """
    pack = _U16.pack
    parts: list[bytes] = []
    for key, value in pairs:
        key_len = len(key)
        value_len = len(value)
        if not key_len:
            raise LocalProtocolError("vars block: a key cannot be empty")
        if key_len > MAX_VARS_SIZE:
            raise LocalProtocolError(f"vars block: key of {key_len} bytes is longer than {MAX_VARS_SIZE}")
        if value_len > MAX_VARS_SIZE:
            raise LocalProtocolError(f"vars block: value of {key!r:.40} is {value_len} bytes, over {MAX_VARS_SIZE}")
        parts += (pack(key_len), key, pack(value_len), value)
    block = b"".join(parts)
    if len(block) > MAX_VARS_SIZE:
        raise LocalProtocolError(f"vars block of {len(block)} bytes is longer than {MAX_VARS_SIZE}")
    return block


def encode_packet(pairs: Iterable[tuple[bytes, bytes]], modifier1: int = 0, modifier2: int = 0) -> bytes:
    """Encode a header plus vars block (a request without body, or any other packet).

    Raises:
        LocalProtocolError: as ``encode_header`` and ``encode_vars``.
    """
    block = encode_vars(pairs)
    return encode_header(modifier1, len(block), modifier2) + block
