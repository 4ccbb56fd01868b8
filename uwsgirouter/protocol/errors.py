"""Errors raised by the sans-IO uwsgi protocol codec.

The split follows h11: ``LocalProtocolError`` means *we* misused the API (the caller has a bug),
``RemoteProtocolError`` means the *peer* sent bytes we refuse. Every error carries
``error_status_hint``, the HTTP status an I/O shell should answer with if it answers at all
(400 for malformed input, 431 for an oversized vars block).
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every protocol error; ``error_status_hint`` is the HTTP status to reply with."""

    def __init__(self, msg: str, *, error_status_hint: int = 400) -> None:
        super().__init__(msg)
        self.error_status_hint = error_status_hint


class LocalProtocolError(ProtocolError):
    """Our own API misuse, e.g. encoding a value that does not fit the wire format."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid uwsgi packet."""
