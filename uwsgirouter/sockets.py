"""Every listening socket of an instance, bound by the master before any fork.

They stay open across worker respawns and reloads, so a connection is never refused while workers come and
go; workers inherit them. Bound in uWSGI's order: shared, app, router, stats, subscription.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket

from uwsgirouter.address import Address, UnixAddress
from uwsgirouter.config import Config
from uwsgirouter.config.preflight import socket_owner
from uwsgirouter.errors import ConfigError
from uwsgirouter.sock import Listener, bind_listener, set_owner_and_mode, stdin_listener
from uwsgirouter.subscription.server import bind_datagram

log = logging.getLogger("uwsgirouter.master")


class Sockets:
    """Every listening socket of the instance, bound in uWSGI's order: shared, app, router."""

    def __init__(self, config: Config) -> None:
        self.shared: list[Listener] = []
        self.app: list[Listener] = []
        self.router: list[Listener] = []
        self.subscription: list[socket.socket] = []
        self.stats: Listener | None = None
        self.master_stats: Listener | None = None
        self.subscription_paths: list[str] = []
        self.owner = socket_owner(config.chown_socket)
        defer = 0 if config.no_defer_accept else config.socket_timeout
        try:
            for key, address in _shared_in_order(config):
                deferred = defer if key == "shared-socket" else 0
                listener = self._bind(key, address, config, deferred)
                self.shared.append(listener)
                log.info("shared socket %d bound to %s fd %d", len(self.shared) - 1, listener.name, listener.fileno())
            for address in config.socket:
                listener = self._bind("socket", address, config, defer)
                self.app.append(listener)
                log.info("uwsgi socket %d bound to %s fd %d", len(self.app) - 1, listener.name, listener.fileno())
            if not config.skip_zero and not any(s.fileno() == 0 for s in (*self.shared, *self.app)):
                self._inherit_stdin()
            for address in config.fastrouter:
                listener = self._bind("fastrouter", address, config, defer)
                self.router.append(listener)
                log.info("fastrouter bound on %s fd %d", listener.name, listener.fileno())
            if config.fastrouter_stats is not None:
                self.stats = self._bind("fastrouter-stats", config.fastrouter_stats, config, 0)
                log.info("fastrouter stats server bound on %s fd %d", self.stats.name, self.stats.fileno())
            if config.stats is not None:
                self.master_stats = self._bind("stats", config.stats, config, 0)
                log.info("stats server enabled on %s fd %d", self.master_stats.name, self.master_stats.fileno())
            for address in config.fastrouter_subscription_server:
                try:
                    sock = bind_datagram(address)
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"--fastrouter-subscription-server {address}: {exc}") from None
                self.subscription.append(sock)
                if isinstance(address, UnixAddress):
                    self.subscription_paths.append(address.path)
                    set_owner_and_mode(address.path, config.chmod_socket, self.owner)
                log.info("subscription server bound on %s fd %d", address, sock.fileno())
        except BaseException:
            self.close()
            raise

    def _inherit_stdin(self) -> None:
        """uWSGI's fd 0: a listening socket there (an on-demand vassal's, bound by its Emperor) is one more
        app socket, after those of --socket."""
        listener = stdin_listener()
        if listener is None:
            return
        self.app.append(listener)
        kind = "UNIX" if listener.sock.family == socket.AF_UNIX else "INET"
        log.info("uwsgi socket %d inherited %s address %s fd 0", len(self.app) - 1, kind, listener.name)

    def _bind(self, option: str, address: Address, config: Config, defer: int) -> Listener:
        """Bind one listener; a failure is one line naming the option it came from."""
        try:
            return bind_listener(
                address,
                backlog=config.listen,
                chmod=config.chmod_socket,
                defer_accept=defer,
                shared=self.shared,
                owner=self.owner,
            )
        except ConfigError as exc:
            raise ConfigError(f"--{option}: {exc}") from None

    @property
    def app_names(self) -> list[str]:
        return [listener.name for listener in self.app]

    @property
    def shared_names(self) -> list[str]:
        return [listener.name for listener in self.shared]

    def close(self) -> None:
        """Close all; a shared socket used as =N is closed (and its file removed) once."""
        for sock in self.subscription:
            sock.close()
        for path in self.subscription_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        seen: set[int] = set()
        stats = [s for s in (self.stats, self.master_stats) if s is not None]
        for listener in [*self.router, *self.app, *self.shared, *stats]:
            if id(listener) not in seen:
                seen.add(id(listener))
                listener.close()


def _shared_in_order(config: Config) -> list[tuple[str, Address]]:
    """--shared-socket and --undeferred-shared-socket share one =N numbering, in the order given."""
    shared = iter(config.shared_socket)
    undeferred = iter(config.undeferred_shared_socket)
    ordered: list[tuple[str, Address]] = []
    for entry in config.entries:
        if entry.key == "shared-socket":
            ordered.append(("shared-socket", next(shared)))
        elif entry.key == "undeferred-shared-socket":
            ordered.append(("undeferred-shared-socket", next(undeferred)))
    return ordered
