"""The master fifo (``--master-fifo PATH``): ``echo r > PATH`` controls the master with one character.

As in uWSGI 2.0: one fifo is active at a time, the first ``--master-fifo`` at start. ``0``-``9`` choose
another one of the list; the switch happens when the current writer closes (the master then listens on
the chosen path). Every character of a write is a command; whitespace (``echo``'s newline) is skipped.
At the writer's end of file the fifo is opened again, so the next ``echo`` works too. The table of
commands, with how each maps onto uwsgirouter, is ``COMMANDS`` (and docs/signals.md).

The fifo is created (mode 0600, as uWSGI) after the master dropped its privileges; an existing fifo at
the path is reused (uWSGI deletes and recreates it: a writer already blocked on it would hang forever).
With ``--vacuum`` the fifos this master created are removed at exit (uWSGI leaves them). The differences
are docs/differences.md, "The master fifo".
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from uwsgirouter.errors import ConfigError
from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.services.base import MasterControl, Service

log = logging.getLogger("uwsgirouter.master")

#: Read at most this much per readable event (a command is one byte; a burst is handled in one go).
READ_CHUNK = 4096
WHITESPACE = frozenset(b" \t\r\n")


@dataclass(frozen=True, slots=True)
class Command:
    """One fifo character: what uWSGI does with it, and what uwsgirouter does (None: logged, ignored)."""

    uwsgi: str
    action: Callable[[MasterControl], None] | None = None
    note: str = ""


COMMANDS: dict[str, Command] = {
    "q": Command("graceful shutdown", lambda c: c.request_stop(graceful=True)),
    "Q": Command("brutal shutdown", lambda c: c.request_stop(graceful=False)),
    "r": Command("graceful reload", lambda c: c.request_reload()),
    "R": Command("brutal reload", lambda c: c.request_reload(brutal=True)),
    "w": Command("graceful reload of the workers", lambda c: c.request_reload_workers(brutal=False)),
    "W": Command("brutal reload of the workers", lambda c: c.request_reload_workers(brutal=True)),
    "c": Command("chain reload of the workers", lambda c: c.request_reload_workers(brutal=False)),
    "l": Command("reopen the log", lambda c: c.request_log_reopen()),
    "L": Command("rotate the log", lambda c: c.request_log_rotate()),
    "s": Command("print statistics", lambda c: c.request_stats_log()),
    "S": Command("block/unblock subscriptions", lambda c: c.request_block_subscriptions(None)),
    "P": Command("update the pidfiles", lambda c: c.request_update_pidfiles()),
    "p": Command("pause/resume the workers", lambda c: c.request_pause(None)),
    "C": Command("go cheap", lambda c: c.request_cheap(True)),
    "E": Command("make the Emperor rescan its vassals", lambda c: c.request_emperor_rescan()),
    "f": Command("refork the master", note="uwsgirouter does not refork its master"),
    "+": Command("one more cheaper worker", note="uwsgirouter has no cheaper subsystem"),
    "-": Command("one less cheaper worker", note="uwsgirouter has no cheaper subsystem"),
    "B": Command("ask the Emperor for reinforcements", note="uwsgirouter's Emperor has no Broodlord mode"),
}


def create_fifo(path: str) -> int:
    """Create ``path`` as a fifo unless it is one already; return its inode. ``OSError`` if impossible,
    ``ConfigError`` when something else is there (never deleted)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        os.mkfifo(path, 0o600)
        return os.stat(path).st_ino
    if not stat.S_ISFIFO(info.st_mode):
        raise ConfigError(f"--master-fifo {path}: exists and is not a fifo")
    return info.st_ino


class MasterFifo(Service):
    """Reads commands from the active fifo and asks the master for them."""

    name = "the master fifo"

    def __init__(self, paths: Sequence[str], control: MasterControl, vacuum: bool = False) -> None:
        if not paths:
            raise ValueError("no fifo path")
        self.paths = list(paths)
        self.control = control
        self.vacuum = vacuum
        self.slot = 0
        self.active = self.paths[0]
        self.fd = -1
        #: inodes of the fifos this master made, by path (removed at exit under --vacuum)
        self.created: dict[str, int] = {}
        #: unknown characters (``cat some-file > fifo``) log one line a second at most
        self.notes = LogLimiter(log, per_second=1)
        self._open(self.active)
        log.info("master fifo %s ready", self.active)

    def _open(self, path: str) -> None:
        existed = os.path.exists(path)
        try:
            inode = create_fifo(path)
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"--master-fifo {path}: {exc.strerror or exc}") from None
        if not existed:
            self.created[path] = inode
        self.active = path

    def filenos(self) -> Sequence[int]:
        return (self.fd,) if self.fd >= 0 else ()

    def on_readable(self, fd: int, now: float) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return
            raise
        if not data:
            self._writer_closed()
            return
        for byte in data:
            self.dispatch(chr(byte))

    def _writer_closed(self) -> None:
        """The writer is gone: open again (the chosen fifo, after a ``0``-``9``), so the next write is seen.
        A fresh descriptor is not readable until a new writer comes and goes (no busy loop)."""
        os.close(self.fd)
        self.fd = -1
        wanted = self.paths[self.slot]
        try:
            self._open(wanted)
        except ConfigError as exc:
            log.error("%s; the master fifo stays on %s", exc, self.active)
            self.slot = self.paths.index(self.active)
            self._open(self.active)

    def next_due(self) -> float | None:
        """Only while unknown characters were left out of the log: their count is written a second later."""
        return self.notes.window_start + 1.0 if self.notes.suppressed else None

    def tick(self, now: float) -> None:
        self.notes.flush(now)

    def dispatch(self, char: str) -> None:
        """Act on one command character."""
        if ord(char) in WHITESPACE:
            return
        if char.isdigit():
            self._choose(int(char))
            return
        command = COMMANDS.get(char)
        if command is None:
            self.notes.warning("master fifo: unknown command %r ignored", char)
        elif command.action is None:
            log.warning("master fifo: %r (uWSGI: %s) is not supported: %s; ignored", char, command.uwsgi, command.note)
        else:
            log.info("master fifo: %r (%s)", char, command.uwsgi)
            command.action(self.control)

    def _choose(self, index: int) -> None:
        if index >= len(self.paths):
            log.warning(
                "master fifo: there is no fifo %d (%d given with --master-fifo); staying on %s",
                index,
                len(self.paths),
                self.paths[self.slot],
            )
            return
        self.slot = index
        log.info("active master fifo is now %s (once the current writer closes)", self.paths[index])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.vacuum:
            return
        for path, inode in self.created.items():
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
                    log.info("VACUUM: master fifo %s removed", path)
            except OSError:
                pass


def build_fifo(paths: Sequence[str], control: MasterControl, vacuum: bool) -> MasterFifo | None:
    return MasterFifo(paths, control, vacuum) if paths else None
