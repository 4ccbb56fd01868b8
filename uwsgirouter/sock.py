"""Listening sockets: created once (by the master, before forking) and inherited by the workers.

Only the process that created a UNIX socket file removes it again, and only if it is still ours
(same inode), so a restarted instance never deletes a successor's socket.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass

from uwsgirouter.address import AbstractAddress, Address, FdAddress, SharedSocketRef, TcpAddress, UnixAddress
from uwsgirouter.errors import ConfigError

#: Linux: accept a TCP connection only once the client has sent data (uWSGI does the same).
TCP_DEFER_ACCEPT = getattr(socket, "TCP_DEFER_ACCEPT", 9)


@dataclass(slots=True)
class Listener:
    """A bound, listening, non-blocking socket and the name users know it by."""

    sock: socket.socket
    name: str
    unix_path: str | None = None
    unix_inode: int | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self, unlink: bool = True) -> None:
        """Close; remove our UNIX socket file if it is still the one we created."""
        if unlink and self.unix_path is not None:
            try:
                if os.stat(self.unix_path).st_ino == self.unix_inode:
                    os.unlink(self.unix_path)
            except OSError:
                pass
        self.sock.close()


def _tcp_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_listener(
    address: Address,
    *,
    backlog: int = 100,
    chmod: int | None = None,
    defer_accept: int = 0,
    shared: list[Listener] | None = None,
    owner: tuple[int, int] | None = None,
) -> Listener:
    """Bind and listen on ``address``; a ``ConfigError`` names the address and the reason."""
    if isinstance(address, SharedSocketRef):
        if shared is None or address.index >= len(shared):
            raise ConfigError(f"shared socket {address.index} does not exist")
        return shared[address.index]
    if isinstance(address, FdAddress):
        try:
            sock = socket.socket(fileno=address.fd)
        except OSError as exc:
            raise ConfigError(f"fd://{address.fd}: {exc.strerror}") from None
        sock.setblocking(False)
        return Listener(sock, str(address))
    try:
        if isinstance(address, TcpAddress):
            return _bind_tcp(address, backlog, defer_accept)
        if isinstance(address, AbstractAddress):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(address.sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
            return Listener(sock, str(address))
        return _bind_unix(address, backlog, chmod, owner)
    except OSError as exc:
        raise ConfigError(f"unable to bind {address}: {exc.strerror or exc}") from None


def _bind_tcp(address: TcpAddress, backlog: int, defer_accept: int) -> Listener:
    host = "" if address.host in ("", "*") else address.host
    family = _tcp_family(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if defer_accept:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_DEFER_ACCEPT, defer_accept)
        sock.bind((host, address.port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    real_port = sock.getsockname()[1]
    # Port 0 becomes the real port, keeping the host as written (uWSGI: ':0' -> ':41234').
    name = str(TcpAddress(address.host, real_port))
    return Listener(sock, name)


def set_owner_and_mode(path: str, chmod: int | None, owner: tuple[int, int] | None) -> None:
    """--chown-socket (uid, gid; -1 keeps one) and --chmod-socket on a UNIX socket file just bound, whatever
    the socket is for (docs/differences.md, "--chown-socket"); a ``ConfigError`` names the option (chown to
    another user needs root)."""
    if owner is not None:
        try:
            os.chown(path, *owner)
        except OSError as exc:
            raise ConfigError(f"--chown-socket: cannot give {path} to uid {owner[0]}: {exc.strerror}") from None
    if chmod is not None:
        try:
            os.chmod(path, chmod)
        except OSError as exc:
            raise ConfigError(f"--chmod-socket: cannot change the mode of {path}: {exc.strerror}") from None


def _bind_unix(address: UnixAddress, backlog: int, chmod: int | None, owner: tuple[int, int] | None) -> Listener:
    path = address.path
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        set_owner_and_mode(path, chmod, owner)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return Listener(sock, path, unix_path=path, unix_inode=os.stat(path).st_ino)


def stdin_listener() -> Listener | None:
    """A listening stream socket on file descriptor 0, as uWSGI's instances take it (an on-demand vassal's
    socket, bound by its Emperor); None when stdin is anything else. The file of a UNIX socket found this way
    is not ours to remove."""
    try:
        sock = socket.socket(fileno=0)
    except OSError:
        return None  # not a socket: a terminal, /dev/null, a pipe
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        where = sock.getsockname()
    except OSError:
        sock.detach()
        return None
    families = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
    if not listening or kind != socket.SOCK_STREAM or sock.family not in families:
        sock.detach()  # a connected socket as stdin (inetd's nowait) is left alone
        return None
    sock.setblocking(False)
    if sock.family == socket.AF_UNIX:
        name = "@" + where[1:].rstrip(b"\0").decode() if isinstance(where, bytes) else str(where)
    else:
        name = str(TcpAddress(where[0], where[1]))
    return Listener(sock, name)
