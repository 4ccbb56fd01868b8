"""``check_environment`` in process: the exact line for each bad path, user, group, fifo or rotation setting,
and whether the user the instance becomes (--uid/--gid) may write where it must. test_preflight.py checks the
same through real processes (exit status 2, --dry-run); these reach every branch, which tools/mutation needs.

Permissions for another user are decided from the mode bits (owner, group, others), so the tests that name
``nobody`` need root to chown their directories.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from uwsgirouter.config import load_config
from uwsgirouter.config.preflight import check_environment, socket_owner
from uwsgirouter.errors import ConfigError

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")


def problem(*argv: str) -> str | None:
    """The line check_environment refuses the configuration with, or None."""
    try:
        check_environment(load_config(["--fastrouter", "127.0.0.1:0", *argv], {}))
    except ConfigError as exc:
        return str(exc)
    return None


def directory(path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    path.mkdir()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def test_missing_directories_and_files(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    assert problem("--chdir", str(gone)) == f"--chdir {gone}: no such directory"
    for option in ("daemonize", "logto", "pidfile"):
        assert problem(f"--{option}", f"{gone}/x") == f"--{option} {gone}/x: no such directory {gone}"
    assert problem("--wsgi-file", f"{gone}.py") == f"--wsgi-file {gone}.py: no such file"
    assert problem("--virtualenv", str(gone)) == f"--virtualenv {gone}: no such directory"
    assert problem("--logto", str(tmp_path)) == f"--logto {tmp_path}: is a directory"
    assert problem("--logto", "/etc/passwd/x.log") == "--logto /etc/passwd/x.log: Not a directory"
    (tmp_path / "app.py").write_text("application = None\n")
    (tmp_path / "venv").mkdir()
    assert problem("--wsgi-file", str(tmp_path / "app.py"), "--virtualenv", str(tmp_path / "venv")) is None


def test_paths_relative_to_chdir_or_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app.py").write_text("application = None\n")
    (tmp_path / "venv").mkdir()
    base = ("--chdir", str(tmp_path))
    assert problem(*base, "--wsgi-file", "app.py", "--virtualenv", "venv", "--logto", "r.log") is None
    assert (
        problem(*base, "--pidfile2", "no/x.pid") == f"--pidfile2 {tmp_path}/no/x.pid: no such directory {tmp_path}/no"
    )
    assert problem(*base, "--logto2", "no/x.log") == f"--logto2 {tmp_path}/no/x.log: no such directory {tmp_path}/no"
    monkeypatch.chdir(tmp_path)
    assert problem("--logto", "r.log", "--pidfile", "r.pid") is None  # the directory is "."
    assert problem("--wsgi-file", "app.py") is None


def test_users_and_groups_by_name_or_number() -> None:
    assert problem("--uid", "12345", "--gid", "54321", "--fastrouter-uid", "nobody", "--fastrouter-gid", "7") is None
    for option, what in (("uid", "user"), ("gid", "group"), ("fastrouter-uid", "user"), ("fastrouter-gid", "group")):
        assert problem(f"--{option}", "no-such-name") == f"--{option} no-such-name: no such {what}"


def test_socket_owner() -> None:
    assert socket_owner(None) is None
    assert socket_owner("nobody:nogroup") == (NOBODY, NOBODY)
    assert socket_owner("nobody") == (NOBODY, -1)
    assert socket_owner("nobody:") == (NOBODY, -1)
    assert socket_owner(":nogroup") == (-1, NOBODY)
    assert socket_owner("12:34") == (12, 34)
    assert problem("--chown-socket", "no-such-name") == "--chown-socket no-such-name: no such user"
    assert problem("--chown-socket", "nobody:no-such-name") == "--chown-socket no-such-name: no such group"


@as_root
def test_what_the_new_user_may_write_follows_the_mode_bits(tmp_path: Path) -> None:
    def pidfile2(path: Path, *extra: str) -> str | None:
        return problem("--uid", "nobody", *extra, "--pidfile2", str(path / "x.pid"))

    def refused(path: Path) -> str:
        return f"--pidfile2 {path}/x.pid: the directory {path} is not writable"

    others = directory(tmp_path / "others", 0o777)
    assert pidfile2(others) is None
    closed = directory(tmp_path / "closed", 0o775)
    assert pidfile2(closed) == refused(closed)
    owned = directory(tmp_path / "owned", 0o300, uid=NOBODY)
    assert pidfile2(owned) is None
    owned_no_search = directory(tmp_path / "owned-no-search", 0o677, uid=NOBODY)
    assert pidfile2(owned_no_search) == refused(owned_no_search)
    owned_read_only = directory(tmp_path / "owned-read-only", 0o577, uid=NOBODY)
    assert pidfile2(owned_read_only) == refused(owned_read_only)
    group = directory(tmp_path / "group", 0o030, gid=NOBODY)
    assert pidfile2(group, "--gid", "nogroup") is None
    assert pidfile2(group) == refused(group), "without --gid the group bits do not apply"
    group_no_search = directory(tmp_path / "group-no-search", 0o067, gid=NOBODY)
    assert pidfile2(group_no_search, "--gid", "nogroup") == refused(group_no_search)
    world_no_search = directory(tmp_path / "world-no-search", 0o776)
    assert pidfile2(world_no_search) == refused(world_no_search)
    assert problem("--uid", "0", "--pidfile2", str(closed / "x.pid")) is None  # root may write anywhere


@as_root
def test_an_existing_file_the_new_user_may_or_may_not_write(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    log.write_text("")
    os.chown(log, NOBODY, 0)
    log.chmod(0o200)
    assert problem("--uid", "nobody", "--logto2", str(log)) is None
    log.chmod(0o400)
    assert problem("--uid", "nobody", "--logto2", str(log)) == f"--logto2 {log}: not writable"
    log.chmod(0o666)
    assert problem("--uid", "nobody", "--logto2", str(tmp_path)) == f"--logto2 {tmp_path}: is a directory"


@as_root
def test_master_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert problem("--master-fifo", str(fifo)) is None
    assert problem("--master-fifo", str(tmp_path / "new")) is None
    plain = tmp_path / "plain"
    plain.write_text("")
    assert problem("--master-fifo", str(plain)) == f"--master-fifo {plain}: exists and is not a fifo"
    gone = tmp_path / "gone"
    assert problem("--master-fifo", f"{gone}/f") == f"--master-fifo {gone}/f: no such directory {gone}"
    assert problem("--master-fifo", f"{plain}/f") == f"--master-fifo {plain}/f: Not a directory"
    closed = directory(tmp_path / "closed", 0o755)
    message = f"--master-fifo {closed}/f: the directory {closed} is not writable"
    assert problem("--uid", "nobody", "--master-fifo", str(closed / "f")) == message
    assert problem("--chdir", str(tmp_path), "--master-fifo", "fifo") is None


@as_root
def test_log_rotation_needs_a_writable_directory_and_a_backup_on_the_same_file_system(tmp_path: Path) -> None:
    closed = directory(tmp_path / "closed", 0o755)
    (closed / "r.log").write_text("")
    os.chown(closed / "r.log", NOBODY, 0)
    rotate = ("--uid", "nobody", "--log-maxsize", "100")
    message = f"--log-maxsize 100: the directory {closed} of {closed}/r.log is not writable"
    assert problem(*rotate, "--logto2", str(closed / "r.log")) == message
    assert problem("--log-maxsize", "100") is None  # nothing to rotate
    assert problem("--uid", "nobody", "--logto2", str(closed / "r.log")) is None  # no rotation: the file will do
    logs = directory(tmp_path / "logs", 0o777)
    ok = (*rotate, "--logto2", str(logs / "r.log"))
    assert problem(*ok) is None
    gone = tmp_path / "gone"
    assert problem(*ok, "--log-backupname", f"{gone}/old") == f"--log-backupname {gone}/old: no such directory {gone}"
    assert problem(*ok, "--log-backupname", f"{closed}/old") == (
        f"--log-backupname {closed}/old: the directory {closed} is not writable"
    )
    assert problem(*ok, "--log-backupname", str(logs / "old")) is None
    if os.stat("/dev/shm").st_dev != os.stat(logs).st_dev and os.access("/dev/shm", os.W_OK):
        assert problem("--log-maxsize", "100", "--logto", str(logs / "r.log"), "--log-backupname", "/dev/shm/o") == (
            f"--log-backupname /dev/shm/o: not on the file system of {logs}/r.log (it is renamed there)"
        )
    # the file rotated is the first of --logto2, --daemonize, --logto
    closed_log = str(closed / "r.log")
    assert problem(*rotate, "--logto2", str(logs / "r.log"), "--daemonize", closed_log) is None
    assert problem(*rotate, "--daemonize", str(logs / "d.log"), "--logto", closed_log) is None
    assert problem(*rotate, "--logto", closed_log) == message
    assert problem(*rotate, "--daemonize", closed_log) == message


def test_log_rotation_of_a_log_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert problem("--log-maxsize", "100", "--logto", "r.log", "--log-backupname", "old.log") is None


def test_every_unix_socket_needs_an_existing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "gone"
    options = ("shared-socket", "undeferred-shared-socket", "socket", "fastrouter", "fastrouter-stats", "stats")
    for option in (*options, "fastrouter-subscription-server"):
        # a TCP address before it does not end the check
        tcp = () if option in ("fastrouter-stats", "stats") else (f"--{option}", "127.0.0.1:0")
        assert problem(*tcp, f"--{option}", f"{gone}/x.sock") == f"--{option} {gone}/x.sock: no such directory {gone}"
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")  # a relative path is under --chdir, not the working directory
    base = ("--chdir", str(tmp_path))
    assert problem(*base, "--socket", "run/x.sock", "--stats", "run/s.sock") is None
    assert problem(*base, "--socket", "no/x.sock") == f"--socket no/x.sock: no such directory {tmp_path}/no"


def test_a_chown_hook_naming_an_unknown_user_is_refused_in_every_phase() -> None:
    for phase in ("as-root", "as-user", "pre-app", "master-start", "as-gateway"):
        assert problem(f"--hook-{phase}", "chown:/x no-such-user root") == (
            f"--hook-{phase} \"chown:/x no-such-user root\": no user 'no-such-user' on this host"
        )
    assert problem("--hook-as-root", "chown:/x root root") is None


def test_files_named_relative_to_chdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "plain").write_text("")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # has no sub/ and no plain
    base = ("--chdir", str(tmp_path))
    for option in ("daemonize", "logto", "pidfile"):
        assert problem(*base, f"--{option}", "sub/x") is None
    assert problem(*base, "--master-fifo", "plain") == f"--master-fifo {tmp_path}/plain: exists and is not a fifo"
    rotate = (*base, "--log-maxsize", "100", "--logto", "sub/r.log")
    assert problem(*rotate) is None
    assert problem(*rotate, "--log-backupname", "sub/old") is None
    assert (
        problem(*rotate, "--log-backupname", "gone/old")
        == f"--log-backupname gone/old: no such directory {tmp_path}/gone"
    )


read_only = pytest.mark.skipif(
    not os.path.isdir("/proc/sys") or os.access("/proc/sys", os.W_OK), reason="needs a read-only directory"
)


@read_only
def test_a_directory_this_process_cannot_write_is_refused() -> None:
    assert (
        problem("--pidfile", "/proc/sys/x.pid") == "--pidfile /proc/sys/x.pid: the directory /proc/sys is not writable"
    )


@as_root
def test_the_group_bits_apply_with_the_gid_the_instance_becomes(tmp_path: Path) -> None:
    user = ("--uid", "nobody", "--gid", "nogroup")
    group = directory(tmp_path / "group", 0o030, gid=NOBODY)
    assert problem(*user, "--master-fifo", str(group / "f")) is None
    assert problem(*user, "--logto2", str(group / "x.log")) is None
    assert problem("--uid", "nobody", "--gid", "12345", "--pidfile2", str(group / "x.pid")) == (
        f"--pidfile2 {group}/x.pid: the directory {group} is not writable"
    ), "the group bits are for the directory's own group"
    log = group / "r.log"
    log.write_text("")
    os.chown(log, 0, NOBODY)
    log.chmod(0o020)
    assert problem(*user, "--logto2", str(log)) is None
    backups = directory(tmp_path / "backups", 0o030, gid=NOBODY)
    assert problem(*user, "--log-maxsize", "100", "--logto2", str(log), "--log-backupname", f"{backups}/o") is None


@as_root
def test_the_others_bits_for_a_file_and_for_a_directory(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    log.write_text("")
    log.chmod(0o662)  # owned by root: others may write, not execute (a file needs no search bit)
    assert problem("--uid", "nobody", "--logto2", str(log)) is None


@as_root
def test_log_rotation_needs_a_searchable_directory(tmp_path: Path) -> None:
    unsearchable = directory(tmp_path / "unsearchable", 0o677, uid=NOBODY)
    log = unsearchable / "r.log"
    log.write_text("")
    os.chown(log, NOBODY, 0)
    rotate = ("--uid", "nobody", "--log-maxsize", "100", "--logto2", str(log))
    assert problem(*rotate) == f"--log-maxsize 100: the directory {unsearchable} of {log} is not writable"
    logs = directory(tmp_path / "logs", 0o700, uid=NOBODY)
    shutil.move(log, logs / "r.log")
    ok = ("--uid", "nobody", "--log-maxsize", "100", "--logto2", str(logs / "r.log"))
    assert problem(*ok) is None
    assert problem(*ok, "--log-backupname", f"{unsearchable}/old") == (
        f"--log-backupname {unsearchable}/old: the directory {unsearchable} is not writable"
    )


def test_root_may_write_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = tmp_path / "closed"
    closed.mkdir()
    closed.chmod(0o555)
    # an instance started by another user that is to become root (--uid 0): the mode bits do not apply
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert problem("--uid", "0", "--pidfile2", str(closed / "x.pid")) is None
