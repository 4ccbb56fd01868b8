"""RequestReader, routing_key and content_length.

Every valid input goes through ``tr()``: fed whole, one byte at a time (NEED_DATA until the head is
complete) and with trailing data (which must come out as Body). Fixture files under ``data/`` add
request cases shared with other implementations; hypothesis checks "parses or raises
RemoteProtocolError" for arbitrary bytes in arbitrary chunks.
"""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from uwsgirouter.protocol import (
    MAX_VARS_SIZE,
    NEED_DATA,
    Body,
    ConnectionClosed,
    EndOfInput,
    LocalProtocolError,
    NeedData,
    RemoteProtocolError,
    RequestHead,
    RequestReader,
    content_length,
    decode_vars,
    encode_packet,
    routing_key,
    whole_head,
)

DATA = Path(__file__).parent / "data"
FAST = settings(max_examples=300, deadline=None)
TRAILING = b"TRAILING\x00DATA"

Event = RequestHead | Body | EndOfInput | ConnectionClosed
Pairs = list[tuple[bytes, bytes]]


def drain(reader: RequestReader) -> list[Event]:
    """Pull events until NEED_DATA or a terminal event."""
    events: list[Event] = []
    while True:
        event = reader.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)
        if isinstance(event, EndOfInput | ConnectionClosed):
            return events


def feed(chunks: list[bytes], max_vars_size: int = MAX_VARS_SIZE) -> list[Event]:
    """Feed the non-empty ``chunks`` then EOF, draining after each; return every event."""
    reader = RequestReader(max_vars_size)
    events: list[Event] = []
    for chunk in [*filter(None, chunks), b""]:
        reader.receive_data(chunk)
        events += drain(reader)
    return events


def tr(packet: bytes, body: bytes = b"", max_vars_size: int = MAX_VARS_SIZE) -> RequestHead:
    """Check ``packet + body`` three ways and return the head for further assertions."""
    data = packet + body

    # 1. whole
    reader = RequestReader(max_vars_size)
    reader.receive_data(data)
    head = reader.next_event()
    assert isinstance(head, RequestHead)
    assert head.raw == packet
    assert (head.modifier1, head.modifier2) == (packet[0], packet[3])
    assert head.vars == tuple(decode_vars(packet[4:]))
    assert reader.head_complete
    if body:
        assert reader.next_event() == Body(body)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_event() == EndOfInput()
    assert reader.next_event() == EndOfInput()

    # 2. one byte at a time
    reader = RequestReader(max_vars_size)
    for i in range(len(data)):
        reader.receive_data(data[i : i + 1])
        if i + 1 < len(packet):
            assert reader.next_event() is NEED_DATA
            assert not reader.head_complete
        elif i + 1 == len(packet):
            assert reader.next_event() == head
        else:
            assert reader.next_event() == Body(data[i : i + 1])
        assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_event() == EndOfInput()

    # 3. with trailing data: anything after the vars block is body
    reader = RequestReader(max_vars_size)
    reader.receive_data(data + TRAILING)
    assert reader.next_event() == head
    assert reader.next_event() == Body(body + TRAILING)
    assert reader.next_event() is NEED_DATA
    return head


def expect_error(data: bytes, message: str, status: int, max_vars_size: int = MAX_VARS_SIZE) -> None:
    """``data`` then EOF must fail, whole and byte by byte, and the reader must stay failed."""
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = RequestReader(max_vars_size)
        with pytest.raises(RemoteProtocolError) as info:
            for chunk in [*chunks, b""]:
                reader.receive_data(chunk)
                drain(reader)
        assert message in str(info.value)
        assert "error state" not in str(info.value)
        assert info.value.error_status_hint == status
        with pytest.raises(RemoteProtocolError, match="error state") as again:
            reader.next_event()
        assert again.value.error_status_hint == status
        with pytest.raises(RemoteProtocolError, match="error state"):
            reader.receive_data(b"more")
        assert not reader.head_complete


# --- the reader ------------------------------------------------------------------------------------


