"""From ``UWSGI_*`` variables, the command line and INI files to one ordered list of option entries.

uWSGI's order, which configs depend on: (1) the environment, (2) the command line left to right with
every ``--ini`` expanded in place, (3) positional configuration files. Then three substitution passes over
every value: ``$(VAR)``, ``@(file)``, ``%(option)``. Scalars take the last value, ``%(...)`` and ``--get``
the first. Unknown keys in files and the environment are kept as placeholders for ``%(...)``; a real uWSGI
option that uwsgirouter lacks is kept too, and named in a warning (or refused, see ``uwsgi_names``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

from uwsgirouter.config.ini import read_ini, split_ini_spec
from uwsgirouter.config.logic import ConfigLogic
from uwsgirouter.config.model import REGISTRY, Config, Entry
from uwsgirouter.config.setting import Arg
from uwsgirouter.config.uwsgi_names import UWSGI_OPTIONS, UWSGI_SHORTS, foreign_plugins
from uwsgirouter.errors import ConfigError

#: Variables uWSGI sets for its own processes; they are never options.
RESERVED_ENV = frozenset(
    {
        "UWSGI_RELOADS",
        "UWSGI_VASSALS_DIR",
        "UWSGI_EMPEROR_FD",
        "UWSGI_BROODLORD_NUM",
        "UWSGI_EMPEROR_FD_CONFIG",
        "UWSGI_EMPEROR_PROXY",
        "UWSGI_JAIL_PID",
        "UWSGI_ORIGINAL_PROC_NAME",
    }
)
MAX_INI_DEPTH = 16
#: INI files and sections read in all: a few includes per level would otherwise multiply up to the depth bound
MAX_INI_LOADS = 256
MAX_SUBSTITUTIONS = 256
#: characters the substitutions may add to all values together: values that double each other stop here
MAX_EXPANSION = 1 << 20
OTHER_FORMATS = (".xml", ".yaml", ".yml", ".json", ".js")


def _unknown_option(name: str) -> ConfigError:
    hint = REGISTRY.suggest(name)
    suffix = f" (did you mean --{hint}?)" if hint else ""
    return ConfigError(f"unknown option --{name}{suffix}")


def env_entries(environ: Mapping[str, str]) -> list[Entry]:
    """``UWSGI_FASTROUTER_USE_BASE=/x`` -> ``fastrouter-use-base = /x``; unknown names become placeholders."""
    entries = []
    for name, value in environ.items():
        if name.startswith("UWSGI_") and name not in RESERVED_ENV and len(name) > 6:
            entries.append(Entry(name[6:].lower().replace("_", "-"), value, f"environment {name}"))
    return entries


def argv_entries(argv: Sequence[str]) -> tuple[list[Entry], list[str]]:
    """Tokenise the command line like getopt_long, without abbreviations; returns entries and positionals."""
    entries: list[Entry] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            setting = REGISTRY.lookup(name) or UWSGI_OPTIONS.get(name)
            if setting is None:
                raise _unknown_option(name)
            if eq:
                entries.append(Entry(name, value, "command line"))
            elif setting.arg is not Arg.REQUIRED:
                entries.append(Entry(name, None, "command line"))
            elif i < len(argv) and not _is_known_long_option(argv[i]):
                entries.append(Entry(name, argv[i], "command line"))
                i += 1
            else:
                raise ConfigError(f"option --{name} requires a value (write --{name}=VALUE)")
        elif arg.startswith("-") and len(arg) > 1:
            i = _short_options(argv, i, arg, entries)
        else:
            positional.append(arg)
    return entries, positional


def _is_known_long_option(arg: str) -> bool:
    name = arg[2:].partition("=")[0]
    return arg.startswith("--") and (REGISTRY.lookup(name) is not None or name in UWSGI_OPTIONS)


def _short_options(argv: Sequence[str], i: int, arg: str, entries: list[Entry]) -> int:
    """``-M``, ``-MT`` (clustered flags), ``-p4`` and ``-p 4``; returns the next argv index."""
    letters = arg[1:]
    for pos, letter in enumerate(letters):
        setting = REGISTRY.by_short.get(letter) or UWSGI_SHORTS.get(letter)
        if setting is None:
            raise ConfigError(f"unknown option -{letter}")
        if setting.arg is not Arg.REQUIRED:
            rest = letters[pos + 1 :]
            if setting.arg is Arg.OPTIONAL and rest:
                entries.append(Entry(setting.name, rest, "command line"))
                return i
            entries.append(Entry(setting.name, None, "command line"))
            continue
        rest = letters[pos + 1 :]
        if rest:
            entries.append(Entry(setting.name, rest, "command line"))
            return i
        if i < len(argv) and not _is_known_long_option(argv[i]):
            entries.append(Entry(setting.name, argv[i], "command line"))
            return i + 1
        raise ConfigError(f"option -{letter} (--{setting.name}) requires a value")
    return i


class _Expander:
    """Expands ``ini`` entries (and positional files) in place, remembering uWSGI's 'previous file'."""

    def __init__(self, warn: Callable[[str], None], environ: Mapping[str, str]) -> None:
        self.warn = warn
        self.logic = ConfigLogic(environ, self._first_added, warn)
        self.previous_path: str | None = None
        self.first_table: dict[str, str] | None = None
        self.out: list[Entry] = []
        self.loads = 0
        # An included section can be read many times: suggest once per key, warn once per key and file.
        self.hints: dict[str, str | None] = {}
        self.warned: set[tuple[str, str]] = set()
        #: "file:line: what is wrong" for INI lines uWSGI would drop silently, each once
        self.problems: dict[str, None] = {}

    def add(self, entries: Sequence[Entry], depth: int = 0) -> None:
        for entry in entries:
            values = self.logic.feed(entry.key, entry.value, entry.origin)
            if values is None:
                continue
            inside = self.logic.opener is not None and not self.logic.verbatim
            self.logic.verbatim += inside
            try:
                for value in values:
                    self.take(Entry(entry.key, value, entry.origin), depth)
            finally:
                self.logic.verbatim -= inside

    def take(self, entry: Entry, depth: int) -> None:
        """One option that passed the configuration logic: kept, and expanded when it loads or sets others."""
        if entry.key in ("include", "inherit"):
            # uWSGI's include (immediate) and inherit (a template, as the Emperor's --vassals-inherit passes):
            # INI files only here, both read in place like ``ini``.
            if not (entry.value or "").endswith(".ini"):
                raise ConfigError(
                    f"{entry.key} = {entry.value} ({entry.origin}): uwsgirouter includes INI files only (FILE.ini)"
                )
            self.load_file(entry.value or "", depth)
            return
        self.out.append(entry)
        if entry.key == "ini":
            if not entry.value:  # uWSGI fails on it too ("realpath() of  failed"); here it would reread the last file
                raise ConfigError(f"ini = ({entry.origin}): no file named")
            self.load_file(entry.value, depth)
        elif entry.key == "set" and entry.value is not None:
            name, eq, value = entry.value.partition("=")
            if not eq or not name:
                raise ConfigError(f"--set {entry.value!r}: expected NAME=VALUE")
            self.out.append(Entry(name, value, entry.origin))

    def _first_added(self, name: str) -> str | None:
        """``if-opt``'s lookup: the first value added so far under exactly that name, as uWSGI's."""
        for entry in self.out:
            if entry.key == name:
                return entry.value
        return None

    def load_file(self, spec: str, depth: int) -> None:
        if depth >= MAX_INI_DEPTH:
            raise ConfigError(f"{spec}: INI files include each other more than {MAX_INI_DEPTH} levels deep")
        self.loads += 1
        if self.loads > MAX_INI_LOADS:
            raise ConfigError(f"{spec}: more than {MAX_INI_LOADS} INI files or sections loaded (do includes multiply?)")
        source = split_ini_spec(spec, self.previous_path)
        problems: list[tuple[int, str, str]] = []
        pairs, table = read_ini(source, self.first_table, problems)
        self.previous_path = source.path
        if self.first_table is None:
            self.first_table = table
        origin = f"{source.path} [{source.section}]"
        broken = set()
        for number, message, key in problems:
            if not _is_option_name(key):
                self.problems[f"{source.path}:{number}: {message}"] = None
                broken.add(key)
        entries = []
        for key, value in pairs:
            if REGISTRY.lookup(key) is None and key not in UWSGI_OPTIONS and key not in broken:
                if key not in self.hints:
                    self.hints[key] = REGISTRY.suggest(key, cutoff=0.88)
                hint = self.hints[key]
                if hint and (key, source.path) not in self.warned:
                    self.warned.add((key, source.path))
                    self.warn(f"unknown option {key!r} in {source.path} (did you mean {hint}?); kept as a placeholder")
            entries.append(Entry(key, value, origin))
        self.add(entries, depth + 1)

    def load_positional(self, path: str) -> None:
        if path.endswith(OTHER_FORMATS):
            raise ConfigError(f"unable to load configuration from {path}: uwsgirouter reads INI files only")
        if not path.endswith(".ini"):
            raise ConfigError(f"unable to load configuration from {path}: positional arguments must be .ini files")
        self.load_file(path, 0)


