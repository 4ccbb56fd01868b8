"""Untrusted bytes made safe for a log line or a response body; a leaf module that routers, the subscription server
and its signing all use without depending on each other."""

from __future__ import annotations

_SAFE = frozenset(range(0x20, 0x7F)) - {0x5C}


def printable(key: bytes, limit: int = 64) -> str:
    """The key for a log line or a body: printable ASCII, other bytes as \\xNN, cut at ``limit``."""
    text = "".join(chr(b) if b in _SAFE else f"\\x{b:02x}" for b in key[:limit])
    return text + "..." if len(key) > limit else text
