from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ci_policy import pytest_runtest_makereport
from tests.support import ProcessManager, short_unix_dir

__all__ = ["pytest_runtest_makereport"]  # the CI policy hook, registered by being here


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
