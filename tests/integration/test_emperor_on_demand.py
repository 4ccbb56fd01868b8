"""On-demand vassals (issue 13): the Emperor binds a vassal's socket and starts the vassal at the first
connection, handing it the socket as its stdin; the request that woke it is answered.

Real processes throughout: our Emperor with uwsgirouter and real uWSGI 2.0.31 vassals, and a uwsgirouter
vassal under real uWSGI's Emperor. The acceptance file's own on-demand vassal is in test_emperor.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.test_emperor import gone, vassal_ini
from tests.support import (
    APPS,
    ROUTER,
    UWSGI,
    VENV_BIN,
    Proc,
    ProcessManager,
    free_port,
    short_unix_dir,
    uwsgi_request,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not UWSGI, reason="uWSGI 2.0.31 is not installed")]

DETECTED = '[uwsgi-emperor] {name} -> "on demand" instance detected, waiting for connections on socket "{socket}"'


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = short_unix_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def emperor(procs: ProcessManager, vassals: Path, *args: str) -> Proc:
    """uwsgirouter as an Emperor only (no router), scanning every second."""
    return procs.start([*ROUTER, f"--emperor={vassals}", "--emperor-freq=1", *args], "emperor")


def vassal_processes(master: Proc) -> list[psutil.Process]:
    return [child for child in psutil.Process(master.pid).children() if not gone(child)]


@pytest.mark.parametrize("kind", ["uwsgirouter", "uwsgi"])
def test_an_on_demand_vassal_starts_at_its_first_request_and_answers_it(
    procs: ProcessManager, tmp_path: Path, kind: str
) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    port = free_port()
    (vassals / "app.ini").write_text(vassal_ini("app", None))
    (vassals / "app.ini.socket").write_text(f"127.0.0.1:{port}\nanything after the first line is ignored\n")
    binary = [f"--binary-path={UWSGI}"] if kind == "uwsgi" else []
    master = emperor(procs, vassals, "--emperor-on-demand-extension=.socket", *binary)
    wait_until(lambda: DETECTED.format(name="app.ini", socket=f"127.0.0.1:{port}") in master.log(), 15)
    assert "[emperor] vassal app.ini started" not in master.log()
    assert vassal_processes(master) == []  # nothing runs before the first request
    response = uwsgi_request(("127.0.0.1", port), timeout=30)
    assert response.status == 200 and response.body.startswith(b"instance=app ")
    log = master.log()
    assert "[emperor] vassal app.ini started" in log
    assert f"uwsgi socket 0 inherited INET address 127.0.0.1:{port} fd 0" in log  # the vassal's own line
    assert uwsgi_request(("127.0.0.1", port)).status == 200


def test_on_demand_directory_binds_a_unix_socket_per_vassal_and_removing_the_file_closes_it(
    procs: ProcessManager, tmp_path: Path, sockdir: Path
) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    (vassals / "web.ini").write_text(vassal_ini("web", None))
    path = sockdir / "web.socket"
    master = emperor(procs, vassals, f"--emperor-on-demand-directory={sockdir}")
    wait_until(lambda: DETECTED.format(name="web.ini", socket=path) in master.log(), 15)
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o666  # as uWSGI
    assert vassal_processes(master) == []
    response = uwsgi_request(str(path), timeout=30)
    assert response.status == 200 and response.body.startswith(b"instance=web ")
    (vassals / "web.ini").unlink()
    wait_until(lambda: "[emperor] removed uwsgi instance web.ini" in master.log(), 20)
    wait_until(lambda: not path.exists(), 5, what="the on-demand socket file removed")
    wait_until(lambda: vassal_processes(master) == [], 10, what="the vassal gone")


def test_an_idle_uwsgi_vassal_goes_back_to_waiting_and_the_next_request_wakes_it(
    procs: ProcessManager, tmp_path: Path
) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    port = free_port()
    (vassals / "nap.ini").write_text(vassal_ini("nap", None, "idle = 1", "die-on-idle = true"))
    (vassals / "nap.ini.socket").write_text(f"127.0.0.1:{port}")
    master = emperor(procs, vassals, "--emperor-on-demand-extension=.socket", f"--binary-path={UWSGI}")
    wait_until(lambda: DETECTED.format(name="nap.ini", socket=f"127.0.0.1:{port}") in master.log(), 15)
    assert uwsgi_request(("127.0.0.1", port), timeout=30).status == 200
    back = '[uwsgi-emperor] nap.ini -> back to "on demand" mode, waiting for connections on socket'
    wait_until(lambda: back in master.log(), 20, what="the idle vassal back to waiting")
    assert "[emperor] bringing back instance nap.ini to on-demand mode" in master.log()  # it said "stop me" (22)
    wait_until(lambda: vassal_processes(master) == [], 10, what="the idle vassal gone")
    response = uwsgi_request(("127.0.0.1", port), timeout=30)  # the same socket, still the Emperor's
    assert response.status == 200 and response.body.startswith(b"instance=nap ")
    assert master.log().count("[emperor] vassal nap.ini started") == 2


def test_a_killed_on_demand_vassal_waits_for_the_next_request(procs: ProcessManager, tmp_path: Path) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    port = free_port()
    (vassals / "app.ini").write_text(vassal_ini("app", None))
    (vassals / "app.ini.socket").write_text(f"127.0.0.1:{port}")
    master = emperor(procs, vassals, "--emperor-on-demand-extension=.socket")
    detected = DETECTED.format(name="app.ini", socket=f"127.0.0.1:{port}")
    wait_until(lambda: detected in master.log(), 15)
    assert uwsgi_request(("127.0.0.1", port), timeout=30).status == 200
    wait_until(lambda: "[emperor] vassal app.ini is now loyal" in master.log(), 15)
    (vassal,) = vassal_processes(master)
    for process in [*vassal.children(recursive=True), vassal]:  # the whole vassal crashes, workers too
        os.kill(process.pid, signal.SIGKILL)
    wait_until(lambda: master.log().count(detected) == 2, 15, what="waiting again")
    assert vassal_processes(master) == []  # waits again, as uWSGI's Emperor re-adds it on demand
    assert uwsgi_request(("127.0.0.1", port), timeout=30).status == 200
    assert master.log().count("[emperor] vassal app.ini started") == 2


def test_uwsgirouter_on_demand_vassal_under_real_uwsgi_emperor(procs: ProcessManager, tmp_path: Path) -> None:
    assert UWSGI is not None
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    port = free_port()
    (vassals / "ours.ini").write_text(vassal_ini("ours", None))
    (vassals / "ours.ini.socket").write_text(f"127.0.0.1:{port}\n")
    uwsgi_emperor = procs.start(
        [
            UWSGI,
            "--emperor",
            str(vassals),
            "--emperor-freq",
            "1",
            "--emperor-on-demand-extension",
            ".socket",
            "--binary-path",
            str(VENV_BIN / "uwsgirouter"),
        ],
        "uwsgi-emperor",
    )
    wait_until(lambda: 'ours.ini -> "on demand" instance detected' in uwsgi_emperor.log(), 15)
    assert vassal_processes(uwsgi_emperor) == []
    response = uwsgi_request(("127.0.0.1", port), timeout=30)
    assert response.status == 200 and response.body.startswith(b"instance=ours ")
    assert f"uwsgi socket 0 inherited INET address 127.0.0.1:{port} fd 0" in uwsgi_emperor.log()


def test_skip_zero_declines_a_listening_socket_on_stdin() -> None:
    """Without --skip-zero the socket on stdin is served (the tests above); with it, the instance has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        app = ["--wsgi-file", str(APPS / "instance_app.py"), "--master"]
        declined = subprocess.run(
            [*ROUTER, *app, "--skip-zero"], stdin=listening.fileno(), capture_output=True, text=True, timeout=30
        )
    assert declined.returncode != 0 and "nothing to run" in declined.stderr
    assert "inherited" not in declined.stderr
