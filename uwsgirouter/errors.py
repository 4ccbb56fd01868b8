"""Exceptions shared across uwsgirouter.

A user's mistake (a bad option, a missing file) becomes a ``ConfigError``: the command line prints its
message on one line and exits 2, never with a traceback. ``HaltServer`` stops a running master with a
message and an exit status.
"""

from __future__ import annotations


class UwsgiRouterError(Exception):
    """Base class of every error uwsgirouter raises on purpose."""


class ConfigError(UwsgiRouterError):
    """The configuration cannot be used; the message names the option, value or file at fault."""


class HaltServer(UwsgiRouterError):
    """Stop the master with ``reason`` and ``exit_status``."""

    def __init__(self, reason: str, exit_status: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status
