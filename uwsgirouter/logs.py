"""Logging in uWSGI's spirit: one line per event, naming the process it comes from.

With a log file (``--logto``, ``--logto2``, ``--daemonize``) the file is every process's descriptors 1
and 2, as in uWSGI, so the app's prints and any traceback land there too. Master, router workers and app
workers each hold it open; the file is followed by name: before each line a process checks that the
name still leads to the file it writes to, and opens the name again when it does not (the master rotated
it for ``--log-maxsize``, or logrotate or an operator moved it). Nobody has to tell the workers, and a line
written just as the file is renamed lands in the old file, never nowhere.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from uwsgirouter.errors import ConfigError

if TYPE_CHECKING:
    from uwsgirouter.config import Config

LOG_FORMAT = "%(asctime)s [%(label)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: ``--logdate`` without a format: uWSGI's ctime() date, then " - " before the line
UWSGI_DATE_FORMAT = "%a %b %e %H:%M:%S %Y"
LOGDATE_FORMAT = "%(asctime)s - [%(label)s] %(message)s"
#: uWSGI creates its log files rw-r-----
FILE_MODE = 0o640

log = logging.getLogger("uwsgirouter.logs")
_NOT_FAILED = object()

_label = "master"


class _LabelFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.label = _label
        return True


def set_process_label(label: str) -> None:
    """Name this process in every later line ('master', 'fastrouter 1', 'worker 2')."""
    global _label
    _label = label


class LogFile:
    """The log file, opened onto descriptors 1 and 2 (``targets``) and followed by name."""

    def __init__(self, path: str, targets: tuple[int, ...] = (1, 2)) -> None:
        # absolute: the name must lead to the same place after --chdir
        self.path = os.path.abspath(path)
        self.targets = targets
        #: (st_dev, st_ino) of the file descriptors 1 and 2 lead to
        self.identity: tuple[int, int] | None = None
        #: what the name led to when opening it failed (None: nothing there), so that we warn once
        self.failed: object = _NOT_FAILED

    def open(self) -> None:
        """Open (or create) the file by name and make it descriptors 1 and 2; ``OSError`` if it cannot be."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            for target in self.targets:
                os.dup2(fd, target)
            info = os.fstat(fd)
        finally:
            os.close(fd)
        self.identity = (info.st_dev, info.st_ino)
        self.failed = _NOT_FAILED

    def follow(self) -> None:
        """Open the name again if it no longer leads to the file we write to (renamed, removed)."""
        try:
            info = os.stat(self.path)
            current: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except OSError:
            current = None
        if current is not None and current in (self.identity, self.failed):
            return  # the same file, or one we could not open: tried again once the name leads elsewhere
        try:
            self.open()
        except OSError as exc:
            # Go on writing to the file we have (its lines are not lost); say so once, in that file.
            if current != self.failed:
                message = f"cannot open the log file {self.path} again ({exc.strerror}); writing to the old one\n"
                os.write(self.targets[-1], message.encode())
            self.failed = current

    def size(self) -> int:
        """Bytes in the file the name leads to now (0 when it is missing)."""
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def rotate(self, backup: str | None) -> str:
        """uWSGI's rotation: rename the file to ``backup`` (NAME.<unix time> without one), open a new one.
        The other processes follow by name on their next line. ``OSError`` if the rename fails."""
        target = backup or f"{self.path}.{int(time.time())}"
        log.info("logsize: %d, triggering rotation to %s...", self.size(), target)
        os.rename(self.path, target)
        self.open()
        return target


_log_file: LogFile | None = None


class _FollowingHandler(logging.StreamHandler[TextIO]):
    """Writes to stderr; with a log file, follows it by name first."""

    def emit(self, record: logging.LogRecord) -> None:
        if _log_file is not None:
            _log_file.follow()
        super().emit(record)


