"""The log files the master opens or renames are checked before anything starts (``--dry-run`` too): one line
naming the option, exit status 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.config.test_preflight import run

SHM = Path("/dev/shm")


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "start"])
def test_a_logto2_in_a_missing_directory(tmp_path: Path, dry_run: bool) -> None:
    result = run("--logto2", "/nonexistent/x.log", *(["--dry-run"] if dry_run else []), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        "uwsgirouter: --logto2 /nonexistent/x.log: no such directory /nonexistent\n",
    )


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "start"])
def test_a_backup_name_in_a_missing_directory(tmp_path: Path, dry_run: bool) -> None:
    args = ["--logto", "r.log", "--log-maxsize", "1000", "--log-backupname", "/nonexistent/r.old"]
    result = run(*args, *(["--dry-run"] if dry_run else []), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "uwsgirouter: --log-backupname /nonexistent/r.old: no such directory /nonexistent\n"
    assert not (tmp_path / "r.log").exists()  # nothing started


@pytest.mark.skipif(
    not SHM.is_dir() or os.stat(SHM).st_dev == os.stat("/tmp").st_dev, reason="needs /dev/shm on another file system"
)
def test_a_backup_name_on_another_file_system(tmp_path: Path) -> None:
    args = ["--logto", "r.log", "--log-maxsize", "1000", "--log-backupname", str(SHM / "r.old"), "--dry-run"]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr
        == f"uwsgirouter: --log-backupname {SHM}/r.old: not on the file system of r.log (it is renamed there)\n"
    )


def test_a_backup_name_is_checked_only_with_a_size(tmp_path: Path) -> None:
    """uWSGI renames to --log-backupname only when --log-maxsize rotates."""
    assert run("--logto", "r.log", "--log-backupname", "/nonexistent/r.old", "--dry-run", cwd=tmp_path).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to name another user")
def test_rotation_in_a_directory_the_new_user_cannot_write_is_refused(tmp_path: Path) -> None:
    """The master renames and creates the log file after dropping privileges."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    log = private / "r.log"
    result = run("--uid", "nobody", "--logto", str(log), "--log-maxsize", "1000", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"uwsgirouter: --log-maxsize 1000: the directory {private} of {log} is not writable\n"
    assert run("--uid", "nobody", "--logto", str(log), "--dry-run", cwd=tmp_path).returncode == 0  # no rotation
    private.chmod(0o777)
    assert (
        run("--uid", "nobody", "--logto", str(log), "--log-maxsize", "1000", "--dry-run", cwd=tmp_path).returncode == 0
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to name another user")
def test_a_logto2_the_new_user_cannot_create_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    result = run("--uid", "nobody", "--logto2", str(private / "x.log"), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"uwsgirouter: --logto2 {private}/x.log: the directory {private} is not writable\n"
    assert run("--logto2", str(private / "x.log"), "--dry-run", cwd=tmp_path).returncode == 0  # root may
