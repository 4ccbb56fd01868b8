"""Bad paths, users, groups and app files: one line naming the option, exit status 2, before anything starts
(``--dry-run`` included), never a traceback and never a daemon that reports success and then dies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROUTER = [sys.executable, "-m", "uwsgirouter", "--fastrouter", "127.0.0.1:0", "--fastrouter-to", "127.0.0.1:9"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, *args], capture_output=True, text=True, timeout=30, cwd=cwd)


CASES = [
    (["--daemonize", "/nonexistent/d.log"], "--daemonize /nonexistent/d.log: no such directory /nonexistent"),
    (["--pidfile", "/nonexistent/x.pid"], "--pidfile /nonexistent/x.pid: no such directory /nonexistent"),
    (["--logto", "/nonexistent/x.log"], "--logto /nonexistent/x.log: no such directory /nonexistent"),
    (["--logto", "/"], "--logto /: is a directory"),
    (["--uid", "no-such-user-here"], "--uid no-such-user-here: no such user"),
    (["--gid", "no-such-group-here"], "--gid no-such-group-here: no such group"),
    (["--fastrouter-uid", "no-such-user-here"], "--fastrouter-uid no-such-user-here: no such user"),
    (["--socket", "127.0.0.1:0", "--wsgi-file", "nope.py"], "--wsgi-file nope.py: no such file"),
    (["--chdir", "/nonexistent"], "--chdir /nonexistent: no such directory"),
    (["--socket", "/nonexistent/d/app.sock"], "--socket /nonexistent/d/app.sock: no such directory /nonexistent/d"),
    (["--shared-socket", "/nonexistent/s.sock"], "--shared-socket /nonexistent/s.sock: no such directory /nonexistent"),
    (["--stats", "/nonexistent/stats.sock"], "--stats /nonexistent/stats.sock: no such directory /nonexistent"),
    (
        ["--fastrouter-stats", "/nonexistent/fs.sock"],
        "--fastrouter-stats /nonexistent/fs.sock: no such directory /nonexistent",
    ),
    (
        ["--fastrouter-subscription-server", "/nonexistent/sub.sock"],
        "--fastrouter-subscription-server /nonexistent/sub.sock: no such directory /nonexistent",
    ),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "start"])
@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(case[0][-2:]) for case in CASES])
def test_one_line_and_exit_2_before_anything_starts(
    args: list[str], message: str, dry_run: bool, tmp_path: Path
) -> None:
    result = run(*args, *(["--dry-run"] if dry_run else []), cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr == f"uwsgirouter: {message}\n"
    assert result.stdout == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to name another user")
def test_a_pidfile2_the_new_user_cannot_write_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    result = run("--uid", "nobody", "--pidfile2", str(private / "x.pid"), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"uwsgirouter: --pidfile2 {private}/x.pid: the directory {private} is not writable\n"
    private.chmod(0o777)
    assert run("--uid", "nobody", "--pidfile2", str(private / "x.pid"), "--dry-run", cwd=tmp_path).returncode == 0


def test_paths_are_taken_relative_to_chdir(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("application = None\n")
    ok = run("--chdir", str(tmp_path), "--socket", "127.0.0.1:0", "--wsgi-file", "app.py", "--dry-run", cwd=Path("/"))
    assert ok.returncode == 0, ok.stderr
    logs = tmp_path / "logs"
    bad = run("--chdir", str(tmp_path), "--logto", "logs/r.log", "--dry-run", cwd=Path("/"))
    assert bad.stderr == f"uwsgirouter: --logto {logs}/r.log: no such directory {logs}\n"


def test_a_port_in_use_is_one_line_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [*ROUTER[:3], "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", "127.0.0.1:9"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.splitlines()[-1] == (
        f"uwsgirouter: --fastrouter: unable to bind 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in result.stderr
