"""wsgi.input against raw bytes: bounded by CONTENT_LENGTH, head bytes first, reads only what is asked."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings, strategies as st

from uwsgirouter.workers.environ import READ_CHUNK
from uwsgirouter.workers.wsgi import ClientDisconnected, InputStream


class FakeSocket:
    """Serves ``data`` in the given chunk sizes; records every recv size; then EOF or ``error``."""

    def __init__(self, data: bytes, chunks: list[int] | None = None, error: OSError | None = None) -> None:
        self.data = data
        self.pos = 0
        self.chunks = list(chunks or [])
        self.error = error
        self.asked: list[int] = []

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        if self.pos >= len(self.data):
            if self.error is not None:
                raise self.error
            return b""
        n = min(size, self.chunks.pop(0) if self.chunks else size)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def stream(body: bytes, length: int, initial: bytes = b"", **kwargs: object) -> tuple[InputStream, FakeSocket]:
    sock = FakeSocket(body, **kwargs)  # type: ignore[arg-type]
    return InputStream(sock.recv, initial, length), sock


def test_read_all_serves_head_bytes_first_and_stops_at_content_length() -> None:
    s, sock = stream(b"defghTRAILING", 8, initial=b"abc")
    assert s.read() == b"abcdefgh"
    assert s.read() == b""
    assert sock.pos == 5  # never asked for the trailing bytes
    assert sum(sock.asked) == 5


def test_initial_bytes_past_content_length_are_dropped() -> None:
    s, sock = stream(b"", 3, initial=b"abcdef")
    assert s.read(10) == b"abc"
    assert sock.asked == []
    assert s.unread == 0


def test_read_n_blocks_until_n_bytes_or_end() -> None:
    s, _ = stream(b"0123456789", 10, chunks=[1, 2, 3])
    assert s.read(4) == b"0123"
    assert s.read(0) == b""
    assert s.read(100) == b"456789"
    assert s.read(1) == b""


def test_read_none_and_negative_mean_everything() -> None:
    s, _ = stream(b"xyz", 3)
    assert s.read(None) == b"xyz"
    s, _ = stream(b"xyz", 3)
    assert s.read(-5) == b"xyz"


def test_large_body_is_received_in_bounded_chunks() -> None:
    body = bytes(range(256)) * 5000
    s, sock = stream(body, len(body))
    assert s.read() == body
    assert max(sock.asked) <= READ_CHUNK


def test_nothing_is_received_until_the_app_reads() -> None:
    s, sock = stream(b"abc", 3)
    assert sock.asked == []
    assert s.unread == 3


def test_readline_variants() -> None:
    body = b"one\ntwo\n\nthree"
    s, _ = stream(body, len(body), chunks=[2, 1, 5])
    assert s.readline() == b"one\n"
    assert s.readline(2) == b"tw"
    assert s.readline() == b"o\n"
    assert s.readline() == b"\n"
    assert s.readline() == b"three"
    assert s.readline() == b""


def test_readline_respects_content_length() -> None:
    s, sock = stream(b"abc\ndef\n", 6)
    assert s.readline() == b"abc\n"
    assert s.readline() == b"de"
    assert s.readline() == b""
    assert sum(sock.asked) == 6


def test_readlines_and_iteration() -> None:
    body = b"a\nbb\nccc\n"
    s, _ = stream(body, len(body))
    assert list(s) == [b"a\n", b"bb\n", b"ccc\n"]
    s, _ = stream(body, len(body))
    assert s.readlines() == [b"a\n", b"bb\n", b"ccc\n"]
    s, _ = stream(body, len(body))
    assert s.readlines(3) == [b"a\n", b"bb\n"]
    assert s.readable()


def test_client_closing_early_raises_client_disconnected() -> None:
    s, _ = stream(b"abc", 10)
    with pytest.raises(ClientDisconnected, match="after 3 of 10 body bytes"):
        s.read()
    assert isinstance(ClientDisconnected("x"), OSError)  # apps catching OSError (as under uWSGI) still work


def test_timeout_and_reset_raise_client_disconnected() -> None:
    s, _ = stream(b"ab", 10, error=TimeoutError("timed out"))
    with pytest.raises(ClientDisconnected, match="timeout reading the request body"):
        s.read()
    s, _ = stream(b"", 10, error=ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(ClientDisconnected, match="Connection reset by peer"):
        s.readline()


def test_empty_body() -> None:
    s, sock = stream(b"data", 0)
    assert s.read() == b"" and s.readline() == b"" and list(s) == []
    assert sock.asked == []


ops = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.one_of(st.none(), st.integers(-1, 40))),
        st.tuples(st.just("readline"), st.one_of(st.none(), st.integers(-1, 40))),
        st.tuples(st.just("readlines"), st.integers(-1, 40)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=120).map(lambda b: b.replace(b"\x00", b"\n")),
    extra=st.binary(max_size=10),
    split=st.integers(0, 130),
    chunks=st.lists(st.integers(1, 17), max_size=30),
    ops=ops,
)
def test_behaves_like_a_file_holding_the_body(
    body: bytes, extra: bytes, split: int, chunks: list[int], ops: list[tuple[str, int | None]]
) -> None:
    """Any mix of reads, any split between head bytes and socket bytes: same as BytesIO(body)."""
    wire = body + extra
    initial, rest = wire[:split], wire[split:]
    sock = FakeSocket(rest, chunks)
    s = InputStream(sock.recv, initial, len(body))
    ref = io.BytesIO(body)
    for name, arg in ops:
        assert getattr(s, name)(arg) == getattr(ref, name)(arg), (name, arg)
    assert s.read() == ref.read()
    assert len(initial[: len(body)]) + sock.pos == len(body)  # never read past CONTENT_LENGTH