def apply_pass(value: str, symbol: str, hook: Callable[[str], str | None], max_size: int = sys.maxsize) -> str:
    """Replace every ``<symbol>(name)`` by ``hook(name)``, leaving it as written when the hook gives None.

    Parentheses nest (``%(a (b))``). As in uWSGI the scan restarts after each replacement, so results
    are substituted too; bounds stop a value that keeps expanding into itself or past ``max_size``.
    """
    opener = symbol + "("
    start = 0
    for _ in range(MAX_SUBSTITUTIONS):
        begin = value.find(opener, start)
        if begin < 0:
            return value
        depth, pos = 0, begin + 2
        while pos < len(value):
            char = value[pos]
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            pos += 1
        if pos >= len(value):
            return value
        replacement = hook(value[begin + 2 : pos])
        if replacement is None:
            start = pos + 1
            continue
        value = value[:begin] + replacement + value[pos + 1 :]
        if len(value) > max_size:
            raise ConfigError(f"substitutions make {value[:60]!r}... too large (do values double each other?)")
        start = 0
    raise ConfigError(f"too many substitutions in {value[:60]!r} (does a value refer to itself?)")


def _read_at_file(path: str) -> str:
    """``@(path)``: the file's content minus one trailing newline; a missing file stops, as in uWSGI."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            content = handle.read()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or exc
        # The path may hold a newline (file content substituted before it): keep the message on one line.
        shown = path if path.isprintable() else repr(path)
        raise ConfigError(f"@({shown}): {reason}") from None
    return content[:-1] if content.endswith("\n") else content


def _placeholder(entries: Sequence[Entry]) -> Callable[[str], str | None]:
    """``%(name)``: the first value as ``model.first_value`` finds it, from an index built once.

    Keys do not change while values are substituted, so the index stays right, and a configuration with
    many entries and placeholders costs linear time instead of quadratic.
    """
    by_key: dict[str, int] = {}
    by_setting: dict[str, int] = {}
    for index, entry in enumerate(entries):
        by_key.setdefault(entry.key, index)
        setting = REGISTRY.lookup(entry.key)
        if setting is not None:
            by_setting.setdefault(setting.name, index)

    def first(name: str) -> str | None:
        index = by_key.get(name)
        if index is None:
            setting = REGISTRY.lookup(name)
            index = None if setting is None else by_setting.get(setting.name)
        return None if index is None else entries[index].value

    def hook(expression: str) -> str | None:
        return first(expression) if " " not in expression else _placeholder_math(expression, first)

    return hook


def _placeholder_math(expression: str, first: Callable[[str], str | None]) -> str:
    """uWSGI's ``%(processes + 2)``: tokens concatenate, ``+ - * /`` apply to integers, ``++``/``--`` step.

    The integers are uWSGI's int64 (strtoll, then C arithmetic): a result wraps instead of growing
    without bound, so a chain of products cannot reach Python's int/str limits or float overflow.
    """
    current: str | None = None
    operator = ""
    for token in expression.split():
        if token in ("+", "-", "*", "/"):
            operator = token
            continue
        if token in ("++", "--"):
            if current is not None:
                current = str(_wrap64(_to_int(current) + (1 if token == "++" else -1)))
            operator = ""
            continue
        value = token if token.lstrip("-").isdigit() else (first(token) or "")
        if not operator:
            current = (current or "") + value
            continue
        left, right = _to_int(current or "0"), _to_int(value)
        if operator == "+":
            result = left + right
        elif operator == "-":
            result = left - right
        elif operator == "*":
            result = left * right
        elif right:
            result = abs(left) // abs(right) * (1 if (left < 0) == (right < 0) else -1)  # C: toward zero
        else:
            result = 0
        current = str(_wrap64(result))
        operator = ""
    return current or ""


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _wrap64(value: int) -> int:
    """Two's complement int64, as uWSGI's arithmetic overflows on the machines it runs on."""
    return (value - _INT64_MIN) % 2**64 + _INT64_MIN


def _to_int(text: str) -> int:
    """strtoll: the leading integer of ``text``, 0 when there is none, saturated to the int64 range."""
    text = text.strip()
    end = 1 if text[:1] in "+-" else 0
    while end < len(text) and text[end].isdigit():
        end += 1
    number = text[:end]
    if len(number.lstrip("+-0")) > 19:  # past int64 whatever the digits; also keeps int() off huge strings
        return _INT64_MIN if number.startswith("-") else _INT64_MAX
    try:
        return max(_INT64_MIN, min(_INT64_MAX, int(number)))
    except ValueError:
        return 0


def substitute(entries: Sequence[Entry], environ: Mapping[str, str]) -> list[Entry]:
    """The three passes, in uWSGI's order, over every value."""
    result = list(entries)
    passes: list[tuple[str, Callable[[str], str | None]]] = [
        ("$", environ.get),
        ("@", _read_at_file),
        ("%", _placeholder(result)),
    ]
    budget = MAX_EXPANSION
    for symbol, hook in passes:
        for index, entry in enumerate(result):
            if entry.value is not None and symbol + "(" in entry.value:
                value = apply_pass(entry.value, symbol, hook, len(entry.value) + budget)
                budget -= max(0, len(value) - len(entry.value))
                result[index] = Entry(entry.key, value, entry.origin)
    return result


