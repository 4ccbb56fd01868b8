"""Under CI a skip for a missing tool fails the run; elsewhere it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SUITE = """
import pytest

def test_needs_nginx():
    pytest.skip("nginx is not installed")

def test_needs_root():
    pytest.skip("needs root to name another user")
"""


def run_suite(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text("from tests.ci_policy import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_tools.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_under_ci_a_missing_tool_fails_the_run_and_other_skips_stay(tmp_path: Path) -> None:
    done = run_suite(tmp_path, ci=True)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 skipped" in done.stdout
    assert "tool that CI installs is missing" in done.stdout


def test_without_ci_a_missing_tool_is_a_skip(tmp_path: Path) -> None:
    done = run_suite(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout
    assert "2 skipped" in done.stdout
