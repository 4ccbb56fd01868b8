from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ProcessManager


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessManager]:
    """Start real processes for a test; all of them are stopped (group-killed) at teardown."""
    manager = ProcessManager(tmp_path)
    try:
        yield manager
    finally:
        manager.stop_all()
