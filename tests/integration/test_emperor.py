"""The Emperor (issue 13): the master spawns, reloads, stops and respawns vassals from a directory of INI
files, beside its router; real uWSGI vassals work under it, and uwsgirouter vassals under real uWSGI's Emperor.

Everything runs for real: the router's master is the Emperor, the vassals are uwsgirouter and uWSGI 2.0.31
instances serving tests/apps/instance_app.py, subscribing to the router's UNIX subscription server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import (
    APPS,
    ROUTER,
    UWSGI,
    VENV_BIN,
    Proc,
    ProcessManager,
    free_port,
    group_members,
    request_vars,
    short_unix_dir,
    uwsgi_request,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not UWSGI, reason="uWSGI 2.0.31 is not installed")]

FREQ = 1  #: --emperor-freq of these tests (uWSGI's default is 3)

#: The issue's file, as written, with its addresses on 127.0.0.1 and its paths in the test's directories.
ACCEPTANCE = """[uwsgi]
strict-mode = true
protocol = uwsgi
master = true
enable-threads = true
emperor = ./vassals/*/*.ini
vassals-include = vassals-inject-config.ini
emperor-on-demand-extension = .socket
fastrouter = 127.0.0.1:{port}
fastrouter-subscription-server = {sub}
vacuum = true
emperor-freq = {freq}
binary-path = {binary}
"""

#: What every vassal gets through --vassals-include (uWSGI passes it to real uWSGI vassals too).
INJECTED = """[uwsgi]
subscribe-to = {sub}:%(vassal_key)
"""

#: Vassals named real-* run real uWSGI, the others uwsgirouter: one Emperor governing both kinds.
DISPATCH = """#!/bin/sh
case "$*" in
  *real-*) exec {uwsgi} "$@" ;;
  *) exec {python} -m uwsgirouter "$@" ;;
esac
"""


def vassal_ini(name: str, port: int | None, *extra: str) -> str:
    """A vassal serving tests/apps/instance_app.py on 127.0.0.1:``port`` (None: no --socket, as an on-demand
    vassal, which gets its socket from its Emperor)."""
    lines = [
        "[uwsgi]",
        *([f"socket = 127.0.0.1:{port}"] if port is not None else []),
        f"wsgi-file = {APPS / 'instance_app.py'}",
        f"env = INSTANCE={name}",
        f"vassal_key = {name}.example",
        "master = true",
        "processes = 1",
        "disable-logging = true",
        *extra,
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = short_unix_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Host:
    """A router host from the acceptance file: the master, its vassal directory, a client."""

    def __init__(self, procs: ProcessManager, tmp_path: Path, sockdir: Path) -> None:
        self.procs = procs
        self.tmp = tmp_path
        self.port = free_port()
        self.sub = sockdir / "subscription.sock"
        binary = tmp_path / "vassal-binary"
        binary.write_text(DISPATCH.format(uwsgi=UWSGI, python=VENV_BIN / "python"))
        binary.chmod(0o755)
        (tmp_path / "vassals-inject-config.ini").write_text(INJECTED.format(sub=self.sub))
        self.ini = tmp_path / "router.ini"
        self.ini.write_text(ACCEPTANCE.format(port=self.port, sub=self.sub, freq=FREQ, binary=binary))
        self.master: Proc | None = None

    def add(self, name: str, *extra: str) -> Path:
        path = self.tmp / "vassals" / name / f"{name}.ini"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(vassal_ini(name, free_port(), *extra))
        return path

    def add_on_demand(self, name: str) -> int:
        """An on-demand vassal: its socket's address in NAME.ini.socket (the file's extension option); the port."""
        port = free_port()
        path = self.tmp / "vassals" / name / f"{name}.ini"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(vassal_ini(name, None))
        (path.parent / f"{name}.ini.socket").write_text(f"127.0.0.1:{port}\n")
        return port

    def start(self) -> Proc:
        self.master = self.procs.router(str(self.ini), wait_for=("127.0.0.1", self.port))
        return self.master

    def get(self, name: str, timeout: float = 5.0) -> tuple[int, bytes]:
        response = uwsgi_request(("127.0.0.1", self.port), request_vars(host=f"{name}.example"), timeout=timeout)
        return response.status, response.body

    def routed(self, name: str) -> bool:
        status, body = self.get(name)
        return status == 200 and body.startswith(f"instance={name} ".encode())

    def wait_routed(self, name: str, timeout: float = 20.0) -> None:
        wait_until(lambda: self.routed(name), timeout, what=f"{name}.example routed")

    def vassal_pid(self, name: str) -> int:
        """The pid of the vassal's master, from the Emperor's latest "started" line for it (0: none yet)."""
        found = re.findall(rf"\[emperor\] vassal \./vassals/{name}/{name}\.ini started \(pid: (\d+)\)", self.log())
        return int(found[-1]) if found else 0

    def log(self) -> str:
        assert self.master is not None
        return self.master.log()


@pytest.fixture
def host(sockdir: Path, procs: ProcessManager, tmp_path: Path) -> Host:
    """``sockdir`` first: set up before ``procs``, it is removed after the processes are stopped, so the
    vassals stopping at the end of a test still find the subscription socket to unsubscribe from."""
    return Host(procs, tmp_path, sockdir)


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def steady_requests(host: Host, name: str, stop: threading.Event, results: list[int]) -> None:
    """One request after another until ``stop`` (at most a minute): each status, 0 for a connection error."""
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            results.append(host.get(name)[0])
        except OSError:
            results.append(0)


def test_the_acceptance_file_runs_a_uwsgi_and_a_uwsgirouter_vassal_routed_by_their_subscriptions(host: Host) -> None:
    host.add("real-one")
    host.add("own")
    host.start()
    host.wait_routed("real-one")
    host.wait_routed("own")
    for name in ("real-one", "own"):
        for event in ("has been spawned", "is ready to accept requests", "is now loyal"):
            line = f"[emperor] vassal ./vassals/{name}/{name}.ini {event}"  # uWSGI's words
            wait_until(lambda: line in host.log(), 10, what=line)  # noqa: B023 - called before the next turn
    assert "on demand" not in host.log()  # no NAME.ini.socket file: started at once


def test_the_acceptance_file_runs_an_on_demand_vassal_at_its_first_request(host: Host) -> None:
    host.add("own")
    port = host.add_on_demand("lazy")
    host.start()
    host.wait_routed("own")
    name = "./vassals/lazy/lazy.ini"
    detected = f'[uwsgi-emperor] {name} -> "on demand" instance detected, waiting for connections on socket'
    wait_until(lambda: detected in host.log(), 10, what="the on-demand socket bound")
    wait_until(lambda: host.log().count("[emperor] vassal ./vassals/own/own.ini is now loyal") == 1, 10)
    assert f"vassal {name} started" not in host.log()  # not running before its first request
    response = uwsgi_request(("127.0.0.1", port), request_vars(host="lazy.example"), timeout=20)
    assert response.status == 200 and response.body.startswith(b"instance=lazy ")
    assert f"vassal {name} started" in host.log()
    host.wait_routed("lazy")  # once running it subscribes like the others


@pytest.mark.parametrize("name", ["real-one", "own"])
def test_touching_a_vassal_file_reloads_it_without_a_failed_request(host: Host, name: str) -> None:
    path = host.add(name)
    host.start()
    host.wait_routed(name)
    pid = host.vassal_pid(name)
    stop, results = threading.Event(), list[int]()
    loop = threading.Thread(target=steady_requests, args=(host, name, stop, results))
    loop.start()
    try:
        wait_until(lambda: len(results) >= 20, 10, what="requests before the touch")
        os.utime(path, (time.time() + 5, time.time() + 5))
        wait_until(lambda: f"[emperor] reload the uwsgi instance ./vassals/{name}/{name}.ini" in host.log(), 10)
        wait_until(
            lambda: host.log().count(f"vassal ./vassals/{name}/{name}.ini is ready to accept requests") == 2,
            20,
            what="the reloaded vassal accepting",
        )
        count = len(results)
        wait_until(lambda: len(results) >= count + 20, 10, what="requests after the reload")
    finally:
        stop.set()
        loop.join(30)
    assert set(results) == {200}, f"{len(results)} requests, statuses {sorted(set(results))}"
    assert host.vassal_pid(name) == pid  # reloaded in place, not restarted


def test_removing_a_vassal_file_unsubscribes_and_stops_it(host: Host) -> None:
    path = host.add("gone")
    host.add("stays")
    host.start()
    host.wait_routed("gone")
    host.wait_routed("stays")
    pid = host.vassal_pid("gone")
    path.unlink()
    wait_until(lambda: not psutil.pid_exists(pid) or gone(psutil.Process(pid)), 15)
    wait_until(lambda: "[emperor] removed uwsgi instance ./vassals/gone/gone.ini" in host.log(), 10)
    status, body = host.get("gone")
    assert status == 502 and b"no node" in body
    assert host.routed("stays")


def test_a_new_vassal_file_is_routed_within_two_scan_periods(host: Host) -> None:
    host.add("first")
    host.start()
    host.wait_routed("first")
    host.add("newcomer")
    started = time.monotonic()
    wait_until(lambda: "[emperor] vassal ./vassals/newcomer/newcomer.ini has been spawned" in host.log(), 2 * FREQ + 1)
    host.wait_routed("newcomer", timeout=15)
    assert time.monotonic() - started < 2 * FREQ + 5  # spawned within two periods, plus its own start


@pytest.mark.parametrize("name", ["real-one", "own"])
def test_a_killed_vassal_comes_back(host: Host, name: str) -> None:
    host.add(name)
    host.start()
    host.wait_routed(name)
    pid = host.vassal_pid(name)
    assert pid > 0
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: host.vassal_pid(name) not in (0, pid), 15, what="a new vassal process")
    wait_until(lambda: f"vassal ./vassals/{name}/{name}.ini (pid: {pid}) died" in host.log(), 5)
    host.wait_routed(name)


def test_sigterm_stops_router_and_vassals_and_leaves_no_process(host: Host) -> None:
    host.add("real-one")
    host.add("own")
    master = host.start()
    host.wait_routed("real-one")
    host.wait_routed("own")
    master.signal(signal.SIGTERM)
    assert master.wait(30) == 0
    wait_until(lambda: not group_members(master.pid), 10, what="every process of the group gone")
    log = host.log()
    assert "[emperor] *** RAGNAROK EVOKED ***" in log
    assert "received message 2 from emperor" in log  # graceful stop asked of the uwsgirouter vassal
    assert "[emperor] removed uwsgi instance ./vassals/real-one/real-one.ini" in log


def test_sighup_reloads_the_router_and_keeps_the_vassals_and_the_node_table(host: Host) -> None:
    host.add("real-one", "subscribe-freq = 3600")  # one announce only: a lost node table stays lost
    host.add("own")
    master = host.start()
    host.wait_routed("real-one")
    host.wait_routed("own")
    pids = {name: host.vassal_pid(name) for name in ("real-one", "own")}
    master.signal(signal.SIGHUP)
    wait_until(lambda: "graceful reload: generation 1 serving" in host.log(), 15)
    assert host.routed("real-one") and host.routed("own")
    assert {name: host.vassal_pid(name) for name in pids} == pids
    assert "[emperor] stop the uwsgi instance" not in host.log()


def test_a_vassal_that_keeps_dying_is_throttled(procs: ProcessManager, tmp_path: Path) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    (vassals / "broken.ini").write_text("[uwsgi]\nsocket = 127.0.0.1:1\nwsgi-file = /nonexistent/app.py\n")
    port = free_port()
    master = procs.router(
        f"--fastrouter=127.0.0.1:{port}",
        f"--emperor={vassals}",
        "--emperor-freq=1",
        "--emperor-throttle=300",
        wait_for=("127.0.0.1", port),
    )
    wait_until(lambda: "unloyal bad behaving vassal found: broken.ini throttling it..." in master.log(), 15)
    wait_until(lambda: "[emperor] vassal broken.ini respawns in" in master.log(), 15)
    assert master.log().count("[emperor] vassal broken.ini started") >= 3


def test_real_uwsgi_vassal_reloads_and_stops_on_our_commands(procs: ProcessManager, tmp_path: Path) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    port, app_port = free_port(), free_port()
    path = vassals / "app.ini"
    path.write_text(vassal_ini("app", app_port))
    master = procs.router(
        f"--fastrouter=127.0.0.1:{port}",
        f"--emperor={vassals}",
        "--emperor-freq=1",
        f"--binary-path={UWSGI}",
        wait_for=("127.0.0.1", port),
    )
    wait_until(lambda: "[emperor] vassal app.ini is ready to accept requests" in master.log(), 20)
    assert uwsgi_request(("127.0.0.1", app_port)).status == 200
    os.utime(path, (time.time() + 5, time.time() + 5))
    wait_until(lambda: "received message 1 from emperor" in master.log(), 10)  # uWSGI's own line
    wait_until(lambda: master.log().count("[emperor] vassal app.ini is ready to accept requests") == 2, 20)
    path.unlink()
    wait_until(lambda: "[emperor] removed uwsgi instance app.ini" in master.log(), 20)
    assert "received message 2 from emperor" in master.log()


def test_uwsgirouter_vassal_under_real_uwsgi_emperor(procs: ProcessManager, tmp_path: Path) -> None:
    assert UWSGI is not None
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    app_port = free_port()
    path = vassals / "ours.ini"
    path.write_text(vassal_ini("ours", app_port))
    emperor = procs.start(
        [UWSGI, "--emperor", str(vassals), "--emperor-freq", "1", "--binary-path", str(VENV_BIN / "uwsgirouter")],
        "uwsgi-emperor",
    )
    wait_until(lambda: "[emperor] vassal ours.ini is now loyal" in emperor.log(), 20, what="loyalty")
    log = emperor.log()
    assert "[emperor] vassal ours.ini has been spawned" in log
    assert "[emperor] vassal ours.ini is ready to accept requests" in log
    assert b"instance=ours " in uwsgi_request(("127.0.0.1", app_port)).body
    (vassal,) = psutil.Process(emperor.pid).children()
    os.utime(path, (time.time() + 5, time.time() + 5))
    wait_until(lambda: "graceful reload: generation 1 serving" in emperor.log(), 20, what="our vassal reloaded")
    assert vassal.is_running() and uwsgi_request(("127.0.0.1", app_port)).status == 200
    path.unlink()
    wait_until(lambda: "[emperor] removed uwsgi instance ours.ini" in emperor.log(), 20)
    assert "received message 0 from emperor" in emperor.log()
    wait_until(lambda: gone(vassal), 10)


def test_uwsgirouter_vassal_stops_when_its_emperor_dies(procs: ProcessManager, tmp_path: Path) -> None:
    assert UWSGI is not None
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    app_port = free_port()
    (vassals / "orphan.ini").write_text(vassal_ini("orphan", app_port))
    emperor = procs.start(
        [UWSGI, "--emperor", str(vassals), "--binary-path", str(VENV_BIN / "uwsgirouter")], "uwsgi-emperor"
    )
    wait_until(lambda: "[emperor] vassal orphan.ini is now loyal" in emperor.log(), 20)
    (vassal,) = psutil.Process(emperor.pid).children()
    workers = vassal.children(recursive=True)
    emperor.signal(signal.SIGKILL)
    emperor.wait(5)
    for process in [vassal, *workers]:
        wait_until(lambda: gone(process), 15)  # noqa: B023 - called before the next turn


def test_fifo_e_rescans_at_once(procs: ProcessManager, tmp_path: Path) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    port = free_port()
    fifo = tmp_path / "fifo"
    (vassals / "early.ini").write_text(vassal_ini("early", free_port()))
    master = procs.router(
        f"--fastrouter=127.0.0.1:{port}",
        f"--emperor={vassals}",
        "--emperor-freq=3600",
        f"--master-fifo={fifo}",
        wait_for=("127.0.0.1", port),
    )
    wait_until(lambda: "[emperor] vassal early.ini has been spawned" in master.log(), 20)  # the first scan
    (vassals / "late.ini").write_text(vassal_ini("late", free_port()))
    assert "vassal late.ini started" not in master.log()  # the next scan is an hour away
    with open(fifo, "w") as writer:
        writer.write("E")
    wait_until(lambda: "[emperor] vassal late.ini has been spawned" in master.log(), 15)


def test_emperor_only_master_and_its_pidfile(procs: ProcessManager, tmp_path: Path) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    app_port = free_port()
    (vassals / "solo.ini").write_text(vassal_ini("solo", app_port))
    (vassals / "other.yaml").write_text("uwsgi:\n  socket: 127.0.0.1:1\n")
    pidfile = tmp_path / "emperor.pid"
    master = procs.start([*ROUTER, f"--emperor={vassals}", f"--emperor-pidfile={pidfile}"], "emperor")
    wait_until(lambda: "[emperor] vassal solo.ini is now loyal" in master.log(), 20)
    assert pidfile.read_text().strip() == str(master.pid)
    assert "vassal other.yaml is not run: uwsgirouter's Emperor runs INI vassal files only" in master.log()
    assert uwsgi_request(("127.0.0.1", app_port)).status == 200
    master.signal(signal.SIGTERM)
    assert master.wait(30) == 0
    assert not pidfile.exists()