def test_simple_request() -> None:
    head = tr(encode_packet([(b"REQUEST_METHOD", b"GET"), (b"HTTP_HOST", b"example.com")]))
    assert head.vars == ((b"REQUEST_METHOD", b"GET"), (b"HTTP_HOST", b"example.com"))
    assert head.get(b"HTTP_HOST") == b"example.com"
    assert head.get(b"MISSING") is None


def test_modifiers_and_empty_vars_block() -> None:
    head = tr(encode_packet([], modifier1=5, modifier2=255), b"body")
    assert (head.modifier1, head.modifier2, head.vars, head.raw) == (5, 255, (), b"\x05\x00\x00\xff")


def test_duplicates_are_kept_and_get_returns_the_last() -> None:
    pairs = [(b"A", b"1"), (b"B", b""), (b"A", b"2")]
    head = tr(encode_packet(pairs), b"x")
    assert head.vars == tuple(pairs)
    assert head.get(b"A") == b"2"
    assert head.get(b"B") == b""


def test_head_repr_leaves_out_raw() -> None:
    head = tr(encode_packet([(b"K", b"V")]))
    assert "raw" not in repr(head)
    assert "b'K'" in repr(head)


def test_bodies_accumulate_until_asked_for() -> None:
    reader = RequestReader()
    reader.receive_data(encode_packet([(b"K", b"V")]))
    assert isinstance(reader.next_event(), RequestHead)
    assert reader.next_event() is NEED_DATA
    for chunk in (b"a", b"bc", b"def"):
        reader.receive_data(chunk)
    reader.receive_data(b"")
    assert reader.next_event() == Body(b"abcdef")
    assert reader.next_event() == EndOfInput()


def test_single_body_chunk_is_not_copied() -> None:
    reader = RequestReader()
    reader.receive_data(encode_packet([]))
    assert isinstance(reader.next_event(), RequestHead)
    chunk = b"x" * 1000
    reader.receive_data(chunk)
    body = reader.next_event()
    assert isinstance(body, Body)
    assert body.data is chunk


def test_head_split_across_reads_with_body_in_the_last_one() -> None:
    packet = encode_packet([(b"HTTP_HOST", b"example.com")])
    assert feed([packet[:2], packet[2:9], packet[9:] + b"body", b"more"]) == [
        RequestHead(0, 0, ((b"HTTP_HOST", b"example.com"),), packet),
        Body(b"body"),
        Body(b"more"),
        EndOfInput(),
    ]


def test_bytes_like_input_is_copied() -> None:
    packet = bytearray(encode_packet([(b"K", b"V")]))
    reader = RequestReader()
    reader.receive_data(memoryview(packet))
    packet[:] = b"\xff" * len(packet)
    head = reader.next_event()
    assert isinstance(head, RequestHead)
    assert head.vars == ((b"K", b"V"),)
    assert type(head.raw) is bytes


def test_eof_before_any_byte_is_a_silent_close() -> None:
    reader = RequestReader()
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_event() == ConnectionClosed()
    assert reader.next_event() == ConnectionClosed()
    reader.receive_data(b"")  # repeated EOF is harmless
    assert reader.next_event() == ConnectionClosed()
    assert not reader.head_complete


def test_eof_right_after_head() -> None:
    packet = encode_packet([(b"K", b"V")])
    assert feed([packet]) == [RequestHead(0, 0, ((b"K", b"V"),), packet), EndOfInput()]


def test_data_after_eof_is_api_misuse() -> None:
    reader = RequestReader()
    reader.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after EOF"):
        reader.receive_data(b"x")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00", "closed after 1 of 4 header bytes"),
        (b"\x00\x05\x00", "closed after 3 of 4 header bytes"),
        (b"\x00\x05\x00\x00", "closed after 0 of 5 vars bytes"),
        (b"\x00\x05\x00\x00\x01\x00K\x00", "closed after 4 of 5 vars bytes"),
        (b"\x00\x04\x00\x00\x00\x00\x00\x00", "empty key at offset 0"),
        (b"\x00\x06\x00\x00\x01\x00K\x05\x00v" + b"body", "value of 5 bytes at offset 3 runs past the end (6)"),
    ],
)
def test_bad_requests(data: bytes, message: str) -> None:
    expect_error(data, message, 400)


