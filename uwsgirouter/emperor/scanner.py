"""Where the vassal files are: each ``--emperor`` value is a directory or a glob, as uWSGI decides.

uWSGI's rule: ``dir://PATH`` and ``glob://PATTERN`` say it; otherwise a value whose glob is exactly one
directory is that directory, and anything else is a glob. In a directory, vassals are named by their file
name and run in that directory; a glob's vassals are named by the path the glob gives (relative to the
Emperor's working directory when the pattern is) and run in the Emperor's working directory. Of uWSGI's
vassal formats (.ini, .xml, .yml, .yaml, .js, .json) only INI files are run here; the others are reported.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass

from uwsgirouter.errors import ConfigError

#: The file names uWSGI's Emperor takes as vassals.
VASSAL_SUFFIXES = (".xml", ".ini", ".yml", ".yaml", ".js", ".json")
SUPPORTED_SUFFIX = ".ini"
#: uWSGI ignores longer names (its vassal names are 255-byte buffers).
MAX_NAME = 0xFF - 1


@dataclass(frozen=True, slots=True)
class Found:
    """A vassal file seen by one scan."""

    name: str  #: the vassal's name, as uWSGI names it
    mtime_ns: int
    cwd: str  #: where the vassal runs (its name is relative to it)


class Scanner:
    """One ``--emperor`` value."""

    def __init__(self, spec: str, cwd: str) -> None:
        self.spec = spec
        self.cwd = cwd
        scheme, sep, rest = spec.partition("://")
        if sep and scheme not in ("dir", "glob"):
            raise ConfigError(
                f"--emperor {spec}: uwsgirouter's Emperor watches directories and globs of INI files, not "
                f"uWSGI's {scheme}:// monitors"
            )
        if sep:
            self.pattern, self.is_dir = rest, scheme == "dir"
        else:
            matches = glob.glob(os.path.join(cwd, spec))
            self.pattern, self.is_dir = spec, len(matches) == 1 and os.path.isdir(matches[0])
        #: directory mode: the absolute directory (uWSGI's realpath of it)
        self.directory = os.path.realpath(os.path.join(cwd, self.pattern)) if self.is_dir else ""

    def __str__(self) -> str:
        return self.directory or self.pattern

    def scan(self) -> tuple[list[Found], list[str]]:
        """The INI vassal files here now, and the vassal files in uWSGI's other formats (by name)."""
        if self.is_dir:
            try:
                names = sorted(os.listdir(self.directory))
            except OSError:
                return [], []
            where = self.directory
        else:
            pattern = os.path.join(self.cwd, self.pattern)
            start = len(self.cwd.rstrip("/")) + 1 if not os.path.isabs(self.pattern) else 0
            names = sorted(path[start:] for path in glob.glob(pattern))
            where = self.cwd
        found: list[Found] = []
        others: list[str] = []
        for name in names:
            if not name.endswith(VASSAL_SUFFIXES) or len(name) > MAX_NAME:
                continue
            mtime = regular_file_mtime(os.path.join(where, name))
            if mtime is None:
                continue
            if name.endswith(SUPPORTED_SUFFIX):
                found.append(Found(name, mtime, where))
            else:
                others.append(name)
        return found, others

    def exists(self, name: str) -> bool:
        """Whether the vassal file ``name`` (one of this scanner's) is still there: uWSGI's test for removal."""
        where = self.directory or self.cwd
        return regular_file_mtime(os.path.join(where, name)) is not None


def regular_file_mtime(path: str) -> int | None:
    """The modification time of ``path`` (links followed), or None when it is not a regular file."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns if stat.S_ISREG(info.st_mode) else None
