"""Bad values of the master-control options (--chown-socket, --master-fifo, --umask): one line naming the
option, exit status 2, before anything starts, with --dry-run too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROUTER = [sys.executable, "-m", "uwsgirouter", "--fastrouter", "127.0.0.1:0", "--fastrouter-to", "127.0.0.1:9"]

CASES = [
    (["--chown-socket", "no-such-user-here"], "--chown-socket no-such-user-here: no such user"),
    (["--chown-socket", "root:no-such-group-here"], "--chown-socket no-such-group-here: no such group"),
    (["--master-fifo", "/nonexistent/m.fifo"], "--master-fifo /nonexistent/m.fifo: no such directory /nonexistent"),
    (["--master-fifo", "/etc/passwd"], "--master-fifo /etc/passwd: exists and is not a fifo"),
    (["--umask", "9z"], "invalid value '9z' for --umask: expected an octal file mode such as 660 (not an octal mode)"),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "start"])
@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(case[0]) for case in CASES])
def test_one_line_and_exit_2(args: list[str], message: str, dry_run: bool, tmp_path: Path) -> None:
    extra = ["--dry-run"] if dry_run else []
    result = subprocess.run([*ROUTER, *args, *extra], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr == f"uwsgirouter: {message}\n"


def test_good_values_pass_the_dry_run(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "existing.fifo")
    args = [
        "--chown-socket", f"{os.geteuid()}:{os.getegid()}", "--master-fifo", str(tmp_path / "existing.fifo"),
        "--master-fifo", str(tmp_path / "new.fifo"), "--umask", "022", "--touch-reload", str(tmp_path / "nope"),
        "--thunder-lock", "--exit-on-reload", "--die-on-term", "--vacuum", "--dry-run",
    ]  # fmt: skip
    result = subprocess.run([*ROUTER, *args], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