def test_vars_block_over_the_limit_is_431() -> None:
    expect_error(encode_packet([(b"K", b"v" * 12)]), "vars block of 17 bytes is over the limit of 16", 431, 16)
    expect_error(b"\x00\x01\x00\x00", "over the limit of 0", 431, 0)
    tr(encode_packet([(b"K", b"v" * 11)]), b"body", max_vars_size=16)
    tr(encode_packet([]), b"body", max_vars_size=0)


def test_oversized_head_is_refused_as_soon_as_the_header_is_in() -> None:
    reader = RequestReader(max_vars_size=100)
    reader.receive_data(b"\x00\xff")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\xff")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\x00")  # the header is complete: 65535 > 100
    with pytest.raises(RemoteProtocolError) as info:
        reader.receive_data(b"x" * 100)  # nothing more is buffered
    assert str(info.value) == "vars block of 65535 bytes is over the limit of 100"
    assert info.value.error_status_hint == 431
    with pytest.raises(RemoteProtocolError, match="error state: vars block of 65535 bytes") as again:
        reader.next_event()
    assert again.value.error_status_hint == 431


@pytest.mark.parametrize("max_vars_size", [-1, MAX_VARS_SIZE + 1])
def test_max_vars_size_must_fit_the_wire(max_vars_size: int) -> None:
    with pytest.raises(LocalProtocolError, match="max_vars_size"):
        RequestReader(max_vars_size)


def test_need_data_sentinel() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert copy.copy(NEED_DATA) is NEED_DATA
    assert copy.deepcopy(NEED_DATA) is NEED_DATA
    assert pickle.loads(pickle.dumps(NEED_DATA)) is NEED_DATA


# --- routing_key ---------------------------------------------------------------------------------

FRK = b"UWSGI_FASTROUTER_KEY"
HOST = b"HTTP_HOST"
NAME = b"SERVER_NAME"


@pytest.mark.parametrize(
    ("pairs", "key"),
    [
        ([], b""),
        ([(b"REQUEST_URI", b"/")], b""),
        ([(NAME, b"name")], b"name"),
        ([(HOST, b"host")], b"host"),
        ([(FRK, b"frk")], b"frk"),
        # priority FRK > HTTP_HOST > SERVER_NAME in every order
        ([(NAME, b"name"), (HOST, b"host")], b"host"),
        ([(HOST, b"host"), (NAME, b"name")], b"host"),
        ([(FRK, b"frk"), (HOST, b"host"), (NAME, b"name")], b"frk"),
        ([(NAME, b"name"), (HOST, b"host"), (FRK, b"frk")], b"frk"),
        ([(HOST, b"host"), (FRK, b"frk"), (NAME, b"name")], b"frk"),
        ([(NAME, b"name"), (FRK, b"frk"), (HOST, b"host")], b"frk"),
        # duplicates: the last HTTP_HOST or FRK wins, SERVER_NAME keeps the first non-empty one
        ([(HOST, b"h1"), (HOST, b"h2")], b"h2"),
        ([(FRK, b"f1"), (HOST, b"host"), (FRK, b"f2")], b"f2"),
        ([(NAME, b"n1"), (NAME, b"n2")], b"n1"),
        # empty values
        ([(NAME, b"name"), (HOST, b"")], b""),  # an empty HTTP_HOST after SERVER_NAME wipes the key
        ([(HOST, b""), (NAME, b"name")], b"name"),  # ... before it, SERVER_NAME still fills the empty key
        ([(NAME, b""), (HOST, b"")], b""),
        ([(HOST, b"host"), (FRK, b"")], b""),  # an empty FRK still locks...
        ([(FRK, b""), (HOST, b"host")], b""),
        ([(FRK, b""), (NAME, b"name")], b"name"),  # ... but SERVER_NAME fills any empty key
        ([(FRK, b""), (NAME, b"name"), (HOST, b"host")], b"name"),
        # values over 255 bytes are ignored as if absent; 255 is fine
        ([(NAME, b"n" * 255)], b"n" * 255),
        ([(HOST, b"h" * 255)], b"h" * 255),
        ([(FRK, b"f" * 255)], b"f" * 255),
        ([(NAME, b"n" * 256)], b""),
        ([(NAME, b"name"), (HOST, b"h" * 256)], b"name"),
        ([(HOST, b"h" * 256), (NAME, b"name")], b"name"),
        ([(FRK, b"f" * 256), (HOST, b"host")], b"host"),
        ([(FRK, b"frk"), (FRK, b"f" * 256)], b"frk"),
        ([(HOST, b"host"), (FRK, b"f" * 256)], b"host"),
        # the key is returned verbatim: case, port, odd bytes
        ([(HOST, b"Example.COM:8080")], b"Example.COM:8080"),
        ([(HOST, b"../x/\x00")], b"../x/\x00"),
        # names are matched exactly
        ([(b"http_host", b"x"), (b"HTTP_HOST_", b"y"), (b"SERVER_NAME ", b"z")], b""),
    ],
)
def test_routing_key(pairs: Pairs, key: bytes) -> None:
    assert routing_key(pairs) == key
    assert routing_key(tuple(pairs)) == key


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [FRK, HOST, NAME, b"CONTENT_LENGTH", b"OTHER", b"HTTP_HOSX", b"SERVER_NAMF", b"A" * 20, b"OTHERS"]
            ),
            st.sampled_from([b"", b"a", b"b", b"12", b"x" * 255, b"x" * 256, b"1" * 19]),
        ),
        max_size=10,
    ),
)
def test_a_head_reads_its_vars_from_the_raw_bytes_as_the_parsed_pairs_say(pairs: Pairs) -> None:
    """The reader leaves the vars unparsed; what the router reads from ``raw`` (get, routing_key, content_length)
    is what the parsed pairs give, near-miss names and over-long values included."""
    head = tr(encode_packet(pairs))
    assert head.vars == tuple(pairs)
    assert head.routing_key() == routing_key(pairs)
    for name in (FRK, HOST, NAME, b"CONTENT_LENGTH", b"OTHER", b"MISSING"):
        assert head.get(name) == next((v for k, v in reversed(pairs) if k == name), None)
    try:
        expected: int | str = content_length(pairs)
    except RemoteProtocolError as exc:
        expected = str(exc)
    try:
        got: int | str = head.content_length()
    except RemoteProtocolError as exc:
        got = str(exc)
    assert got == expected


