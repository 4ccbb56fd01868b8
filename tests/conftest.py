from __future__ import annotations

import shutil
from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import uwsgirouter
from tests.ci_policy import pytest_runtest_makereport
from tests.support import ProcessManager, short_unix_dir

__all__ = ["pytest_runtest_makereport"]  # the CI policy hook, registered by being here


def stale_compiled_modules(package: Path) -> list[str]:
    """Sources edited (or gone) since the editable install compiled them beside themselves, which Python, preferring
    the compiled module, would not run."""
    stale = []
    for compiled in sorted(package.rglob("*")):
        suffix = next((suffix for suffix in EXTENSION_SUFFIXES if compiled.name.endswith(suffix)), None)
        if suffix is None or compiled.name.endswith("__mypyc" + suffix):
            continue
        source = compiled.with_name(compiled.name[: -len(suffix)] + ".py")
        if not source.exists() and source.with_suffix(".c").exists():
            source = source.with_suffix(".c")  # a C module written by hand (setup.py, C_MODULES)
        if not source.exists() or source.stat().st_mtime > compiled.stat().st_mtime:
            stale.append(str(source.relative_to(package.parent)))
    return stale


def pytest_configure(config: pytest.Config) -> None:
    stale = [] if uwsgirouter.pure_requested() else stale_compiled_modules(Path(uwsgirouter.__path__[0]))
    if stale:
        raise pytest.UsageError(
            f"{', '.join(stale)} changed after it was compiled, so the tests would run the old code: "
            "run scripts/install to compile again (or set UWSGIROUTER_PURE=1 to test the sources)"
        )


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessManager]:
    """Start real processes for a test; all of them are stopped (group-killed) at teardown."""
    manager = ProcessManager(tmp_path)
    try:
        yield manager
    finally:
        manager.stop_all()


@pytest.fixture
def unix_dir() -> Iterator[Path]:
    """A fresh short directory under /tmp for UNIX socket paths (tmp_path may exceed AF_UNIX's 107 bytes)."""
    path = short_unix_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
