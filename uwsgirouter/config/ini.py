"""uWSGI's INI dialect: the file "magic" variables, then ``key = value`` lines of one section.

Kept apart from option semantics so it can be tested line by line. The rules follow uWSGI 2.0
(``core/ini.c``): comments are whole lines starting with ``;`` or ``#`` (no inline comments), a line
splits at its first ``=``, spaces, tabs and CR are trimmed, a key without ``=`` has an empty value,
and every ``[section]`` block with the asked name counts.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from uwsgirouter import __version__
from uwsgirouter.errors import ConfigError

DEFAULT_SECTION = "uwsgi"
_TRIM = " \t\r"


@dataclass(frozen=True, slots=True)
class IniSource:
    """Which file and section a ``--ini`` value names."""

    path: str
    section: str
    #: the section as spelled after ':' ('' when none was named): what ``%x`` expands to
    named_section: str = ""


def split_ini_spec(spec: str, previous_path: str | None) -> IniSource:
    """``file.ini[:section]``; ``:section`` reuses the previous file, as uWSGI does."""
    path, colon, section = spec.rpartition(":")
    if not colon:
        path, section = spec, ""
    if not path:
        if previous_path is None:
            raise ConfigError(f"--ini {spec}: ':section' needs an INI file named before it")
        path = previous_path
    return IniSource(path, section or DEFAULT_SECTION, section)


def _djb33x(data: bytes) -> int:
    value = 5381
    for byte in data:
        value = ((value * 33) ^ byte) & 0xFFFFFFFF
    return value


def magic_table(source: IniSource, first: dict[str, str] | None = None) -> dict[str, str]:
    """The ``%X`` values for one file; ``first`` (the first file's table) supplies the upper-case ones."""
    full = os.path.abspath(source.path)
    directory, _, name = full.rpartition("/")
    directory += "/"
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    parts = [p for p in directory.split("/") if p][:10]
    try:
        inode = str(os.lstat(full).st_ino)
    except OSError:
        inode = ""
    table = {
        "o": source.path,
        "p": full,
        "s": name,
        "d": directory,
        "c": parts[-1] if parts else "",
        "e": extension,
        "n": stem,
        "x": source.named_section,
        "i": inode,
        "j": _djb33x(full.encode()).to_bytes(4, "little").hex().upper(),  # as uWSGI prints it
        "v": os.getcwd(),
        "h": socket.gethostname(),
        "k": str(os.cpu_count() or 1),
        "t": str(int(time.time())),
        "T": str(int(time.time() * 1_000_000)),
        "V": __version__,
        "u": str(os.getuid()),
        "g": str(os.getgid()),
        "b": "uwsgirouter",
        "[": "\033",
        "%": "%",
        "(": "%(",
    }
    table.update({str(i): part for i, part in enumerate(parts)})
    for letter in "ODSPCENXIJ":
        table[letter] = (first or table)[letter.lower()]
    return table


def apply_magic(text: str, table: dict[str, str]) -> str:
    """Replace every ``%X``; an unknown ``X`` is removed with its ``%``, as uWSGI does (``%z`` -> "")."""
    out: list[str] = []
    i = 0
    while True:
        j = text.find("%", i)
        if j < 0 or j + 1 >= len(text):
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        out.append(table.get(text[j + 1], ""))
        i = j + 2


def parse_ini(
    text: str, section: str, problems: list[tuple[int, str, str]] | None = None
) -> tuple[list[tuple[str, str]], bool]:
    """The ``(key, value)`` pairs of ``section`` in order, and whether the section exists at all.

    uWSGI reads a header without ``]`` as a section named without its last character, and a line without
    ``=`` as a key with an empty value, both silently. Such lines are appended to ``problems`` as
    ``(line number, what is wrong, key)``: headers anywhere in the file (key ""), lines without ``=`` in
    ``section`` (the loader keeps quiet when the key is an option name: ``master`` alone turns a flag on).
    Numbers count lines after the file magic, where only a ``%`` at the end of a line (which eats the
    newline) shifts them.
    """
    pairs: list[tuple[str, str]] = []
    current = ""
    found = False
    for number, raw_line in enumerate(text.split("\n"), 1):
        line = raw_line.strip(_TRIM)
        if not line or line[0] in ";#":
            continue
        if line[0] == "[":
            current = line[1:-1]
            found = found or current == section
            if problems is not None and line[-1] != "]":
                problems.append(
                    (number, f"section header {line!r} has no closing ']': the lines after it are ignored", "")
                )
            continue
        if current != section:
            continue
        key, eq, value = line.partition("=")
        key = key.strip(_TRIM)
        if problems is not None and not eq:
            problems.append((number, f"{line!r} has no '=': ignored (write KEY = VALUE)", key))
        pairs.append((key, value.strip(_TRIM)))
    return pairs, found


def read_ini(
    source: IniSource, first_table: dict[str, str] | None = None, problems: list[tuple[int, str, str]] | None = None
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Read, apply the magic and parse one section (``problems`` as in ``parse_ini``).

    A missing file or section is a ``ConfigError``.
    """
    try:
        with open(source.path, encoding="utf-8", errors="surrogateescape") as handle:
            raw = handle.read()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"unable to load configuration from {source.path}: {reason}") from None
    table = magic_table(source, first_table)
    pairs, found = parse_ini(apply_magic(raw, table), source.section, problems)
    if not found:
        raise ConfigError(f"unable to load configuration from {source.path}: no [{source.section}] section")
    return pairs, table
