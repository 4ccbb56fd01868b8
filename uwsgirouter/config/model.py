"""The typed, read-only configuration built from the ordered option entries."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from uwsgirouter.config.compat_options import CompatOptions
from uwsgirouter.config.emperor_options import EmperorOptions
from uwsgirouter.config.hook_options import HookOptions
from uwsgirouter.config.instance_options import AppOptions, SocketOptions
from uwsgirouter.config.log_options import LogOptions
from uwsgirouter.config.process_options import ConfigOptions, ProcessOptions
from uwsgirouter.config.router_options import RouterOptions
from uwsgirouter.config.setting import Setting
from uwsgirouter.config.subscription_options import CacheOptions, SubscriberOptions, SubscriptionServerOptions


@dataclass(frozen=True, slots=True)
class Entry:
    """One option occurrence, in load order: ``key`` as written (alias or not), ``value`` None for a bare flag."""

    key: str
    value: str | None
    origin: str


class Config(
    RouterOptions,
    SubscriptionServerOptions,
    SubscriberOptions,
    CacheOptions,
    SocketOptions,
    AppOptions,
    ProcessOptions,
    LogOptions,
    ConfigOptions,
    HookOptions,
    EmperorOptions,
    CompatOptions,
):
    """Every setting as a typed attribute; ``entries`` keeps what was given, in order (for --show-config)."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries = tuple(entries)
        raws: dict[str, list[str | None]] = {}
        for entry in self.entries:
            setting = REGISTRY.lookup(entry.key)
            if setting is not None:
                raws.setdefault(setting.name, []).append(entry.value)
        self._values: dict[str, Any] = {s.name: s.resolve(raws.get(s.name, ())) for s in REGISTRY.settings}

    def first(self, name: str) -> str | None:
        """The first value given for ``name``, as ``--get`` and ``%(name)`` see it."""
        return first_value(self.entries, name)

    def given(self, name: str) -> bool:
        """Whether ``name`` was given at all: an option under any of its names, or a placeholder."""
        setting = REGISTRY.lookup(name)
        if setting is None:
            return any(e.key == name for e in self.entries)
        return any(REGISTRY.lookup(e.key) is setting for e in self.entries)


def first_value(entries: Sequence[Entry], name: str) -> str | None:
    """The first value of ``name`` (as written, else under any alias); None if absent or a bare flag."""
    for entry in entries:
        if entry.key == name:
            return entry.value
    setting = REGISTRY.lookup(name)
    if setting is not None:
        for entry in entries:
            if REGISTRY.lookup(entry.key) is setting:
                return entry.value
    return None


class Registry:
    """Every declared setting, and lookups by long name, alias and short letter."""

    def __init__(self, settings: Sequence[Setting[Any]]) -> None:
        self.settings = list(settings)
        self.by_name: dict[str, Setting[Any]] = {}
        self.by_short: dict[str, Setting[Any]] = {}
        for setting in self.settings:
            for name in (setting.name, *setting.aliases):
                if name in self.by_name:
                    raise RuntimeError(f"option {name} declared twice")
                self.by_name[name] = setting
            if setting.short:
                if setting.short in self.by_short:
                    raise RuntimeError(f"short option -{setting.short} declared twice")
                self.by_short[setting.short] = setting

    def lookup(self, name: str) -> Setting[Any] | None:
        return self.by_name.get(name)

    def suggest(self, name: str, cutoff: float = 0.75) -> str | None:
        """The closest known option name, for 'did you mean' hints."""
        matches = difflib.get_close_matches(name, list(self.by_name), n=1, cutoff=cutoff)
        return matches[0] if matches else None


def _declared_settings() -> list[Setting[Any]]:
    settings: list[Setting[Any]] = []
    for cls in Config.__mro__[1:-1]:
        settings.extend(v for v in vars(cls).values() if isinstance(v, Setting))
    return settings


REGISTRY = Registry(_declared_settings())
