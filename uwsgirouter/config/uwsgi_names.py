"""Every option name of real uWSGI 2.0.31, so that an option we lack is named instead of silently dropped.

The names come from ``uwsgi_options.txt`` (generated from the real binary by
``scripts/build_uwsgi_options.py``). An option uwsgirouter does not implement is ignored with a warning,
unless running without it would surprise the user in a way a warning line cannot fix: then it is refused
(``REFUSED``, reasons in docs/differences.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files

from uwsgirouter.config.setting import Arg

_LISTENER = "its clients would find nothing listening: uwsgirouter serves the uwsgi protocol only"
_LOADER = "the options in that file would be lost: uwsgirouter reads INI files only (--ini, include = FILE.ini)"
_SANDBOX = "the processes would run with more access than configured"

#: uWSGI options that are refused when given; every alias of an option counts.
REFUSED: dict[str, str] = {
    **dict.fromkeys(
        (
            "http",
            "https",
            "https2",
            "http-socket",
            "http11-socket",
            "https-socket",
            "ssl-socket",
            "fastcgi-socket",
            "fastcgi-nph-socket",
            "scgi-socket",
            "scgi-nph-socket",
            "raw-socket",
            "puwsgi-socket",
            "rawrouter",
            "sslrouter",
            "sslrouter2",
        ),
        _LISTENER,
    ),
    "mount": "requests would reach another application than its mountpoints say",
    "worker-mount": "requests would reach another application than its mountpoints say",
    **dict.fromkeys(("config", "xml", "yaml"), _LOADER),
    **dict.fromkeys(("chroot", "namespace", "unshare", "unshare2"), _SANDBOX),
}
_ROUTING = re.compile(r"^(final-|error-|response-)?route(-.*)?$")
_ROUTING_REASON = "its routing rules (redirects, access checks, rewrites) would not run"

#: Plugins whose work uwsgirouter does itself: ``python``, ``python3``, ``python311``..., the routers.
_BUILT_IN_PLUGIN = re.compile(r"^(python[0-9.]*|corerouter|fastrouter)$")


@dataclass(frozen=True, slots=True)
class UwsgiOption:
    """One uWSGI option: its names (the first is uWSGI's), its short letter and how it takes a value."""

    names: tuple[str, ...]
    short: str | None
    arg: Arg

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def refusal(self) -> str | None:
        """Why uwsgirouter refuses to run without this option, or None when a warning is enough."""
        for name in self.names:
            if name in REFUSED:
                return REFUSED[name]
            if _ROUTING.match(name):
                return _ROUTING_REASON
        return None


def _read() -> tuple[dict[str, UwsgiOption], dict[str, UwsgiOption]]:
    by_name: dict[str, UwsgiOption] = {}
    by_short: dict[str, UwsgiOption] = {}
    text = files("uwsgirouter.config").joinpath("uwsgi_options.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        names, short, arg = line.split("\t")
        option = UwsgiOption(tuple(names.split()), None if short == "-" else short, Arg(arg))
        for name in option.names:
            by_name.setdefault(name, option)
        if option.short:
            by_short.setdefault(option.short, option)
    return by_name, by_short


UWSGI_OPTIONS, UWSGI_SHORTS = _read()


def plugin_names(values: Iterable[str]) -> list[str]:
    """The plugin names in ``--plugins`` values as uWSGI reads them: comma lists, ``0:python``, ``x_plugin.so``."""
    names: list[str] = []
    for value in values:
        for item in value.split(","):
            name = item.strip().partition(":")[2] if ":" in item else item.strip()
            name = name.rpartition("/")[2].removesuffix(".so").removesuffix("_plugin")
            if name and name not in names:
                names.append(name)
    return names


def built_in_plugin(name: str) -> bool:
    """Whether uwsgirouter does the work of plugin ``name`` itself (what ``if-plugin`` tests)."""
    return _BUILT_IN_PLUGIN.match(name) is not None


def foreign_plugins(values: Iterable[str]) -> list[str]:
    """The plugins named in ``values`` whose work uwsgirouter does not do."""
    return [name for name in plugin_names(values) if not built_in_plugin(name)]
