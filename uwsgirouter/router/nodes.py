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
    #: ``sockaddr`` as the kernel takes it (sysio.pack_sockaddr), packed at the first connect
    packed: bytes = b""


_cache: dict[str, tuple[int, Any]] = {}


#: sun_path holds 108 bytes with the terminating NUL (abstract names: leading and trailing NUL).
MAX_UNIX_PATH_BYTES = 107


def resolve(name: str, allow_dns: bool = False) -> tuple[int, Any]:
    """``(family, sockaddr)`` for a node address; ``ValueError`` if it is not one.

    Host names are looked up only when ``allow_dns`` (static nodes, at start): a lookup blocks, and a
    router must never block on a name it got from a request or a subscription (uWSGI: numeric only).
    """
    cached = _cache.get(name)
    if cached is not None:
        return cached
    result = _resolve(name, allow_dns)
    if len(_cache) >= MAX_CACHED_ADDRESSES:
        _cache.clear()
    _cache[name] = result
    return result


def _resolve(name: str, allow_dns: bool) -> tuple[int, Any]:
    if not name:
        raise ValueError("empty node address")
    if name[0] == "@" or ":" not in name or name[0] in "/.":
        path = name.encode("utf-8", "surrogateescape")
        if name[0] == "@":
            path = b"\0" + path[1:] + b"\0"
        if len(path) > MAX_UNIX_PATH_BYTES:
            raise ValueError(f"UNIX socket path longer than {MAX_UNIX_PATH_BYTES} bytes")
        return socket.AF_UNIX, path
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
        if not allow_dns:
            raise ValueError(f"{host!r} is not a numeric address") from None
        try:
            infos = socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM)
        except OSError as exc:
            raise ValueError(f"cannot resolve {host!r}: {exc}") from None
        return family, infos[0][4]
    return family, (host, int(port))


def make_node(name: str, modifier1: int = 0, modifier2: int = 0, allow_dns: bool = False) -> Node:
    family, sockaddr = resolve(name, allow_dns)
    return Node(name, family, sockaddr, modifier1, modifier2)
