"""Write uwsgirouter/config/uwsgi_options.txt: every option of the real uWSGI binary, with its aliases.

``uwsgi --help`` lists every option (a line per name, aliases included) but not whether it takes a value,
and lines with the same help text are not always aliases (``--if-env``, ``--if-not-env`` and ``--ifenv``
share one text; only the first and the last set the same thing). Both facts are in the binary's option
table (``struct uwsgi_option``: name, argument type, short letter, help, function, data), so this script
reads the table from the ELF file, checks that every ``--help`` line matches exactly one entry, and groups
names whose entries have the same help, type, function and data. ``--check`` exits 1 when the committed
file differs (the tests run it when uWSGI is installed).

Usage: .venv/bin/python scripts/build_uwsgi_options.py [--check] [--uwsgi PATH]
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "uwsgirouter" / "config" / "uwsgi_options.txt"
DEFAULT_UWSGI = ROOT / ".venv" / "bin" / "uwsgi"
ARG_KINDS = {0: "none", 1: "required", 2: "optional"}  # getopt's no_argument, required_argument, optional_argument
R_X86_64_RELATIVE = 8
SHT_RELA, SHT_NOBITS = 4, 8
HELP_LINE = re.compile(r"^\s+(?:-(.)\|)?--(\S+)\s+(.*)$")

#: Options of uWSGI 2.0.31's core/uwsgi.c compiled only with PCRE, which the PyPI build lacks: internal routing
#: and regexp-based static headers. Real configurations use them (``route``), so they count as uWSGI options.
_ROUTE_SUFFIXES = ("", "-status", "-host", "-uri", "-qs", "-remote-addr", "-user-agent", "-remote-user", "-referer")
PCRE_ONLY = [
    *(f"{kind}route{suffix}" for kind in ("", "final-", "error-", "response-") for suffix in _ROUTE_SUFFIXES),
    *(
        f"{kind}route-{suffix}"
        for kind in ("", "final-", "error-", "response-")
        for suffix in ("label", "if", "if-not", "run")
    ),
    *(f"static-expires{suffix}" for suffix in ("", "-mtime", "-uri", "-uri-mtime", "-path-info", "-path-info-mtime")),
    "static-gzip",
    "if-hostname-match",
    "if-not-hostname-match",
]
#: Options of plugins the PyPI build does not ship, which real router configurations use: the external dgram_router
#: plugin (forwards subscription datagrams to other routers; uwsgi.it's fastrouter.ini).
PLUGIN_ONLY = {
    "dgram_router": [
        "dgram-router",
        "dgram-router-to",
        "dgram-router-bind",
        "dgram-router-psk-in",
        "dgram-router-psk-out",
    ]
}

#: (argument type, help, function, data) of one option table entry
Entry = tuple[int, str, int, int]


class Elf:
    """Just enough of a little-endian ELF64 file to follow the pointers of a PIE's data tables."""

    def __init__(self, data: bytes) -> None:
        if data[:6] != b"\x7fELF\x02\x01":
            raise SystemExit("not a little-endian ELF64 file")
        self.data = data
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        self.sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        self.pointers: dict[int, int] = {}
        for section in self.sections:
            if section[1] == SHT_RELA:
                for pos in range(section[4], section[4] + section[5], 24):
                    where, info, addend = struct.unpack_from("<QQq", data, pos)
                    if info & 0xFFFFFFFF == R_X86_64_RELATIVE:
                        self.pointers[where] = addend

    def offset(self, address: int) -> int | None:
        for _, kind, _, start, file_offset, size, *_ in self.sections:
            if kind != SHT_NOBITS and start and start <= address < start + size:
                return int(file_offset + address - start)
        return None

    def string(self, address: int) -> str | None:
        pos = self.offset(address)
        if pos is None:
            return None
        return self.data[pos : self.data.index(b"\0", pos)].decode("utf-8", "replace")

    def option_entries(self) -> dict[str, list[Entry]]:
        """Every place that looks like a ``struct uwsgi_option``, by name (the ``--help`` lines pick the real ones)."""
        found: dict[str, list[Entry]] = {}
        for where, target in self.pointers.items():
            if where + 16 not in self.pointers:
                continue
            name, help_text, pos = self.string(target), self.string(self.pointers[where + 16]), self.offset(where)
            if not name or help_text is None or pos is None:
                continue
            (kind,) = struct.unpack_from("<i", self.data, pos + 8)
            if kind in ARG_KINDS:
                function = self.pointers.get(where + 24, 0)
                data = self.pointers.get(where + 32, struct.unpack_from("<Q", self.data, pos + 32)[0])
                found.setdefault(name, []).append((kind, help_text.strip(), function, data))
        return found


def render(uwsgi: Path) -> str:
    help_text = subprocess.run([str(uwsgi), "--help"], capture_output=True, text=True, timeout=30, check=False).stdout
    version = subprocess.run([str(uwsgi), "--version"], capture_output=True, text=True, timeout=30, check=False)
    table = Elf(uwsgi.read_bytes()).option_entries()
    groups: dict[Entry, list[str]] = {}
    shorts: dict[Entry, str] = {}
    for line in help_text.splitlines()[1:]:
        match = HELP_LINE.match(line)
        if match is None:
            raise SystemExit(f"unexpected --help line: {line!r}")
        short, name, text = match.group(1), match.group(2), match.group(3).strip()
        candidates = {entry for entry in table.get(name, []) if entry[1] == text}
        if len(candidates) != 1:
            raise SystemExit(f"--{name}: {len(candidates)} option table entries match its --help line")
        entry = candidates.pop()
        groups.setdefault(entry, []).append(name)
        if short:
            shorts.setdefault(entry, short)
    if len(groups) < 500:
        raise SystemExit("could not read uWSGI's --help")
    lines = [
        f"# The options of uWSGI {version.stdout.strip()}, generated by scripts/build_uwsgi_options.py from",
        "# `uwsgi --help` and the binary's option table; do not edit. One option a line, tab-separated: its names",
        "# (aliases after the first), its short letter or '-', and whether it takes a value (none, required,",
        "# optional: only as --name=VALUE).",
    ]
    for entry, names in groups.items():
        lines.append(f"{' '.join(names)}\t{shorts.get(entry, '-')}\t{ARG_KINDS[entry[0]]}")
    lines.append("# compiled only with PCRE (internal routing), which this uWSGI build lacks")
    lines += [f"{name}\t-\trequired" for name in PCRE_ONLY if name not in table]
    if "router-list" not in table:
        lines.append("router-list routers-list\t-\tnone")
    for plugin, names in PLUGIN_ONLY.items():
        lines.append(f"# options of the {plugin} plugin, which this uWSGI build lacks")
        lines += [f"{name}\t-\trequired" for name in names if name not in table]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    parser.add_argument("--uwsgi", type=Path, default=DEFAULT_UWSGI, help="the uWSGI binary (default: %(default)s)")
    args = parser.parse_args()
    rendered = render(args.uwsgi)
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != rendered:
            print(f"{TARGET.relative_to(ROOT)} is stale: run .venv/bin/python scripts/build_uwsgi_options.py")
            return 1
        return 0
    TARGET.write_text(rendered, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
