"""uwsgirouter: a drop-in replacement for the uWSGI FastRouter.

Some modules may be compiled with mypyc (the list is in setup.py); their ``.py`` sources are installed beside
them. This module is never compiled: it runs before any other of the package, so it is where
``UWSGIROUTER_PURE=1`` makes every ``uwsgirouter.*`` import load the ``.py`` source even where a compiled module
sits beside it (Python prefers extension modules). Coverage and mutation testing see only Python code, and the
editable install builds the compiled modules in place, next to the sources they would hide.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from types import ModuleType

__version__ = "0.1.0"

#: Set to anything but "" or "0": run the Python sources of the compiled modules (inherited by child processes).
PURE_VARIABLE = "UWSGIROUTER_PURE"


class SourceOnlyFinder(MetaPathFinder):
    """Finds the package's submodules as ``.py`` sources only; placed first in ``sys.meta_path``."""

    def __init__(self) -> None:
        self._finders: dict[str, FileFinder] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if path is None or not fullname.startswith(__name__ + "."):
            return None
        for entry in path:
            finder = self._finders.get(entry)
            if finder is None:
                finder = self._finders[entry] = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES))
            spec = finder.find_spec(fullname, target)
            if spec is not None and spec.loader is not None:
                return spec
        return None  # not a source module (the compiled code's own library): the usual finders decide

    def invalidate_caches(self) -> None:
        self._finders.clear()


def pure_requested() -> bool:
    return os.environ.get(PURE_VARIABLE, "") not in ("", "0")


if pure_requested() and not any(isinstance(finder, SourceOnlyFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, SourceOnlyFinder())


def compiled_modules() -> list[str]:
    """The package's modules that this process runs compiled: those whose import loads an extension module."""
    import importlib.util

    root = __path__[0]
    found = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if name != "__pycache__")
        for name in sorted(names):
            suffix = next((suffix for suffix in EXTENSION_SUFFIXES if name.endswith(suffix)), None)
            if suffix is None or name.startswith("_"):
                continue  # not an extension module, or mypyc's shared library, or a C helper (router/_fastio.c)
            relative = os.path.relpath(os.path.join(directory, name[: -len(suffix)]), root)
            parts = relative.split(os.sep)
            module = ".".join([__name__, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            try:
                spec = importlib.util.find_spec(module)
            except ImportError:  # its package does not import: it runs neither way, and --version must still answer
                continue
            if spec is not None and spec.origin is not None and spec.origin.endswith(suffix):
                found.append(module)
    return found


def build_kind() -> str:
    """Which build runs, as ``--version`` says it: 'compiled with mypyc: N modules' or 'pure Python'."""
    count = len(compiled_modules())
    return f"compiled with mypyc: {count} module{'s' if count != 1 else ''}" if count else "pure Python"
