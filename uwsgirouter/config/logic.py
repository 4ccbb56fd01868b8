"""uWSGI's configuration logic: ``if-*`` / ``endif`` and ``for*`` / ``endfor`` blocks.

The facts follow uWSGI 2.0 (``core/config.c``, ``add_exported_option``): a block opener remembers its
test; every option after it, up to the next ``endif``/``endfor``/``end`` (any of them closes any block), is
tested on its own when it is read, and added once per match with ``%(_)`` replaced by the matched value
(the variable's value for ``if-env``, the path for ``if-exists``, each item for ``for``). Blocks do not
nest: an opener inside a block whose test holds is an error, one inside a block whose test fails is dropped
with the lines up to the first closer (uWSGI's behaviour, named here in a warning). Blocks span files and the
command line, as uWSGI's state is global; an ``ini``/``include`` inside a block that holds is read whole.
"""

from __future__ import annotations

import glob
import os
import re
import socket
from collections.abc import Callable, Mapping

from uwsgirouter.config.uwsgi_names import UWSGI_OPTIONS, built_in_plugin
from uwsgirouter.errors import ConfigError

#: What a test gives: one ``%(_)`` value per copy of the line (None: leave ``%(_)`` as written).
Matches = list[str | None]
#: An ``if-opt`` test reads the options added so far: the first value given to a name, as uWSGI's lookup does.
Lookup = Callable[[str], str | None]

CLOSERS = frozenset({"end", "endif", "end-if", "endfor", "end-for"})
#: ``for-times`` copies: uWSGI has no bound; a typo of a few digits should not exhaust memory.
MAX_COPIES = 100_000


def _split(arg: str) -> tuple[str, str | None]:
    name, eq, wanted = arg.partition("=")
    return name, wanted if eq else None


def _if_value(value: str | None, wanted: str | None, negate: bool) -> Matches:
    """``if-env``/``if-opt`` (``NAME`` or ``NAME=VALUE``) and their ``if-not`` forms."""
    holds = value is not None and (wanted is None or value == wanted)
    if holds != negate:
        return [value]
    return []


def _atoi(text: str) -> int:
    match = re.match(r"\s*[+-]?\d+", text)
    return int(match.group()) if match else 0


def _glob(pattern: str) -> Matches:
    """glob(3) with GLOB_MARK (directories end in '/') and GLOB_NOCHECK (no match: the pattern itself)."""
    found = sorted(glob.glob(pattern))
    if not found:
        return [pattern]
    return [path + "/" if os.path.isdir(path) and not path.endswith("/") else path for path in found]


