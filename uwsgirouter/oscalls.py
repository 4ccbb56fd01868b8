"""The operating-system calls the master makes, behind one small object.

The master's logic (reaping, respawn back-off, reload order, stop escalation) calls only these, so
tests drive it with a recording fake and no real process is forked.
"""

from __future__ import annotations

import os
import signal
import time

#: Signals a new worker must not take for its master's: held (blocked) from just before the fork until the
#: worker has installed its own handlers (``release_held_signals``). Without this, a stop or retire signal
#: that reaches the child between the fork and its own set-up ran the master's inherited handler there and was
#: lost: the master then waited out the whole reload mercy for a worker that never heard it.
HELD_UNTIL_HANDLED = frozenset(
    {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTSTP}
)


def release_held_signals() -> None:
    """In a new worker, once its handlers are installed: deliver what arrived since the fork."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_UNTIL_HANDLED)


class OsCalls:
    """The real thing."""

    def fork(self) -> int:
        """Fork with ``HELD_UNTIL_HANDLED`` blocked in the child (the parent's mask is restored at once)."""
        before = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_UNTIL_HANDLED)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)
        return pid

    def kill(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def waitpid(self) -> tuple[int, int]:
        """One exited child as ``(pid, status)``, or ``(0, 0)`` when none is waiting."""
        try:
            return os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0, 0

    def monotonic(self) -> float:
        return time.monotonic()

    def getpid(self) -> int:
        return os.getpid()

    def exit(self, status: int) -> None:
        """Leave a forked child at once: no atexit handlers, no buffers of the master flushed twice."""
        os._exit(status)


def describe_status(status: int) -> str:
    """'exit status 3' or 'signal SIGKILL', for one log line."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"signal {name}" + (" (perhaps out of memory?)" if signum == signal.SIGKILL else "")
    return f"exit status {os.WEXITSTATUS(status)}"


def exit_code(status: int) -> int | None:
    """The exit code, or None when the process was killed by a signal."""
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
