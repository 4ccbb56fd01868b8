"""Incremental, sans-IO reader for one uwsgi request, plus the pure helpers the router needs.

The I/O shell feeds whatever it read with ``receive_data`` (``b""`` = the peer closed its sending
side) and pulls events with ``next_event`` until it gets ``NEED_DATA``. Events come in this order:

1. ``RequestHead`` once the header and the whole vars block are in (or ``ConnectionClosed`` if the
   peer closed before sending a single byte, which is a normal, silent close);
2. ``Body`` for whatever arrived after the vars block, each carrying every body byte buffered so far
   (the router relays bytes as they come; it does not count them against CONTENT_LENGTH);
3. ``EndOfInput`` once EOF was received; asking again keeps returning it.

Invariants:

* Before the head is complete the buffer never holds more than ``4 + max_vars_size`` bytes that
  belong to the head: the header's size field is checked as soon as it arrives (status hint 431).
* After a ``RemoteProtocolError`` every call raises one again; the buffers are dropped.
* The common case (the whole head in one read) costs one slice for ``raw``, one for the leftover
  body, and one check of the vars block, which makes no object: the vars are parsed only when
  ``RequestHead.vars`` is asked for; body chunks are handed back without copying when possible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .errors import LocalProtocolError, RemoteProtocolError
from .packet import HEADER_SIZE, MAX_VARS_SIZE, _check_vars, _parse_vars

__all__ = [
    "NEED_DATA",
    "Body",
    "ConnectionClosed",
    "EndOfInput",
    "NeedData",
    "RequestHead",
    "RequestReader",
    "content_length",
    "routing_key",
    "whole_head",
]

#: uWSGI ignores key candidates longer than this (its key buffer is 255 bytes).
MAX_KEY_SIZE: Final = 255
#: 18 decimal digits always fit a signed 64-bit length; anything longer is nonsense, not a body size.
_MAX_CONTENT_LENGTH_DIGITS: Final = 18
_H: Final = ord("H")  # HTTP_HOST[0]
_N: Final = ord("N")  # SERVER_NAME[7]


class NeedData:
    """Type of the ``NEED_DATA`` sentinel, so that ``next_event``'s result can be typed and narrowed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __reduce__(self) -> str:
        # Pickling or copying yields the module-level singleton, so ``is NEED_DATA`` keeps working.
        return "NEED_DATA"


#: Returned by ``next_event`` when more bytes are needed; compare with ``is``.
NEED_DATA: Final = NeedData()


class RequestHead:
    """Header and vars of a request.

    ``raw`` is the exact header+vars bytes received: the router re-sends it to the backend after
    rewriting bytes 0 and 3 (modifier1/modifier2), so the vars never have to be re-encoded. The reader
    checks the vars block and leaves it unparsed: the router reads two or three vars of a request, which
    ``get``, ``routing_key`` and ``content_length`` find in ``raw`` without making an object per var;
    ``vars`` parses them all at its first use (an app worker's environ). A plain class, not a dataclass:
    a dataclass's ``__init__`` is Python code even in the compiled build.
    """

    __slots__ = ("_vars", "modifier1", "modifier2", "raw")

    def __init__(
        self, modifier1: int, modifier2: int, vars: tuple[tuple[bytes, bytes], ...] | None, raw: bytes
    ) -> None:
        """``vars`` None: parsed from ``raw`` when asked for (``raw`` must then hold a checked block)."""
        self.modifier1 = modifier1
        self.modifier2 = modifier2
        self._vars = vars
        self.raw = raw

    @property
    def vars(self) -> tuple[tuple[bytes, bytes], ...]:
        """Every ``(key, value)`` pair in wire order, duplicates kept."""
        pairs = self._vars
        if pairs is None:
            pairs = self._vars = tuple(_parse_vars(self.raw, HEADER_SIZE, len(self.raw)))
        return pairs

    def get(self, name: bytes) -> bytes | None:
        """Return the value of var ``name`` (the last one if it is repeated, as uWSGI does), or None."""
        raw = self.raw
        size = len(name)
        found: bytes | None = None
        pos = HEADER_SIZE
        end = len(raw)
        while pos < end:
            key_len = raw[pos] | raw[pos + 1] << 8
            key_start = pos + 2
            key_end = key_start + key_len
            value_start = key_end + 2
            pos = value_start + (raw[key_end] | raw[key_end + 1] << 8)
            # the first byte before the slice: most keys differ there, and a slice is an object
            if key_len == size and raw[key_start] == name[0] and raw[key_start:key_end] == name:
                found = raw[value_start:pos]
        return found

    def routing_key(self) -> bytes:
        """``routing_key(self.vars)``, read from ``raw`` (the same rules; tests compare the two)."""
        raw = self.raw
        key = b""
        locked = False
        pos = HEADER_SIZE
        end = len(raw)
        while pos < end:
            key_len = raw[pos] | raw[pos + 1] << 8
            key_start = pos + 2
            key_end = key_start + key_len
            value_start = key_end + 2
            value_len = raw[key_end] | raw[key_end + 1] << 8
            pos = value_start + value_len
            # A byte that tells the name from the other vars of its length comes before the comparison, which needs
            # a slice (an object): PATH_INFO has HTTP_HOST's length, and REQUEST_URI, REMOTE_ADDR, REMOTE_PORT and
            # SERVER_PORT have SERVER_NAME's.
            if key_len == 9:
                if (
                    not locked
                    and value_len <= MAX_KEY_SIZE
                    and raw[key_start] == _H
                    and raw[key_start:key_end] == b"HTTP_HOST"
                ):
                    key = raw[value_start:pos]
            elif key_len == 11:
                if (
                    not key
                    and value_len <= MAX_KEY_SIZE
                    and raw[key_start + 7] == _N
                    and raw[key_start:key_end] == b"SERVER_NAME"
                ):
                    key = raw[value_start:pos]
            elif key_len == 20 and value_len <= MAX_KEY_SIZE and raw[key_start:key_end] == b"UWSGI_FASTROUTER_KEY":
                key = raw[value_start:pos]
                locked = True
        return key

    def content_length(self) -> int:
        """``content_length(self.vars)``, read from ``raw``.

        Raises:
            RemoteProtocolError: the value is not 1 to 18 ASCII digits.
        """
        return _content_length_value(self.get(b"CONTENT_LENGTH") or b"")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestHead):
            return NotImplemented
        return (self.modifier1, self.modifier2, self.raw, self.vars) == (
            other.modifier1,
            other.modifier2,
            other.raw,
            other.vars,
        )

    def __hash__(self) -> int:
        return hash((self.modifier1, self.modifier2, self.raw))

    def __repr__(self) -> str:
        return f"RequestHead(modifier1={self.modifier1!r}, modifier2={self.modifier2!r}, vars={self.vars!r})"