def test_long_keys_and_values_are_read_from_the_raw_head_by_both_length_bytes() -> None:
    """Lengths of 256 bytes and more use the high byte: the raw readers and whole_head must read it."""
    long_key = b"X" * 300
    pairs = [(long_key, b"v" * 280), (HOST, b"h" * 255), (b"CONTENT_LENGTH", b"7"), (b"Y" * 265, b"late")]
    packet = encode_packet(pairs)
    head = whole_head(packet + b"body")
    assert head is not None and head.raw == packet
    assert head.get(long_key) == b"v" * 280
    assert head.get(b"Y" * 265) == b"late"
    assert head.routing_key() == b"h" * 255
    assert head.content_length() == 7
    assert whole_head(packet[:-1]) is None


def test_a_head_compares_and_shows_itself_by_its_vars() -> None:
    packet = encode_packet([(HOST, b"example.com")], modifier1=5)
    head = tr(packet)
    assert head == RequestHead(5, 0, ((HOST, b"example.com"),), packet)
    assert head != RequestHead(5, 1, ((HOST, b"example.com"),), packet)
    assert head != "a string"
    assert hash(head) == hash(RequestHead(5, 0, None, packet))
    assert repr(head) == "RequestHead(modifier1=5, modifier2=0, vars=((b'HTTP_HOST', b'example.com'),))"


def test_routing_key_from_a_parsed_request() -> None:
    head = tr(encode_packet([(NAME, b"name"), (b"X", b"y"), (HOST, b"www.example.com")]))
    assert routing_key(head.vars) == b"www.example.com"


