"""The short HTTP answers the router gives when it cannot route a request (docs/differences.md, "Routing failure").

uWSGI closes the connection with zero bytes, which nginx reports as an obscure upstream error. We answer
with a valid response whose body names the key (made printable) but never an internal address.
"""

from __future__ import annotations

REASONS = {
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_response(status: int, detail: str, protocol: bytes | None = None) -> bytes:
    """A complete HTTP response; ``protocol`` is the request's SERVER_PROTOCOL when it is HTTP/1.x."""
    reason = REASONS.get(status, "Error")
    version = protocol if protocol in (b"HTTP/1.0", b"HTTP/1.1") else b"HTTP/1.0"
    body = f"{status} {reason}: {detail}\n".encode("ascii", "replace")
    return (
        version
        + f" {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body
    )
