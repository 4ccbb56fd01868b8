"""The process harness shared by the tests (tests/support.py) and the benchmark (tools/bench).

Every process is started in its own session with its output in a file (never an undrained pipe), and
stopping it kills its whole process group (TERM, then KILL), so nothing it forked is left running.
Conditions are polled with a deadline (``wait_until``), never waited for with a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

Address = tuple[str, int] | str | bytes


class TimedOut(AssertionError):
    """``wait_until`` ran out of time (an AssertionError, so a test fails on it as on an assert)."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); ``TimedOut`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def connect(address: Address, timeout: float = 10.0) -> socket.socket:
    """A connected stream socket to a (host, port) tuple or a UNIX socket path."""
    family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def can_connect(address: Address) -> bool:
    try:
        connect(address, 1.0).close()
    except OSError:
        return False
    return True


#: One foreground nginx process whose pid, logs and temp files all live in ``{dir}``; ``{http}`` is the rest of its
#: http block (servers and settings).
_NGINX_FRAME = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 64m;
{http}
}}
"""


def nginx_conf(directory: Path, http: str, connections: int = 2048) -> str:
    """An nginx.conf for a test or benchmark nginx that writes nothing outside ``directory``."""
    return _NGINX_FRAME.format(dir=directory, connections=connections, http=http)


class Proc:
    """A process in its own session with its output in ``log_path``; ``stop`` kills the whole group and reaps it."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str = "proc",
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.name = name
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the log, indented, for an error message."""
        try:
            text = self.log().splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def children(self) -> list[psutil.Process]:
        """Every descendant still running (not the process itself)."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def tree(self) -> list[psutil.Process]:
        """The process and all its descendants (empty once it is gone)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float = 10.0) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """TERM the group, then KILL it; reap; close the log. Safe to call twice."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, signum)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.popen.wait(timeout if signum == signal.SIGTERM else 5.0)
                # the leader is gone; make sure no member of its group lingers
                os.killpg(self.pid, signal.SIGKILL)
            except subprocess.TimeoutExpired:
                continue
            except (ProcessLookupError, PermissionError):
                pass
            break
        if self.popen.poll() is None:
            self.popen.wait(5.0)
        self._log.close()


class ProcessManager:
    """Starts processes with their logs in one directory and stops all of them (``stop_all``) at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self._count = 0

    def start(
        self, argv: Sequence[str], name: str = "proc", env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        self._count += 1
        proc = Proc(argv, self.tmp_path / f"{self._count:02d}-{name}.log", env, cwd or self.tmp_path, name)
        self.procs.append(proc)
        return proc

    def finish(self, proc: Proc) -> None:
        """Stop ``proc`` now and forget it (for the many short-lived processes of a long run)."""
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Stop every process, last started first; fail if any of their descendants survived."""
        for proc in reversed(self.procs):
            proc.stop()
        leftovers = [p for proc in self.procs for p in proc.children() if p.is_running()]
        assert not leftovers, f"processes survived teardown: {leftovers}"