@FAST
@given(
    st.lists(
        st.tuples(st.sampled_from([FRK, HOST, NAME, b"OTHER"]), st.sampled_from([b"", b"a", b"b", b"x" * 256])),
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_routing_key_priority_is_independent_of_order(pairs: Pairs, rnd: random.Random) -> None:
    """With at most one non-empty, short value per name the result never depends on the order."""
    seen: dict[bytes, bytes] = {}
    unique = []
    for name, value in pairs:
        if name not in seen and value and len(value) <= 255:
            seen[name] = value
            unique.append((name, value))
    expected = seen.get(FRK) or seen.get(HOST) or seen.get(NAME) or b""
    rnd.shuffle(unique)
    assert routing_key(unique) == expected


# --- content_length ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "length"),
    [
        ([], 0),
        ([(b"CONTENT_LENGTH", b"")], 0),
        ([(b"CONTENT_LENGTH", b"0")], 0),
        ([(b"CONTENT_LENGTH", b"11")], 11),
        ([(b"CONTENT_LENGTH", b"007")], 7),
        ([(b"CONTENT_LENGTH", b"9" * 18)], 10**18 - 1),
        ([(b"CONTENT_LENGTH", b"x"), (b"CONTENT_LENGTH", b"5")], 5),
        ([(b"CONTENT_LENGTH", b"5"), (b"OTHER", b"x")], 5),
        ([(b"CONTENT_LENGTH", b"5"), (b"CONTENT_LENGTH", b"")], 0),
    ],
)
def test_content_length(pairs: Pairs, length: int) -> None:
    assert content_length(pairs) == length


@pytest.mark.parametrize("value", [b"-1", b"+1", b" 1", b"1 ", b"1.0", b"0x10", b"1_000", b"\xd9\xa1", b"1" * 19])
def test_content_length_invalid(value: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="invalid CONTENT_LENGTH") as info:
        content_length([(b"CONTENT_LENGTH", value)])
    assert info.value.error_status_hint == 400


# --- fixture files ---------------------------------------------------------------------------------


def load_cases(subdir: str) -> list[Any]:
    """One ``pytest.param(data, expect, id=name)`` per request fixture in ``data/<subdir>``."""
    manifest: dict[str, dict[str, Any]] = json.loads((DATA / subdir / "cases.json").read_text())
    return [
        pytest.param((DATA / subdir / f"{name}.bin").read_bytes(), expect, id=name)
        for name, expect in sorted(manifest.items())
        if expect["kind"] == "request"
    ]


def latin1(text: str) -> bytes:
    return text.encode("latin-1")


@pytest.mark.parametrize(("data", "expect"), load_cases("valid"))
def test_valid_request_fixture(data: bytes, expect: dict[str, Any]) -> None:
    body = latin1(expect["body"])
    packet = data[: len(data) - len(body)]
    head = tr(packet, body, expect["max_vars_size"])
    assert (head.modifier1, head.modifier2) == (expect["modifier1"], expect["modifier2"])
    assert head.vars == tuple((latin1(k), latin1(v)) for k, v in expect["vars"])
    assert routing_key(head.vars) == latin1(expect["routing_key"])
    assert content_length(head.vars) == expect["content_length"]


@pytest.mark.parametrize(("data", "expect"), load_cases("invalid"))
def test_invalid_request_fixture(data: bytes, expect: dict[str, Any]) -> None:
    expect_error(data, expect["error"], expect["status"], expect["max_vars_size"])


# --- properties ------------------------------------------------------------------------------------


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at ``cuts``, dropping empty pieces (``b""`` would mean EOF)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def outcome(chunks: list[bytes], max_vars_size: int) -> list[Event] | tuple[str, int]:
    try:
        return feed(chunks, max_vars_size)
    except RemoteProtocolError as exc:
        return ("error", exc.error_status_hint)


def check_events(data: bytes, events: list[Event]) -> None:
    """A successful parse accounts for every input byte."""
    if not data:
        assert events == [ConnectionClosed()]
        return
    head, *bodies, end = events
    assert isinstance(head, RequestHead)
    assert end == EndOfInput()
    assert all(isinstance(body, Body) and body.data for body in bodies)
    assert head.raw + b"".join(b.data for b in bodies if isinstance(b, Body)) == data
    assert head.vars == tuple(decode_vars(head.raw[4:]))


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A valid request, sometimes with one byte corrupted: random bytes alone rarely parse."""
    pairs = draw(st.lists(st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=8)), max_size=6))
    data = encode_packet(pairs) + draw(st.binary(max_size=8))
    where = draw(st.integers(0, len(data)))
    if where < len(data):
        data = data[:where] + bytes([data[where] ^ draw(st.integers(1, 255))]) + data[where + 1 :]
    return data


@FAST
@given(st.one_of(st.binary(max_size=120), near_valid()), st.data(), st.sampled_from([MAX_VARS_SIZE, 40, 0]))
def test_reader_parses_or_raises_remote_error(data: bytes, draw: st.DataObject, max_vars_size: int) -> None:
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=6))
    whole = outcome([data], max_vars_size)
    pieces = outcome(chunked(data, cuts), max_vars_size)
    if isinstance(whole, tuple):
        assert pieces == whole  # same failure, same status hint
    else:
        check_events(data, whole)
        assert isinstance(pieces, list)
        check_events(data, pieces)
        assert pieces[0] == whole[0]


@FAST
@given(st.one_of(st.binary(max_size=120), near_valid()), st.integers(0, 130))
def test_whole_head_takes_a_complete_head_as_the_reader_would_and_leaves_the_rest(data: bytes, cut: int) -> None:
    """The router's first-read shortcut: a head the read holds whole is the reader's head (or the reader's error);
    a head cut short is None, never an error, so the reader gets the bytes."""
    data = data[:cut]
    reader = RequestReader()
    reader.receive_data(data)
    try:
        expected: Any = reader.next_event()
    except RemoteProtocolError as exc:
        expected = ("error", str(exc), exc.error_status_hint)
    try:
        got: Any = whole_head(data)
    except RemoteProtocolError as exc:
        got = ("error", str(exc), exc.error_status_hint)
    if expected is NEED_DATA or isinstance(expected, ConnectionClosed):  # (b"" is the end of input to a reader)
        assert got is None
    else:
        assert got == expected
        if isinstance(got, RequestHead):
            assert data.startswith(got.raw)


def test_whole_head_of_a_read_that_is_exactly_the_head_keeps_the_same_bytes() -> None:
    packet = encode_packet([(HOST, b"example.com")])
    head = whole_head(packet)
    assert head is not None and head.raw is packet, "no copy of a head that is the whole read"
    assert whole_head(packet[:3]) is None and whole_head(b"") is None


@FAST
@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=16), st.binary(max_size=32)), max_size=12),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=64),
    st.data(),
)
def test_valid_requests_in_random_chunks(
    pairs: Pairs, modifier1: int, modifier2: int, body: bytes, draw: st.DataObject
) -> None:
    packet = encode_packet(pairs, modifier1, modifier2)
    data = packet + body
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=8))
    events = feed(chunked(data, cuts))
    check_events(data, events)
    assert events[0] == RequestHead(modifier1, modifier2, tuple(pairs), packet)


# --- exact edges (each one a mutant tools/mutation found surviving) --------------------------------


def test_head_complete_is_false_then_true() -> None:
    reader = RequestReader()
    assert reader.head_complete is False
    reader.receive_data(encode_packet([(b"K", b"V")]))
    assert reader.head_complete is False  # not before next_event returned the head
    assert isinstance(reader.next_event(), RequestHead)
    assert reader.head_complete is True


def test_head_received_in_pieces_has_immutable_raw_bytes() -> None:
    packet = encode_packet([(b"HTTP_HOST", b"example.com")])
    reader = RequestReader()
    for i in range(len(packet)):
        reader.receive_data(packet[i : i + 1])
    head = reader.next_event()
    assert isinstance(head, RequestHead)
    assert type(head.raw) is bytes and head.raw == packet


def test_data_after_eof_message() -> None:
    reader = RequestReader()
    reader.receive_data(b"")
    with pytest.raises(LocalProtocolError) as info:
        reader.receive_data(b"x")
    assert str(info.value) == "receive_data() got data after EOF"


def test_key_past_the_end_counts_offsets_from_the_vars_block() -> None:
    expect_error(b"\x00\x03\x00\x00\x05\x00K", "vars block: key of 5 bytes at offset 0 runs past the end (3)", 400)


def test_content_length_error_shows_at_most_40_bytes() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        content_length([(b"CONTENT_LENGTH", b"1" * 30 + b"x" * 70)])
    assert str(info.value) == f"invalid CONTENT_LENGTH {b'1' * 30 + b'x' * 10!r}"
