"""Backend nodes as the router connects to them, and their counters.

A node address follows uWSGI's rules (``core/socket.c``): ``@name`` is an abstract UNIX socket (with
uWSGI's trailing NUL), an address with ``:`` is TCP, anything else a UNIX path. Unlike uWSGI, a path
starting with ``/`` or ``.`` stays a path even if it contains ``:``, and IPv6 is written ``[::1]:3031``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

#: Resolved addresses kept; a flood of distinct keys (base/pattern mappers) cannot grow it further.
MAX_CACHED_ADDRESSES = 4096


@dataclass(slots=True)
class NodeStats:
    """Counters for the stats server: successful connects, failures, bytes each way."""

    hits: int = 0
    failures: int = 0
    bytes_to_node: int = 0
    bytes_from_node: int = 0


@dataclass(slots=True, eq=False)
class Node:
    """One backend: where to connect and which modifiers the forwarded header carries."""

    name: str
    family: int
    sockaddr: Any
    modifier1: int = 0
    modifier2: int = 0
    stats: NodeStats = field(default_factory=NodeStats)
    #: monotonic time until which a static node is skipped after a failed connect (0 = alive)
    dead_until: float = 0.0


_cache: dict[str, tuple[int, Any]] = {}


def resolve(name: str) -> tuple[int, Any]:
    """``(family, sockaddr)`` for a node address; ``ValueError`` if it is not one."""
    cached = _cache.get(name)
    if cached is not None:
        return cached
    result = _resolve(name)
    if len(_cache) >= MAX_CACHED_ADDRESSES:
        _cache.clear()
    _cache[name] = result
    return result


def _resolve(name: str) -> tuple[int, Any]:
    if not name:
        raise ValueError("empty node address")
    if name[0] == "@":
        return socket.AF_UNIX, b"\0" + name[1:].encode("utf-8", "surrogateescape") + b"\0"
    if ":" not in name or name[0] in "/.":
        return socket.AF_UNIX, name.encode("utf-8", "surrogateescape")
    if name[0] == "[":
        host, sep, port = name[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid IPv6 node address {name!r}")
        family = socket.AF_INET6
    else:
        host, _, port = name.partition(":")
        family = socket.AF_INET
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid port in node address {name!r}")
    host = host or "0.0.0.0"
    try:
        socket.inet_pton(family, host)
    except OSError:
        # A name: resolved once here (blocking), then cached; uWSGI accepts numeric addresses only.
        infos = socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM)
        if not infos:
            raise ValueError(f"cannot resolve {host!r}") from None
        return family, infos[0][4]
    return family, (host, int(port))


def make_node(name: str, modifier1: int = 0, modifier2: int = 0) -> Node:
    family, sockaddr = resolve(name)
    return Node(name, family, sockaddr, modifier1, modifier2)