def _is_option_name(key: str) -> bool:
    """A bare INI line naming an option is uWSGI's way to give it an empty value (``master`` turns it on)."""
    return bool(key) and (REGISTRY.lookup(key) is not None or key in UWSGI_OPTIONS)


def _print_warning(message: str) -> None:
    print(f"uwsgirouter: {message}", file=sys.stderr)


def _load(
    argv: Sequence[str], environ: Mapping[str, str], warn: Callable[[str], None]
) -> tuple[list[Entry], list[str]]:
    expander = _Expander(warn, environ)
    expander.add(env_entries(environ))
    cli, positional = argv_entries(argv)
    expander.add(cli)
    for path in positional:
        expander.load_positional(path)
    unclosed = expander.logic.unclosed()
    if unclosed:
        warn(unclosed)
    return substitute(expander.out, environ), list(expander.problems)


def load_entries(
    argv: Sequence[str], environ: Mapping[str, str], warn: Callable[[str], None] | None = None
) -> list[Entry]:
    """Every option occurrence in uWSGI's load order, substitutions done; broken INI lines are warned about."""
    entries, problems = _load(argv, environ, warn or _print_warning)
    for problem in problems:
        (warn or _print_warning)(problem)
    return entries


def load_config(argv: Sequence[str], environ: Mapping[str, str], warn: Callable[[str], None] | None = None) -> Config:
    """Build the typed configuration; every user mistake is a one-line ``ConfigError``.

    Order matters for the one-line promise: refusals and ``--strict`` errors come before any warning
    about the rest of the configuration.
    """
    warn = warn or _print_warning
    # What reading the files noticed (near-miss keys, configuration logic) waits for the refusals and the
    # --strict checks: a refused file gives its one line alone, not a "kept as a placeholder" before it.
    noticed: list[str] = []
    entries, problems = _load(argv, environ, noticed.append)
    config = Config(entries)
    unknown = [entry for entry in entries if REGISTRY.lookup(entry.key) is None]
    for entry in unknown:
        option = UWSGI_OPTIONS.get(entry.key)
        if option is not None and option.refusal:
            raise ConfigError(
                f"uWSGI option --{entry.key} ({entry.origin}) is not supported by uwsgirouter: {option.refusal}"
            )
    if config.strict:
        if problems:
            raise ConfigError(f"{problems[0]} (--strict)")
        for entry in unknown:
            if entry.key not in UWSGI_OPTIONS:
                hint = REGISTRY.suggest(entry.key)
                suffix = f" (did you mean --{hint}?)" if hint else ""
                raise ConfigError(
                    f"unknown option {entry.key!r} in {entry.origin}{suffix} (--strict forbids placeholders)"
                )
    for message in noticed:
        warn(message)
    for problem in problems:
        warn(problem)
    named: set[str] = set()
    for entry in unknown:
        option = UWSGI_OPTIONS.get(entry.key)
        if option is not None and option.name not in named:
            named.add(option.name)
            warn(f"uWSGI option --{entry.key} ({entry.origin}) is not implemented by uwsgirouter: ignored")
    plugins = foreign_plugins([*config.plugins, *config.need_plugins])
    if plugins:
        warn(f"uWSGI plugins not available in uwsgirouter, ignored: {', '.join(plugins)}")
    return config
