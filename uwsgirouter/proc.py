"""Process chores of the master and its workers: titles, pidfile, daemonizing, privileges."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import sys
import tempfile
from types import ModuleType

from uwsgirouter.errors import ConfigError, HaltServer


def _load_setproctitle() -> ModuleType | None:
    try:  # optional at import time so a broken setproctitle never stops the router
        import setproctitle
    except ImportError:  # pragma: no cover - it is a declared dependency
        return None
    setproctitle.getproctitle()  # read argv now, before anything edits the environment
    return setproctitle


_setproctitle = _load_setproctitle()


def set_title(name: str, prefix: str = "", append: str = "", fixed: str | None = None) -> None:
    """``uwsgirouter master``, ``uwsgirouter fastrouter 1``, ``uwsgirouter worker 2`` (ps, top)."""
    if _setproctitle is None:
        return
    title = fixed if fixed else f"uwsgirouter {name}"
    _setproctitle.setproctitle(f"{prefix}{title}{append}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pidfile(path: str) -> int:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a pid from {path}: {exc}") from None


def signal_pidfile(path: str, signum: int) -> None:
    """``--reload PIDFILE`` / ``--stop PIDFILE``: signal the instance whose pid the file holds."""
    pid = read_pidfile(path)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise ConfigError(f"no process with pid {pid} (from {path})") from None
    except PermissionError:
        raise ConfigError(f"not allowed to signal pid {pid} (from {path}): run this as its user or root") from None


class Pidfile:
    """The master's pid, written atomically; removed at exit only while it still holds our pid."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = 0

    def create(self, pid: int) -> None:
        try:
            old = read_pidfile(self.path)
        except ConfigError:
            old = 0
        if old and old != pid and _pid_alive(old):
            raise HaltServer(f"pidfile {self.path} names pid {old}, which is still running", 1)
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".pid-")
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{pid}\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.path)
        self.pid = pid

    def unlink(self) -> None:
        try:
            if read_pidfile(self.path) == self.pid:
                os.unlink(self.path)
        except (ConfigError, OSError):
            pass


def daemonize(logfile: str) -> None:
    """Detach from the terminal (double fork, new session) and send stdout/stderr to ``logfile``."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    log_fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def drop_privileges(uid: str | None, gid: str | None) -> None:
    """``--uid``/``--gid`` (names or numbers); group first, while we may still change it."""
    if gid:
        try:
            gid_num = int(gid) if gid.isdigit() else grp.getgrnam(gid).gr_gid
        except KeyError:
            raise HaltServer(f"unknown group {gid!r}", 1) from None
        os.setgroups([gid_num])
        os.setgid(gid_num)
    if uid:
        try:
            uid_num = int(uid) if uid.isdigit() else pwd.getpwnam(uid).pw_uid
        except KeyError:
            raise HaltServer(f"unknown user {uid!r}", 1) from None
        os.setuid(uid_num)


def reset_signals() -> None:
    """A forked child starts with default dispositions and no inherited wakeup fd."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTSTP):
        signal.signal(signum, signal.SIG_DFL)
