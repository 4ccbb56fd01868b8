"""Checks across options, run before anything binds or forks, so ``--dry-run`` catches them too."""

from __future__ import annotations

from uwsgirouter.address import SharedSocketRef
from uwsgirouter.config.model import Config
from uwsgirouter.errors import ConfigError


def check_config(config: Config) -> None:
    """Raise ``ConfigError`` for a combination of options that cannot work."""
    shared = len(config.shared_socket) + len(config.undeferred_shared_socket)
    for option, addresses in (("fastrouter", config.fastrouter), ("socket", config.socket)):
        for address in addresses:
            if isinstance(address, SharedSocketRef) and address.index >= shared:
                raise ConfigError(
                    f"--{option} {address}: there is no shared socket {address.index} "
                    f"({shared} defined with --shared-socket)"
                )
    if config.fastrouter_use_socket is not None and config.fastrouter_use_socket >= len(config.socket):
        raise ConfigError(
            f"--fastrouter-use-socket={config.fastrouter_use_socket}: this instance has "
            f"{len(config.socket)} --socket address(es)"
        )
    for spec in config.emperor:
        scheme, sep, _ = spec.partition("://")
        if sep and scheme not in ("dir", "glob"):
            raise ConfigError(
                f"--emperor {spec}: uwsgirouter's Emperor watches directories and globs of INI files, not "
                f"uWSGI's {scheme}:// monitors"
            )
    if config.fastrouter_use_cache is not None and not (config.cache or config.cache2):
        raise ConfigError("--fastrouter-use-cache needs a cache: add --cache N or --cache2 name=...,items=N")
    if config.fastrouter_use_cache:
        names = [items.get("name") for items in config.cache2] + (["default"] if config.cache else [])
        if config.fastrouter_use_cache not in names:
            raise ConfigError(f"--fastrouter-use-cache={config.fastrouter_use_cache}: no cache has that name")
