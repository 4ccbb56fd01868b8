"""Socket addresses as uWSGI users write them, parsed once into typed values.

The same grammar serves listening sockets (``--socket``, ``--fastrouter``, ``--shared-socket``),
subscription servers and backend nodes:

``host:port``, ``:port``
    TCP (IPv4 or a name; ``[v6]:port`` for IPv6). An empty host binds every interface.
``/path``, ``./path``, ``name`` (no colon)
    A UNIX stream socket path.
``@name``
    A Linux abstract socket. uWSGI binds and connects these with a trailing NUL byte, so we do too.
``=N``
    The N-th ``--shared-socket`` (0-based), created by the master before anything else.
``fd://N``
    An already open, inherited file descriptor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: sun_path is 108 bytes on Linux, one of which the kernel wants for the terminating NUL.
MAX_UNIX_PATH_BYTES = 107
#: Abstract names are sent as ``\0name\0`` to match uWSGI, which costs two of the 108 bytes.
MAX_ABSTRACT_NAME_BYTES = 106

_HOST_RE = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True, slots=True)
class AbstractAddress:
    name: str

    def __str__(self) -> str:
        return "@" + self.name

    @property
    def sockaddr(self) -> bytes:
        """The kernel address: leading NUL, the name, and uWSGI's trailing NUL."""
        return b"\0" + self.name.encode() + b"\0"


@dataclass(frozen=True, slots=True)
class SharedSocketRef:
    index: int

    def __str__(self) -> str:
        return f"={self.index}"


@dataclass(frozen=True, slots=True)
class FdAddress:
    fd: int

    def __str__(self) -> str:
        return f"fd://{self.fd}"


Address = TcpAddress | UnixAddress | AbstractAddress | SharedSocketRef | FdAddress


def _index(text: str, what: str, original: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{what} in {original!r} must be a non-negative number")
    return int(text)


def _tcp(text: str) -> TcpAddress:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"IPv6 address {text!r} must look like [::1]:3031")
    else:
        host, _, port = text.partition(":")
        if not _HOST_RE.match(host):
            raise ValueError(f"invalid host {host!r} in address {text!r}")
    if not port.isdigit() or not port.isascii() or int(port) > 65535:
        raise ValueError(f"invalid port {port!r} in address {text!r} (expected 0-65535)")
    return TcpAddress(host, int(port))


def parse_address(text: str) -> Address:
    """Parse one address; raise ``ValueError`` with a message a user can act on."""
    if not text:
        raise ValueError("the address is empty")
    if text.startswith("fd://"):
        return FdAddress(_index(text[5:], "the file descriptor", text))
    if text.startswith("="):
        return SharedSocketRef(_index(text[1:], "the shared socket index", text))
    if text.startswith("@"):
        name = text[1:]
        if not name:
            raise ValueError("an abstract socket needs a name after '@'")
        if len(name.encode()) > MAX_ABSTRACT_NAME_BYTES:
            raise ValueError(f"abstract socket name {text!r} is longer than {MAX_ABSTRACT_NAME_BYTES} bytes")
        return AbstractAddress(name)
    if ":" in text and not text.startswith(("/", ".")):
        return _tcp(text)
    if len(text.encode()) > MAX_UNIX_PATH_BYTES:
        raise ValueError(f"UNIX socket path {text!r} is longer than {MAX_UNIX_PATH_BYTES} bytes")
    return UnixAddress(text)
