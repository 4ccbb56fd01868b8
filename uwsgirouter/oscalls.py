"""The operating-system calls the master makes, behind one small object.

The master's logic (reaping, respawn back-off, reload order, stop escalation) calls only these, so
tests drive it with a recording fake and no real process is forked.
"""

from __future__ import annotations

import os
import signal
import time


class OsCalls:
    """The real thing."""

    def fork(self) -> int:
        return os.fork()

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
