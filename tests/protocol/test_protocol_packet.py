"""Header and vars block codec: examples, every error branch, and hypothesis properties."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from uwsgirouter.protocol import (
    HEADER_SIZE,
    MAX_VARS_SIZE,
    SUBSCRIPTION_MODIFIER1,
    Header,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    decode_header,
    decode_vars,
    encode_header,
    encode_packet,
    encode_vars,
)

FAST = settings(max_examples=300, deadline=None)

pairs_strategy = st.lists(st.tuples(st.binary(min_size=1, max_size=24), st.binary(max_size=48)), max_size=24)


def record(key: bytes, value: bytes) -> bytes:
    return struct.pack("<H", len(key)) + key + struct.pack("<H", len(value)) + value


def test_constants() -> None:
    assert (HEADER_SIZE, MAX_VARS_SIZE, SUBSCRIPTION_MODIFIER1) == (4, 65535, 224)


def test_errors_carry_a_status_hint() -> None:
    assert ProtocolError("x").error_status_hint == 400
    err = RemoteProtocolError("too big", error_status_hint=431)
    assert (str(err), err.error_status_hint) == ("too big", 431)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


def test_decode_header_is_little_endian_and_uses_only_four_bytes() -> None:
    assert decode_header(b"\x05\x34\x12\x07") == Header(modifier1=5, size=0x1234, modifier2=7)
    assert decode_header(b"\xe0\xff\xff\x01rest of packet") == Header(224, 65535, 1)
    assert decode_header(bytearray(b"\x00\x01\x00\x00")) == Header(0, 1, 0)
    assert decode_header(memoryview(b"\x00\x00\x01\xff")) == Header(0, 256, 255)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00"])
def test_decode_header_too_short(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match=f"needs 4 bytes, got {len(data)}"):
        decode_header(data)


def test_header_is_frozen() -> None:
    header = Header(0, 0, 0)
    with pytest.raises(AttributeError):
        header.size = 1  # type: ignore[misc]


def test_encode_header() -> None:
    assert encode_header(5, 0x1234, 7) == b"\x05\x34\x12\x07"
    assert encode_header(255, 65535, 255) == b"\xff\xff\xff\xff"
    assert encode_header(0, 0, 0) == b"\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("modifier1", "size", "modifier2", "message"),
    [
        (256, 0, 0, "modifier1 256"),
        (-1, 0, 0, "modifier1 -1"),
        (0, 0, 256, "modifier2 256"),
        (0, 0, -1, "modifier2 -1"),
        (0, 65536, 0, "size 65536"),
        (0, -1, 0, "size -1"),
    ],
)
def test_encode_header_out_of_range(modifier1: int, size: int, modifier2: int, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        encode_header(modifier1, size, modifier2)


def test_decode_vars_examples() -> None:
    assert decode_vars(b"") == []
    block = record(b"A", b"1") + record(b"B", b"") + record(b"A", b"2")
    assert decode_vars(block) == [(b"A", b"1"), (b"B", b""), (b"A", b"2")]
    assert decode_vars(bytearray(block)) == decode_vars(memoryview(block)) == decode_vars(block)
    assert all(type(k) is bytes and type(v) is bytes for k, v in decode_vars(bytearray(block)))
    assert decode_vars(record(b"K", b"\x00" * 300)) == [(b"K", b"\x00" * 300)]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x01", "truncated key length at offset 0"),
        (record(b"A", b"1") + b"\x01", "truncated key length at offset 6"),
        (b"\x00\x00\x00\x00", "empty key at offset 0"),
        (record(b"A", b"1") + record(b"", b"x"), "empty key at offset 6"),
        (b"\x03\x00ab", r"key of 3 bytes at offset 0 runs past the end \(4\)"),
        (b"\x02\x00ab", "truncated value length at offset 4"),
        (b"\x02\x00ab\x00", "truncated value length at offset 4"),
        (b"\x02\x00ab\x02\x00x", r"value of 2 bytes at offset 4 runs past the end \(7\)"),
        (b"\x01\x00a\xff\xff", r"value of 65535 bytes at offset 3 runs past the end \(5\)"),
    ],
)
def test_decode_vars_errors(block: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message) as info:
        decode_vars(block)
    assert info.value.error_status_hint == 400


def test_encode_vars() -> None:
    assert encode_vars([]) == b""
    assert encode_vars([(b"A", b"1"), (b"B", b"")]) == record(b"A", b"1") + record(b"B", b"")
    assert encode_vars(iter([(b"K", b"v")])) == record(b"K", b"v")
    largest = [(b"K", b"v" * (MAX_VARS_SIZE - 5))]
    assert len(encode_vars(largest)) == MAX_VARS_SIZE


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([(b"", b"x")], "key cannot be empty"),
        ([(b"k" * 65536, b"")], "key of 65536 bytes"),
        ([(b"K", b"v" * 65536)], "value of b'K' is 65536 bytes"),
        ([(b"K", b"v" * (MAX_VARS_SIZE - 4))], "vars block of 65536 bytes"),
    ],
)
def test_encode_vars_errors(pairs: list[tuple[bytes, bytes]], message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        encode_vars(pairs)


def test_encode_packet() -> None:
    packet = encode_packet([(b"HTTP_HOST", b"example.com")], modifier1=30, modifier2=2)
    assert packet == b"\x1e\x18\x00\x02" + record(b"HTTP_HOST", b"example.com")
    assert encode_packet([]) == b"\x00\x00\x00\x00"
    with pytest.raises(LocalProtocolError, match="modifier1 300"):
        encode_packet([], modifier1=300)
    with pytest.raises(LocalProtocolError, match="key cannot be empty"):
        encode_packet([(b"", b"")])


@FAST
@given(st.binary(max_size=200))
def test_decode_vars_parses_or_raises_remote_error(block: bytes) -> None:
    try:
        pairs = decode_vars(block)
    except RemoteProtocolError as exc:
        assert "vars block:" in str(exc)
    else:
        assert encode_vars(pairs) == block


@FAST
@given(pairs_strategy)
def test_vars_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    assert decode_vars(encode_vars(pairs)) == pairs


@FAST
@given(pairs_strategy, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=16))
def test_packet_round_trip(pairs: list[tuple[bytes, bytes]], modifier1: int, modifier2: int, body: bytes) -> None:
    packet = encode_packet(pairs, modifier1, modifier2)
    header = decode_header(packet + body)
    assert header == Header(modifier1, len(packet) - HEADER_SIZE, modifier2)
    assert decode_vars(packet[HEADER_SIZE : HEADER_SIZE + header.size]) == pairs


def test_fixtures_are_up_to_date() -> None:
    """The committed fixture files are exactly what make_fixtures.py generates."""
    script = Path(__file__).parent / "data" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("protocol_make_fixtures", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wanted: dict[Path, bytes] = module.build()
    for path, content in wanted.items():
        assert path.read_bytes() == content, f"{path} is stale: run {script}"
    for subdir in ("valid", "invalid"):
        present = set((script.parent / subdir).glob("*.bin"))
        assert present <= set(wanted), f"stray fixtures: {present - set(wanted)}"


# --- exact edges (each one a mutant tools/mutation found surviving) --------------------------------


@pytest.mark.parametrize(
    ("block", "message"),
    [
        # two bytes left: a whole key length, so the key runs past the end (not "truncated key length")
        (b"\x01\x00", "vars block: key of 1 bytes at offset 0 runs past the end (2)"),
        (record(b"A", b"1") + b"\x05\x00", "vars block: key of 5 bytes at offset 6 runs past the end (8)"),
        (record(b"A", b"1") + b"\x05", "vars block: truncated key length at offset 6"),
    ],
)
def test_decode_vars_error_messages_are_exact(block: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_vars(block)
    assert str(info.value) == message


def test_lengths_over_255_use_both_bytes_little_endian() -> None:
    pairs = [(b"k" * 300, b"v" * 700), (b"K" * 256, b"")]
    block = encode_vars(pairs)
    assert block[:2] == b"\x2c\x01"  # 300
    assert decode_vars(block) == pairs


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([(b"", b"x")], "vars block: a key cannot be empty"),
        # a key or value of exactly 65535 bytes is allowed by itself; only the whole block is too long
        ([(b"k" * MAX_VARS_SIZE, b"")], "vars block of 65539 bytes is longer than 65535"),
        ([(b"K", b"v" * MAX_VARS_SIZE)], "vars block of 65540 bytes is longer than 65535"),
    ],
)
def test_encode_vars_error_messages_are_exact(pairs: list[tuple[bytes, bytes]], message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_vars(pairs)
    assert str(info.value) == message
