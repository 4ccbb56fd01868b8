"""One vassal: its process, its end of the socketpair, and what the Emperor knows of it.

The process is forked and runs the vassal binary (``execve``) in the vassal's directory, with stdin on
/dev/null, ``UWSGI_EMPEROR_FD`` naming its end of the socketpair, and ``UWSGI_VASSAL_FOO`` variables of the
Emperor's environment passed on as ``UWSGI_FOO``, as uWSGI's Emperor starts them. On Linux it also gets
uWSGI's ``PR_SET_PDEATHSIG``: a vassal whose Emperor is killed is killed with it. The fields kept are those of
uWSGI's Emperor stats (``born``, ``loyal``, ``ready``, ``accepting``, ``respawns``...), in wall-clock seconds.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from uwsgirouter.emperor import protocol
from uwsgirouter.proc import reset_signals
from uwsgirouter.sock import Listener

log = logging.getLogger("uwsgirouter.master")

PR_SET_PDEATHSIG = 1


def vassal_environ(environ: Mapping[str, str], fd: int) -> dict[str, str]:
    """The environment of a vassal, from the Emperor's: uWSGI's renaming of ``UWSGI_VASSAL_*`` and its two
    removals, and the socketpair's fd."""
    env = {key: value for key, value in environ.items() if key not in protocol.NOT_INHERITED_ENV}
    for key in [k for k in env if k.startswith(protocol.VASSAL_ENV_PREFIX)]:
        env["UWSGI_" + key[len(protocol.VASSAL_ENV_PREFIX) :]] = env.pop(key)
    env.pop(protocol.EMPEROR_FD_CONFIG_ENV, None)
    env[protocol.EMPEROR_FD_ENV] = str(fd)
    return env


@dataclass(frozen=True, slots=True)
class VassalArgs:
    """What every vassal runs with, from the Emperor's options: its binary and the options around its file."""

    binary: tuple[str, ...]
    before: tuple[str, ...] = ()  #: --inherit/--include/--set before the vassal's file
    after: tuple[str, ...] = ()  #: --inherit/--include after it

    def argv(self, name: str) -> list[str]:
        return [*self.binary, *self.before, "--ini", name, *self.after]


@dataclass(slots=True)
class Vassal:
    name: str
    cwd: str
    monitor: str  #: the --emperor value that found it
    last_mod: int  #: the file's mtime (ns) when it was last (re)loaded
    pid: int = -1
    sock: socket.socket | None = None
    born: float = field(default_factory=time.time)
    first_run: float = 0.0
    last_run: float = 0.0
    respawns: int = 0
    loyal: bool = False
    ready: bool = False
    accepting: bool = False
    last_loyal: float = 0.0
    last_ready: float = 0.0
    last_accepting: float = 0.0
    last_heartbeat: float = 0.0
    #: the Emperor told it to stop (uWSGI's status 1): its death is not respawned
    stopping: bool = False
    #: when it was told to stop or its socket closed (uWSGI's cursed_at): killed after the tolerance
    cursed_at: float = 0.0
    killed: bool = False
    #: an on-demand vassal's socket (emperor/ondemand.py), the Emperor's for the vassal's whole life; the
    #: process gets it as its stdin
    listener: Listener | None = None
    #: asked to stop (it said "stop me"): its death sends it back to waiting for a connection
    to_sleep: bool = False
    #: an on-demand vassal waiting for a connection is not woken before this (wall clock; its throttle)
    wake_after: float = 0.0

    @property
    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def spawn(self, args: VassalArgs, environ: Mapping[str, str]) -> None:
        """Start the process. ``OSError`` when the socketpair or the fork fails; a binary that cannot be run
        makes the child exit with uWSGI's exile code. An on-demand vassal's socket becomes its stdin."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            mine.setblocking(False)
            argv = args.argv(self.name)
            env = vassal_environ(environ, theirs.fileno())
            stdin = self.listener.fileno() if self.listener is not None else -1
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child, replaced by exec
                _become_vassal(argv, env, self.cwd, theirs.fileno(), stdin)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.pid, self.sock = pid, mine
        self.last_run = time.time()
        self.first_run = self.first_run or self.last_run
        self.loyal = self.ready = self.accepting = False
        self.last_heartbeat = 0.0
        self.to_sleep = False

    def send(self, byte: int) -> bool:
        """Send one command; False when the vassal's end is gone."""
        if self.sock is None:
            return False
        try:
            return self.sock.send(bytes((byte,))) == 1
        except OSError:
            return False

    def receive(self) -> bytes | None:
        """What the vassal sent (b"" when nothing is waiting), or None at the end of the connection."""
        assert self.sock is not None
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return None
        return data or None

    def kill(self) -> None:
        if self.pid > 0 and not self.killed:
            self.killed = True
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _become_vassal(  # pragma: no cover
    argv: Sequence[str], env: Mapping[str, str], cwd: str, fd: int, stdin: int
) -> None:
    """In the forked child: the master's signal handling undone, stdin on /dev/null (or on the on-demand
    socket ``stdin``), then exec; never returns."""
    status = protocol.EXILE_CODE
    try:
        reset_signals()
        for inherited_ignore in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(inherited_ignore, signal.SIG_DFL)
        _die_with_parent()
        os.set_inheritable(fd, True)
        if stdin >= 0:
            os.dup2(stdin, 0)
        else:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        os.chdir(cwd)
        os.execvpe(argv[0], list(argv), dict(env))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOENT, errno.EACCES):
            reason += "; is the binary path right (--binary-path)?"
        sys.stderr.write(f"[emperor] cannot run {argv[0]} in {cwd}: {reason}\n")
    except BaseException as exc:
        sys.stderr.write(f"[emperor] cannot start a vassal: {exc!r}\n")
    finally:
        sys.stderr.flush()
        os._exit(status)


def _die_with_parent() -> None:  # pragma: no cover - in the forked child
    """uWSGI's PR_SET_PDEATHSIG: the kernel kills the vassal when the Emperor dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
