"""Build script: which modules mypyc compiles to C extensions. Everything else about the package is in setup.cfg.

The listed modules are compiled with mypyc (as black is) into one shared library, ``uwsgirouter/_compiled__mypyc``,
plus one small extension per module that Python imports instead of the ``.py`` beside it. The ``.py`` files are
installed too: ``UWSGIROUTER_PURE=1`` runs them (see ``uwsgirouter/__init__.py``), and ``uwsgirouter --version``
says which build runs.

The build never fails for want of a compiler: when mypyc is missing, a module does not compile or there is no
working C compiler, one line says so and the package is built as pure Python. ``UWSGIROUTER_PURE_BUILD=1`` asks
for the pure build without trying.

What changes for a compiled module (measured with mypy 2.4; docs/benchmarks.md, "The compiled build", says more):
a class that inherits from an interpreted class (a module not listed here) quietly stays an ordinary Python class
(attributes in a __dict__, no speed gained): compile its bases too; an interpreted class cannot inherit from a
compiled one (TypeError at its definition) unless that is decorated ``@mypyc_attr(allow_interpreted_subclasses=True)``;
compiled instances take no attribute their class does not declare, and their methods cannot be replaced; annotations
are checked at run time (a ``bytes`` parameter refuses a memoryview); a monkeypatched module function or class
method is not seen by compiled callers (they call it directly), nor is a ``Final`` constant (inlined). Tests fake
what the code is handed (a socket, a clock, a loop object) or patch the standard library, which stays seen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: Modules compiled with mypyc, one a line. Adding one is one line here (run `scripts/install` again afterwards).
COMPILED_MODULES = [
    "uwsgirouter/protocol/errors.py",
    "uwsgirouter/protocol/packet.py",
    "uwsgirouter/protocol/request.py",
    "uwsgirouter/router/loop.py",
    "uwsgirouter/router/peer.py",
    "uwsgirouter/router/session.py",
    "uwsgirouter/router/states.py",
    "uwsgirouter/router/routing.py",
    "uwsgirouter/router/core.py",
    "uwsgirouter/router/nodes.py",
    "uwsgirouter/router/postbuffer.py",
    "uwsgirouter/router/responses.py",
    "uwsgirouter/router/mappers/base.py",
    "uwsgirouter/router/mappers/static.py",
    "uwsgirouter/router/mappers/path.py",
    "uwsgirouter/text.py",
]
#: C modules written by hand, built with the mypyc modules (and, like them, left out of the pure build).
C_MODULES = {"uwsgirouter.router._fastio": "uwsgirouter/router/_fastio.c"}
#: The shared library of the compiled code; inside the package, so that the editable install's finder maps it.
GROUP_NAME = "uwsgirouter._compiled"
PURE_BUILD_VARIABLE = "UWSGIROUTER_PURE_BUILD"


#: Commands that build the package (the others only write metadata or an sdist, which compiles when it is built).
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "bdist_egg", "editable_wheel", "develop", "install"}
#: Commands that put the compiled modules beside the sources (``pip install -e``; ``build_ext --inplace``).
IN_PLACE_COMMANDS = {"editable_wheel", "develop", "--inplace", "-i"}
HERE = os.path.dirname(os.path.abspath(__file__))


def note(message: str) -> None:
    print(f"uwsgirouter: {message}", file=sys.stderr, flush=True)


def remove_in_place_modules() -> None:
    """Remove the compiled modules an earlier in-place build left beside the sources.

    Python prefers them to the ``.py`` files, so one left from an earlier build (a module since dropped from
    COMPILED_MODULES, or any module when this build turns out pure) would keep running in place of its source.
    Every extension module under uwsgirouter/ is a product of this script.
    """
    for directory, _, names in os.walk(os.path.join(HERE, "uwsgirouter")):
        for name in names:
            if name.endswith(tuple(EXTENSION_SUFFIXES)):
                os.unlink(os.path.join(directory, name))


def compiled_extensions() -> list[Any]:
    """mypyc's extensions for COMPILED_MODULES, or none (the pure build) when they cannot be made."""
    arguments = set(sys.argv[1:])
    if not arguments & BUILD_COMMANDS:
        return []  # metadata or sdist: nothing to compile (setuptools runs this script for each step)
    if arguments & IN_PLACE_COMMANDS:
        remove_in_place_modules()
    if os.environ.get(PURE_BUILD_VARIABLE, "") not in ("", "0"):
        note(f"building pure Python ({PURE_BUILD_VARIABLE} is set)")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as error:
        note(f"building pure Python (mypyc is not installed: {error})")
        return []
    try:
        compiled = list(mypycify(COMPILED_MODULES, group_name=GROUP_NAME))
    except (Exception, SystemExit) as error:  # mypyc exits after printing the errors of a module it cannot compile
        note(f"building pure Python (mypyc could not translate the modules of setup.py, see above: {error!r})")
        return []
    return compiled + [Extension(name, [source]) for name, source in C_MODULES.items()]


def describe(error: BaseException) -> str:
    """A short account of a failed compiler run: the command's program and status, not its 30 arguments."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, subprocess.CalledProcessError):
            program = seen.cmd[0] if isinstance(seen.cmd, (list, tuple)) and seen.cmd else seen.cmd
            return f"{program} exited with status {seen.returncode}"
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


class OptionalBuildExt(build_ext):
    """Builds the compiled modules when a C compiler works, and falls back to the pure build when none does."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # CompileError, LinkError, ExecError, PlatformError: no working C compiler
            for extension in self.extensions:
                path = self.get_ext_fullpath(extension.name)
                if os.path.exists(path):
                    os.unlink(path)  # a half-built set must not be installed
            self.extensions = []
            self.distribution.ext_modules = []
            note(f"building pure Python (no working C compiler for the mypyc modules: {describe(error)})")
        else:
            if self.extensions:
                note(f"compiled with mypyc: {len(COMPILED_MODULES)} modules, and {len(C_MODULES)} C module")

    def get_outputs(self) -> list[str]:
        return list(super().get_outputs()) if self.extensions else []

    def get_output_mapping(self) -> dict[str, str]:
        return dict(super().get_output_mapping()) if self.extensions else {}


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
