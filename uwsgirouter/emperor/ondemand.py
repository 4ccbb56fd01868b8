"""On-demand vassals (uWSGI's socket activation): the Emperor binds a vassal's socket and starts the vassal
only when a client connects to it.

Where the socket is, as uWSGI finds it: with ``--emperor-on-demand-extension EXT`` the file VASSAL+EXT (next
to the vassal file) holds its address, up to the first control character (an empty or missing file: not an
on-demand vassal); with ``--emperor-on-demand-directory DIR`` it is the UNIX socket DIR/NAME.socket, NAME
being the vassal file's name without its extension. A ``host:port`` address is TCP, anything else a UNIX
path (relative to the vassal's directory), bound after removing a stale socket file and made 0666, as uWSGI
does. The vassal gets the listening socket as its file descriptor 0 (stdin), where uWSGI instances (and
uwsgirouter ones) look for an inherited socket; the connection that woke it waits in the backlog and is
served by the vassal's first worker.
"""

from __future__ import annotations

import os

from uwsgirouter.address import FdAddress, SharedSocketRef, UnixAddress, parse_address
from uwsgirouter.errors import ConfigError
from uwsgirouter.sock import Listener, bind_listener

#: uWSGI's mode of an on-demand UNIX socket: any local user may connect.
UNIX_MODE = 0o666
#: --emperor-on-demand-directory's suffix.
SOCKET_SUFFIX = ".socket"


def socket_name(path: str, extension: str | None, directory: str | None) -> str | None:
    """The on-demand socket of the vassal file at ``path``, or None when it is not an on-demand vassal."""
    if extension:
        try:
            with open(path + extension, "rb") as file:
                data = file.read()
        except OSError:
            return None
        end = next((i for i, byte in enumerate(data) if byte < 32), len(data))
        return data[:end].decode("utf-8", "replace") or None
    if directory:
        stem, dot, _ = os.path.basename(path).rpartition(".")
        return os.path.join(directory, stem + SOCKET_SUFFIX) if dot else None
    return None


def bind(name: str, cwd: str, backlog: int) -> Listener:
    """Bind and listen on ``name`` (relative paths from ``cwd``); ``ConfigError`` says why it cannot be.

    The socket stays blocking, as uWSGI hands it over: the Emperor only waits for it to become readable
    and never accepts on it; the vassal sets the mode it wants."""
    try:
        address = parse_address(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(address, (FdAddress, SharedSocketRef)):
        raise ConfigError(f"{name}: an on-demand socket is an address to bind (host:port or a UNIX path)")
    if isinstance(address, UnixAddress):
        address = UnixAddress(os.path.join(cwd, address.path))
    listener = bind_listener(address, backlog=backlog, chmod=UNIX_MODE)
    listener.sock.setblocking(True)
    listener.name = name
    return listener
