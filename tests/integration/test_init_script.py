"""scripts/init.d/uwsgirouter run as an operator would, without root: a temp INI, pidfile and log named by
UWSGIROUTER_INI, UWSGIROUTER_PIDFILE and UWSGIROUTER_LOG; each action's output and LSB exit status."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import REPO, VENV_BIN, free_port, request_vars, uwsgi_request, wait_until

pytestmark = pytest.mark.integration

SCRIPT = REPO / "scripts" / "init.d" / "uwsgirouter"


def alive(pid: int) -> bool:
    """A process that has not exited (a daemon's zombie waits for an init that may not reap it here)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class InitScript:
    """The script with its settings in the environment; ``run`` is ``sh SCRIPT ACTION``."""

    def __init__(self, tmp_path: Path) -> None:
        self.router_port, self.app_port = free_port(), free_port()
        self.ini = tmp_path / "router.ini"
        self.pidfile = tmp_path / "run" / "router.pid"
        self.pidfile.parent.mkdir()
        self.log = tmp_path / "log" / "router.log"  # its directory is made by the script
        self.write_ini("")
        self.env = {
            **os.environ,
            "UWSGIROUTER_INI": str(self.ini),
            "UWSGIROUTER_PIDFILE": str(self.pidfile),
            "UWSGIROUTER_LOG": str(self.log),
            "UWSGIROUTER_BIN": str(VENV_BIN / "uwsgirouter"),
            "UWSGIROUTER_DEFAULTS": str(tmp_path / "no-defaults"),
        }

    def write_ini(self, extra: str) -> None:
        self.ini.write_text(
            "[uwsgi]\n"
            "master = true\n"
            f"fastrouter = 127.0.0.1:{self.router_port}\n"
            f"fastrouter-to = 127.0.0.1:{self.app_port}\n"
            f"socket = 127.0.0.1:{self.app_port}\n"
            f"wsgi-file = {REPO / 'conf' / 'hello.py'}\n"
            "processes = 2\n" + extra
        )

    def run(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(SCRIPT), action], env=self.env, capture_output=True, text=True, timeout=90, check=False
        )

    def master_pid(self) -> int:
        return int(self.pidfile.read_text())

    def workers(self) -> set[int]:
        with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError, ValueError):
            return {child.pid for child in psutil.Process(self.master_pid()).children()}
        return set()

    def get(self, path: str = "/") -> int:
        return uwsgi_request(("127.0.0.1", self.router_port), request_vars(host="example.com", path=path)).status

    def kill_leftovers(self) -> None:
        """The daemonized master left its session: kill it and its workers if a test failed half-way."""
        with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError, ValueError):
            master = psutil.Process(self.master_pid())
            for process in [*master.children(recursive=True), master]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGKILL)


@pytest.fixture
def init(tmp_path: Path) -> Iterator[InitScript]:
    script = InitScript(tmp_path)
    try:
        yield script
    finally:
        script.kill_leftovers()


def test_start_status_reload_restart_stop(init: InitScript) -> None:
    started = init.run("start")
    assert started.returncode == 0, started.stderr
    assert "started" in started.stdout
    # the script reports success only once the router answers
    assert init.get() == 200
    status = init.run("status")
    assert status.returncode == 0 and f"running (pid {init.master_pid()})" in status.stdout
    again = init.run("start")
    assert again.returncode == 0 and "already running" in again.stdout

    # reload: a new generation of workers, and no request fails meanwhile
    master, old_workers = init.master_pid(), init.workers()
    assert len(old_workers) == 3
    failures: list[object] = []
    done = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < deadline:
            try:
                if (code := init.get()) != 200:
                    failures.append(code)
            except OSError as exc:
                failures.append(exc)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        reloaded = init.run("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        wait_until(lambda: "generation 1 serving" in init.log.read_text(), 20, what="the new generation")
        wait_until(lambda: len(init.workers()) == 3 and not init.workers() & old_workers, 20, what="old workers gone")
    finally:
        done.set()
        thread.join()
    assert failures == []
    assert init.master_pid() == master

    restarted = init.run("restart")
    assert restarted.returncode == 0, restarted.stderr
    assert init.master_pid() != master and not alive(master)
    assert init.get() == 200

    master, workers = init.master_pid(), init.workers()
    stopped = init.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(alive(pid) for pid in (master, *workers))
    assert init.run("status").returncode == 3
    assert not init.pidfile.exists()
    assert "goodbye" in init.log.read_text()


def test_lsb_codes_when_not_running(init: InitScript) -> None:
    stop = init.run("stop")
    assert stop.returncode == 0 and "not running" in stop.stdout
    assert init.run("status").returncode == 3
    assert init.run("reload").returncode == 7
    assert init.run("force-reload").returncode == 7
    assert init.run("try-restart").returncode == 0
    assert init.run("dance").returncode == 2
    # a pidfile whose process is gone: "dead with a pidfile"
    init.pidfile.write_text("999999999\n")
    dead = init.run("status")
    assert dead.returncode == 1 and "pidfile" in dead.stdout


def test_a_broken_ini_fails_start_and_names_the_option(init: InitScript) -> None:
    init.write_ini("fastrouter-timeout = soon\n")
    started = init.run("start")
    assert started.returncode == 6  # LSB: not configured
    assert "--fastrouter-timeout" in started.stderr
    assert init.run("status").returncode == 3
    init.ini.unlink()
    missing = init.run("start")
    assert missing.returncode == 6 and str(init.ini) in missing.stderr


def test_a_router_that_cannot_bind_fails_start_with_its_log(init: InitScript) -> None:
    """The configuration is fine but the port is taken: the router detaches, then fails; the script says so
    (at once, not after its timeout) with the log's last lines."""
    with socket.create_server(("127.0.0.1", init.router_port)):
        began = time.monotonic()
        started = init.run("start")
        took = time.monotonic() - began
    assert started.returncode == 1
    assert "unable to bind" in started.stderr and str(init.router_port) in started.stderr
    assert took < 10
    assert init.run("status").returncode == 3
