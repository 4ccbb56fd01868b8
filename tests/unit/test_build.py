"""Which build runs: the modules setup.py compiles with mypyc, or their sources under UWSGIROUTER_PURE=1.

The compiled modules sit beside their sources (the editable install builds them in place); Python prefers them.
``uwsgirouter --version`` names the build, and real processes are checked for the files their imports loaded.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import uwsgirouter
import uwsgirouter.protocol
from uwsgirouter import SourceOnlyFinder, __version__

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).with_name("uwsgirouter")


def compiled_list() -> list[str]:
    """setup.py's COMPILED_MODULES, as module names."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMPILED_MODULES" for t in node.targets):
            return [path.removesuffix(".py").replace("/", ".") for path in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no COMPILED_MODULES")


MODULES = compiled_list()


def is_built(module: str) -> bool:
    base = ROOT / module.replace(".", "/")
    return any(base.with_name(base.name + suffix).exists() for suffix in EXTENSION_SUFFIXES)


needs_compiled = pytest.mark.skipif(
    not all(is_built(module) for module in MODULES),
    reason="a pure-Python build (no working C compiler, or UWSGIROUTER_PURE_BUILD=1): nothing compiled to run",
)

#: Prints the file each named module was loaded from.
LOADED_FROM = (
    "import importlib, json, sys; print(json.dumps([importlib.import_module(m).__file__ for m in sys.argv[1:]]))"
)


def run(command: list[str], pure: bool) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "UWSGIROUTER_PURE"}
    if pure:
        env["UWSGIROUTER_PURE"] = "1"
    return subprocess.run(command, env=env, cwd="/", capture_output=True, text=True, timeout=60, check=False)


def loaded_from(pure: bool) -> list[str]:
    done = run([sys.executable, "-c", LOADED_FROM, *MODULES], pure)
    assert (done.returncode, done.stderr) == (0, "")
    files: list[str] = json.loads(done.stdout)
    return files


@needs_compiled
def test_the_compiled_build_runs_and_version_says_so() -> None:
    done = run([str(CONSOLE_SCRIPT), "--version"], pure=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"uwsgirouter {__version__} (compiled with mypyc: {len(MODULES)} modules)\n"
    assert all(file.endswith(tuple(EXTENSION_SUFFIXES)) for file in loaded_from(pure=False))


def test_uwsgirouter_pure_runs_the_sources_and_version_says_so() -> None:
    done = run([str(CONSOLE_SCRIPT), "--version"], pure=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"uwsgirouter {__version__} (pure Python)\n", "")
    expected = [str(ROOT / module.replace(".", "/")) + ".py" for module in MODULES]
    assert loaded_from(pure=True) == expected


def test_the_source_only_finder_finds_the_package_s_sources_only() -> None:
    finder = SourceOnlyFinder()
    spec = finder.find_spec("uwsgirouter.protocol.packet", uwsgirouter.protocol.__path__)
    assert spec is not None and spec.origin == str(ROOT / "uwsgirouter" / "protocol" / "packet.py")
    package = finder.find_spec("uwsgirouter.protocol", uwsgirouter.__path__)
    assert package is not None and package.origin == str(ROOT / "uwsgirouter" / "protocol" / "__init__.py")
    assert finder.find_spec("uwsgirouter.protocol.nothing", uwsgirouter.protocol.__path__) is None
    assert finder.find_spec("uwsgirouter._compiled__mypyc", uwsgirouter.__path__) is None  # no source: not ours
    assert finder.find_spec("uwsgirouter", None) is None  # the package itself is found as usual
    assert finder.find_spec("json.decoder", [str(Path(json.__file__).parent)]) is None
    finder.invalidate_caches()  # importlib.invalidate_caches(): a module added since is found
    assert finder.find_spec("uwsgirouter.protocol.packet", uwsgirouter.protocol.__path__) == spec