@dataclass(frozen=True, slots=True)
class Body:
    """Request body bytes: everything received after the vars block and not yet returned."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfInput:
    """The peer closed its sending side after the head; it may still be waiting for the response."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed before sending a single byte: a normal, silent close, not an error."""


class RequestReader:
    """Turn the bytes of one client connection into request events (see the module docstring)."""

    __slots__ = ("_body", "_buf", "_eof", "_error", "_error_reported", "_head_done", "_max_vars_size", "_size")

    def __init__(self, max_vars_size: int = MAX_VARS_SIZE) -> None:
        """``max_vars_size`` bounds the vars block (uWSGI workers use ``--buffer-size``, default 4096).

        Raises:
            LocalProtocolError: ``max_vars_size`` is outside 0..65535.
        """
        if not 0 <= max_vars_size <= MAX_VARS_SIZE:
            raise LocalProtocolError(f"max_vars_size {max_vars_size} is outside 0..{MAX_VARS_SIZE}")
        self._max_vars_size = max_vars_size
        # Head bytes received so far: the caller's own bytes object while one read holds them all,
        # a bytearray once the head arrives in pieces (amortised appends, no quadratic copying).
        self._buf: bytes | bytearray = b""
        self._size = -1  # vars block size, known once the 4 header bytes are in
        self._body: list[bytes] = []
        self._eof = False
        self._head_done = False
        self._error: RemoteProtocolError | None = None
        self._error_reported = False

    @property
    def head_complete(self) -> bool:
        """True once ``next_event`` has returned the ``RequestHead``."""
        return self._head_done

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the peer; ``b""`` means the peer closed its sending side (EOF).

        A bytearray or memoryview is copied (the caller may reuse its buffer). The annotation says so because
        the compiled build checks it: a ``bytes`` parameter would refuse them with a TypeError.

        Raises:
            LocalProtocolError: non-empty data after EOF.
            RemoteProtocolError: the reader is in the error state.
        """
        if self._error is not None:
            raise self._error_again()
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() got data after EOF")
            return
        if not data:
            self._eof = True
            return
        if type(data) is not bytes:
            data = bytes(data)  # never keep a reference to a buffer the caller may reuse
        if self._head_done:
            self._body.append(data)
            return
        buf = self._buf
        if not buf:
            self._buf = buf = data
        else:
            if type(buf) is bytes:
                buf = bytearray(buf)
            buf += data
            self._buf = buf
        if self._size < 0 and len(buf) >= HEADER_SIZE:
            size = buf[1] | buf[2] << 8
            if size > self._max_vars_size:
                # Stop buffering now; the next call reports it, as next_event reports every other error.
                self._buf = b""
                self._error = RemoteProtocolError(
                    f"vars block of {size} bytes is over the limit of {self._max_vars_size}", error_status_hint=431
                )
                return
            self._size = size

    def next_event(self) -> RequestHead | Body | EndOfInput | ConnectionClosed | NeedData:
        """Return the next event, or ``NEED_DATA`` until more bytes (or EOF) arrive.

        Raises:
            RemoteProtocolError: the peer sent a malformed or oversized head, or closed in the middle
                of it; from then on every call raises.
        """
        if self._error is not None:
            raise self._error_again()
        if self._head_done:
            body = self._body
            if body:
                self._body = []
                return Body(body[0] if len(body) == 1 else b"".join(body))
            return EndOfInput() if self._eof else NEED_DATA
        return self._read_head()

    def _read_head(self) -> RequestHead | ConnectionClosed | NeedData:
        buf = self._buf
        size = self._size
        if size < 0:
            if not self._eof:
                return NEED_DATA
            if not buf:
                return ConnectionClosed()
            raise self._fail(RemoteProtocolError(f"connection closed after {len(buf)} of {HEADER_SIZE} header bytes"))
        end = HEADER_SIZE + size
        if len(buf) < end:
            if self._eof:
                raise self._fail(
                    RemoteProtocolError(f"connection closed after {len(buf) - HEADER_SIZE} of {size} vars bytes")
                )
            return NEED_DATA
        raw = buf[:end] if type(buf) is bytes else bytes(buf[:end])
        try:
            head = _checked_head(raw)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        if len(buf) > end:
            self._body.append(bytes(buf[end:]))
        self._buf = b""
        self._head_done = True
        return head

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        """Enter the error state (dropping the buffers) and return ``exc`` for the caller to raise."""
        self._error = exc
        self._error_reported = True
        self._buf = b""
        return exc

    def _error_again(self) -> RemoteProtocolError:
        """The error to raise in the error state: the original once, then one that says so."""
        error = self._error
        assert error is not None
        if not self._error_reported:
            self._error_reported = True
            return error
        return RemoteProtocolError(
            f"request reader is in the error state: {error}", error_status_hint=error.error_status_hint
        )


def whole_head(data: bytes) -> RequestHead | None:
    """The head at the start of ``data`` if all of it is there, else None (then a ``RequestReader`` gathers it).

    The usual first read of a connection holds the whole head: taking it from there costs no reader, no event
    objects and no copy of a head that is the whole read. The bytes after it are the caller's (``data[len(raw):]``).
    No limit on the vars block but the header's own (a reader's ``max_vars_size`` at its default).

    Raises:
        RemoteProtocolError: the vars block is malformed (as ``next_event`` would raise it).
    """
    size = len(data)
    if size < HEADER_SIZE:
        return None
    end = HEADER_SIZE + (data[1] | data[2] << 8)
    if size < end:
        return None
    return _checked_head(data if size == end else data[:end])


def _checked_head(raw: bytes) -> RequestHead:
    _check_vars(raw, HEADER_SIZE, len(raw))
    return RequestHead(raw[0], raw[3], None, raw)


def routing_key(vars: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Return the routing key uWSGI's fastrouter would pick from ``vars``, or ``b""`` if there is none.

    Priority UWSGI_FASTROUTER_KEY > HTTP_HOST > SERVER_NAME whatever the var order, with uWSGI's
    exact quirks: values over 255 bytes are ignored; UWSGI_FASTROUTER_KEY locks the key (a later one
    still overwrites it); HTTP_HOST overwrites unless locked, so an empty HTTP_HOST after SERVER_NAME
    wipes the key; SERVER_NAME only fills an empty key. The key is returned verbatim (no sanitising).
    """
    key = b""
    locked = False
    for name, value in vars:
        if name == b"HTTP_HOST":
            if not locked and len(value) <= MAX_KEY_SIZE:
                key = value
        elif name == b"SERVER_NAME":
            if not key and len(value) <= MAX_KEY_SIZE:
                key = value
        elif name == b"UWSGI_FASTROUTER_KEY" and len(value) <= MAX_KEY_SIZE:
            key = value
            locked = True
    return key


def content_length(vars: Sequence[tuple[bytes, bytes]]) -> int:
    """Return the decimal CONTENT_LENGTH (last occurrence); absent or empty means 0.

    Raises:
        RemoteProtocolError: the value is not 1 to 18 ASCII digits.
    """
    value = b""
    for name, candidate in reversed(vars):
        if name == b"CONTENT_LENGTH":
            value = candidate
            break
    return _content_length_value(value)


def _content_length_value(value: bytes) -> int:
    if not value:
        return 0
    if len(value) > _MAX_CONTENT_LENGTH_DIGITS or not value.isdigit():
        raise RemoteProtocolError(f"invalid CONTENT_LENGTH {value[:40]!r}")
    return int(value)