def setup_logging(logto: str | None = None, date_format: str | None = None) -> None:
    """Log to stderr, or to the file ``logto`` (which becomes descriptors 1 and 2); replaces any handler set
    before (idempotent). ``date_format``: ``--logdate``'s strftime format, written with " - " after it as
    uWSGI does. ``OSError`` if the file cannot be opened."""
    global _log_file
    stream: TextIO = sys.stderr
    if logto:
        log_file = LogFile(logto)
        log_file.open()
        _log_file = log_file
        # the descriptor itself, whatever sys.stderr was replaced with (pytest's capture, a daemon's wrapper)
        stream = open(  # noqa: SIM115 - lives as long as the handler; the descriptor is not its to close
            log_file.targets[-1], "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
        )
    handler = _FollowingHandler(stream)
    if date_format:
        handler.setFormatter(logging.Formatter(LOGDATE_FORMAT, date_format))
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    handler.addFilter(_LabelFilter())
    root = logging.getLogger("uwsgirouter")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def start_logging(config: Config) -> None:
    """The log at start, before privileges are dropped: ``--daemonize``'s file (which wins over ``--logto``, as
    in uWSGI), else ``--logto``'s, else stderr; ``--logto2`` takes over later (see ``switch_log_file``).
    ``--logfile-chown`` gives the file to ``--uid``/``--gid`` when started as root (uWSGI does nothing
    otherwise). ``ConfigError`` when the file cannot be opened or given away."""
    option, path = ("daemonize", config.daemonize) if config.daemonize else ("logto", config.logto)
    try:
        setup_logging(path, config.logdate)
    except OSError as exc:
        raise ConfigError(f"--{option} {path}: {exc.strerror}") from None
    if path and config.logfile_chown and os.geteuid() == 0 and (config.uid or config.gid):
        uid = _numeric(config.uid, lambda name: pwd.getpwnam(name).pw_uid)
        gid = _numeric(config.gid, lambda name: grp.getgrnam(name).gr_gid)
        try:
            os.fchown(2, uid, gid)
        except OSError as exc:
            raise ConfigError(f"--logfile-chown {path}: {exc.strerror}") from None


def _numeric(value: str | None, by_name: Callable[[str], int]) -> int:
    """A user or group as a number; -1 (left as it is) when not given."""
    if value is None:
        return -1
    return int(value) if value.isdigit() else by_name(value)


def switch_log_file(option: str, path: str, date_format: str | None) -> None:
    """Log to ``path`` from now on (``--logto2``, opened after privileges are dropped, as the new user).
    ``ConfigError`` naming ``option`` if it cannot be opened."""
    try:
        setup_logging(path, date_format)
    except OSError as exc:
        raise ConfigError(f"--{option} {path}: {exc.strerror}") from None


class RequestLog:
    """Which request lines an app worker writes (uWSGI's rules): every one, unless ``--disable-logging``;
    then only those ``--log-4xx``, ``--log-5xx`` or ``--log-slow`` ask for."""

    def __init__(self, config: Config) -> None:
        self.every = not config.disable_logging
        self.status_4xx = config.log_4xx
        self.status_5xx = config.log_5xx
        self.slow_s = config.log_slow / 1000 if config.log_slow else 0.0

    def wants(self, status: int, seconds: float) -> bool:
        """Whether the request that ended with ``status`` after ``seconds`` gets its line."""
        return (
            self.every
            or (self.status_4xx and 400 <= status <= 499)
            or (self.status_5xx and 500 <= status <= 599)
            or (0 < self.slow_s <= seconds)
        )


def log_file() -> LogFile | None:
    """The log file this process writes to, if any."""
    return _log_file


def reopen_logs(logto: str | None = None, daemonize_log: str | None = None) -> None:
    """Open the log file again by name (SIGHUP, touch-logreopen), so that after ``mv router.log router.log.1``
    the process writes a new ``router.log``. The file is the one ``setup_logging`` opened (``--logto2``, else
    ``--daemonize``, else ``--logto``); the arguments are not needed. ``OSError`` if it cannot be opened."""
    if _log_file is not None:
        _log_file.open()


def rotate_log(backup: str | None = None) -> str | None:
    """Rotate the log file now (see ``LogFile.rotate``); None when logging to stderr."""
    return _log_file.rotate(backup) if _log_file is not None else None