class ConfigLogic:
    """The open block, if any; ``feed`` decides what each option read becomes."""

    def __init__(self, environ: Mapping[str, str], lookup: Lookup, warn: Callable[[str], None]) -> None:
        self.environ = environ
        self.lookup = lookup
        self.warn = warn
        self.opener: str | None = None
        self.arg = ""
        self.origin = ""
        #: > 0 while a file included from inside a block that holds is read: its lines are taken whole
        self.verbatim = 0

    @staticmethod
    def canonical(key: str) -> str | None:
        """The uWSGI name of a logic option (``ifenv`` -> ``if-env``), or None for any other key."""
        if key in CLOSERS:
            return "endif"
        option = UWSGI_OPTIONS.get(key)
        if option is None or not (option.name.startswith("if-") or option.name.startswith("for")):
            return None
        return option.name if option.name in _TESTS else None

    def feed(self, key: str, value: str | None, origin: str) -> list[str | None] | None:
        """The values to add ``key`` with (one per match), or None when ``key`` was a logic option itself."""
        logic = self.canonical(key)
        if self.verbatim:
            if logic is not None and logic != "endif":
                raise self._recursive(key, value, origin)
            return None if logic == "endif" else [value]
        if logic == "endif":
            self.opener = None
            return None
        if self.opener is None:
            if logic is not None:
                self.opener, self.arg, self.origin = logic, value or "", origin
                return None
            return [value]
        matches = self.test()
        if logic is not None:
            if matches:
                raise self._recursive(key, value, origin)
            self.warn(
                f"{key} = {value or ''} ({origin}) inside the {self.opener} = {self.arg} block ({self.origin}) "
                f"is dropped, as uWSGI does: blocks do not nest, and the first endif closes the {self.opener} block"
            )
            return None
        if value is None:
            return [value for _ in matches]
        return [value if match is None else value.replace("%(_)", match) for match in matches]

    def test(self) -> Matches:
        assert self.opener is not None
        return _TESTS[self.opener](self, self.arg)

    def _recursive(self, key: str, value: str | None, origin: str) -> ConfigError:
        return ConfigError(
            f"{key} = {value or ''} ({origin}) inside the {self.opener} = {self.arg} block ({self.origin}): "
            "recursive logic in options is not supported (as in uWSGI)"
        )

    def unclosed(self) -> str | None:
        """A warning for a block still open when every option has been read (uWSGI keeps it silently)."""
        if self.opener is None:
            return None
        return f"{self.opener} = {self.arg} ({self.origin}) has no endif: it applies to every option after it"

    # The tests, by uWSGI name.

    def _env(self, arg: str, negate: bool) -> Matches:
        name, wanted = _split(arg)
        return _if_value(self.environ.get(name), wanted, negate)

    def _opt(self, arg: str, negate: bool) -> Matches:
        name, wanted = _split(arg)
        return _if_value(self.lookup(name), wanted, negate)

    def _readline(self, path: str) -> Matches:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                return [line.rstrip("\r\n") for line in handle]
        except (OSError, ValueError) as exc:
            self.warn(f"for-readline = {path} ({self.origin}): {getattr(exc, 'strerror', None) or exc}: no lines")
            return []

    def _times(self, arg: str) -> Matches:
        count = _atoi(arg)
        if count > MAX_COPIES:
            raise ConfigError(f"for-times = {arg} ({self.origin}): more than {MAX_COPIES} copies of each option")
        return [str(i) for i in range(1, count + 1)]


def _path_test(check: Callable[[str], bool], negate: bool) -> Callable[[ConfigLogic, str], Matches]:
    return lambda _logic, arg: [arg] if check(arg) != negate else []


def _exists(path: str) -> bool:
    return os.access(path, os.F_OK)


def _hostname_match(pattern: str) -> bool:
    try:
        return re.search(pattern, socket.gethostname()) is not None
    except re.error as exc:
        raise ConfigError(f"if-hostname-match = {pattern}: not a regular expression ({exc})") from None


_TESTS: dict[str, Callable[[ConfigLogic, str], Matches]] = {
    "if-env": lambda logic, arg: logic._env(arg, False),
    "if-not-env": lambda logic, arg: logic._env(arg, True),
    "if-opt": lambda logic, arg: logic._opt(arg, False),
    "if-not-opt": lambda logic, arg: logic._opt(arg, True),
    "if-exists": _path_test(_exists, False),
    "if-not-exists": _path_test(_exists, True),
    "if-file": _path_test(os.path.isfile, False),
    "if-not-file": _path_test(os.path.isfile, True),
    "if-dir": _path_test(os.path.isdir, False),
    "if-not-dir": _path_test(os.path.isdir, True),
    "if-hostname": _path_test(lambda name: name == socket.gethostname(), False),
    "if-not-hostname": _path_test(lambda name: name == socket.gethostname(), True),
    "if-hostname-match": _path_test(_hostname_match, False),
    "if-not-hostname-match": _path_test(_hostname_match, True),
    "if-plugin": _path_test(built_in_plugin, False),
    "if-not-plugin": _path_test(built_in_plugin, True),
    # uwsgirouter reads its configuration once: a reload (SIGHUP) respawns workers without reading it again.
    "if-reload": lambda _logic, _arg: [],
    "if-not-reload": lambda _logic, _arg: [None],
    "for": lambda _logic, arg: [item for item in arg.split(" ") if item],
    "for-glob": lambda _logic, arg: _glob(arg),
    "for-times": lambda logic, arg: logic._times(arg),
    "for-readline": lambda logic, arg: logic._readline(arg),
}
