"""App instance options real configurations use: --threads, --max-requests, --reload-on-rss, --virtualenv,
--pythonpath; each through a real uwsgirouter instance over a real socket."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import (
    ROUTER,
    UWSGI,
    Proc,
    ProcessManager,
    Response,
    can_connect,
    free_port,
    request_vars,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

APP = Path(__file__).resolve().parent.parent / "apps" / "worker_app.py"
Address = tuple[str, int]


def start(procs: ProcessManager, *args: str, env: dict[str, str] | None = None) -> tuple[Proc, Address]:
    port = free_port()
    argv = ["--socket", f"127.0.0.1:{port}", "--wsgi-file", str(APP), *args]
    proc = procs.router(*argv, wait_for=("127.0.0.1", port), env=env)
    address = ("127.0.0.1", port)
    wait_until(lambda: get(address).status == 200 or not proc.alive(), 15, what="the first answer")
    assert proc.alive(), proc.log()
    return proc, address


def get(address: Address, path: str = "/") -> Response:
    return uwsgi_request(address, request_vars(path=path))


def pid_of(address: Address) -> int:
    response = get(address, "/pid")
    assert response.status == 200
    return int(response.body.split(b"=")[1])


def concurrently(address: Address, paths: list[str]) -> tuple[list[Response | BaseException], float]:
    """Send every request at once, each from its own thread; the responses in order and the time taken."""
    results: list[Response | BaseException] = [RuntimeError("no answer")] * len(paths)

    def one(index: int, path: str) -> None:
        try:
            results[index] = get(address, path)
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i, path)) for i, path in enumerate(paths)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, time.monotonic() - began


def statuses(results: list[Response | BaseException]) -> list[object]:
    return [r.status if isinstance(r, Response) else repr(r) for r in results]


# -- --threads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["uwsgirouter", "uwsgi"])
def test_threads_the_app_starts_run_without_enable_threads(procs: ProcessManager, tmp_path: Path, server: str) -> None:
    """docs/differences.md, "Threads started by the app": they run without --enable-threads, also while the
    worker waits for the next request (no request is sent while the file grows); uWSGI 2.0.31 on Python 3.7+
    too, whatever its documentation says."""
    env = {"MARK_DIR": str(tmp_path)}
    if server == "uwsgirouter":
        proc, address = start(procs, "--processes", "1", env=env)
    else:
        if UWSGI is None:
            pytest.skip("uWSGI 2.0.31 is not installed")
        address = ("127.0.0.1", free_port())
        argv = [UWSGI, "--socket", f"127.0.0.1:{address[1]}", "--wsgi-file", str(APP), "--processes", "1"]
        proc = procs.start(argv, "uwsgi", env)
        wait_until(lambda: can_connect(address) or not proc.alive(), 15, what="uWSGI's socket")
    assert get(address, "/ticker").status == 200, proc.log()
    ticks = tmp_path / "ticks"
    wait_until(lambda: ticks.exists() and ticks.read_text().count("tick") >= 20, 10, what="the app's thread ticking")
    assert proc.alive()


def test_threads_serve_slow_requests_together_on_one_worker(procs: ProcessManager, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    proc, address = start(procs, "--processes", "1", "--threads", "4", env={"MARK_DIR": str(marks)})
    results, took = concurrently(address, ["/sleep/1.5"] * 4)
    assert statuses(results) == [200] * 4, proc.log()
    # all four were in the app at once: each entered it (its mark file) before any had slept its 1.5 s; with
    # fewer threads the last would enter only once another had finished. Not a bound on the machine's speed.
    entered = sorted(mark.stat().st_mtime for mark in marks.iterdir())
    assert len(entered) == 4 and entered[-1] - entered[0] < 1.5, (entered, f"took {took:.1f} s")
    assert "switches on core 3)" in proc.log() or "switches on core 2)" in proc.log()


def test_threads_graceful_stop_finishes_every_request_in_hand(procs: ProcessManager, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    proc, address = start(procs, "--processes", "1", "--threads", "3", env={"MARK_DIR": str(marks)})
    out: list[tuple[list[Response | BaseException], float]] = []
    client = threading.Thread(target=lambda: out.append(concurrently(address, ["/sleep/1.5"] * 3)))
    client.start()
    wait_until(lambda: len(list(marks.iterdir())) == 3, 10, what="three requests in the app")
    proc.signal(signal.SIGTERM)
    client.join(30)
    assert statuses(out[0][0]) == [200] * 3, proc.log()
    assert proc.wait(15) == 0


def test_threads_harakiri_kills_the_worker_of_a_stuck_request(procs: ProcessManager) -> None:
    proc, address = start(procs, "--processes", "1", "--threads", "2", "--harakiri", "1")
    before = pid_of(address)
    stuck = threading.Thread(target=_ignore, args=(address,))
    stuck.start()
    wait_until(lambda: "HARAKIRI" in proc.log(), 10, what="harakiri")
    wait_until(lambda: pid_of(address) != before, 10, what="a new worker")
    stuck.join(10)


def _ignore(address: Address) -> None:
    try:
        get(address, "/sleep/30")
    except OSError:
        pass


# -- --max-requests, --reload-on-rss ----------------------------------------------------------------


def test_max_requests_recycles_the_worker_and_no_request_fails(procs: ProcessManager) -> None:
    proc, address = start(procs, "--processes", "2", "--max-requests", "5", "--min-worker-lifetime", "0")
    pids: set[int] = set()
    for _ in range(10):
        results, _ = concurrently(address, ["/pid"] * 6)
        assert statuses(results) == [200] * 6, proc.log()
        pids.update(int(r.body.split(b"=")[1]) for r in results if isinstance(r, Response))
    assert len(pids) >= 60 // 5 - 1, pids  # each process serves at most 5 requests (the first probe counts too)
    log = proc.log()
    assert "...The work of process" in log and "is done. Seeya!" in log
    assert "recycled; respawning" in log
    assert "died" not in log


def test_max_requests_waits_for_the_min_worker_lifetime(procs: ProcessManager) -> None:
    proc, address = start(procs, "--processes", "1", "--max-requests", "2")  # uWSGI's default lifetime: 10 s
    first = pid_of(address)
    assert [pid_of(address) for _ in range(5)] == [first] * 5
    assert "Seeya" not in proc.log()


def test_reload_on_rss_recycles_a_worker_that_grew(procs: ProcessManager) -> None:
    proc, address = start(procs, "--processes", "1", "--reload-on-rss", "150", "--min-worker-lifetime", "0")
    first = pid_of(address)
    assert get(address, "/grow/1").status == 200
    assert pid_of(address) == first  # small: kept
    assert get(address, "/grow/200").status == 200
    wait_until(lambda: pid_of(address) != first, 10, what="a new worker")
    assert f"...The work of process {first} is done. Seeya!" in proc.log()


# -- --virtualenv, --pythonpath ----------------------------------------------------------------------


def make_venv(where: Path, module: str, value: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=60)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    packages = where / "lib" / version / "site-packages"
    (packages / f"{module}.py").write_text(f"VALUE = {value!r}\n")
    return packages


def test_virtualenv_site_packages_are_importable_by_the_app(procs: ProcessManager, tmp_path: Path) -> None:
    packages = make_venv(tmp_path / "venv", "venvmod_only_here", "from the venv")
    proc, address = start(procs, "--virtualenv", str(tmp_path / "venv"), "--processes", "2")
    response = get(address, "/import/venvmod_only_here")
    assert response.status == 200, response.body
    assert response.body == f"from the venv from {packages}/venvmod_only_here.py".encode()
    assert f"added {packages} to pythonpath." in proc.log()


def test_home_alias_and_the_master_imports_from_the_venv(procs: ProcessManager, tmp_path: Path) -> None:
    make_venv(tmp_path / "venv", "venvmod_master", "seen")
    _, address = start(procs, "-H", str(tmp_path / "venv"), "--import", "venvmod_master")
    assert get(address, "/import/venvmod_master").status == 200


@pytest.mark.parametrize("name", ["virtualenv", "home", "venv", "pyhome"])
def test_a_missing_virtualenv_is_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "no-venv"
    for extra in (["--dry-run"], []):
        done = subprocess.run(
            [
                *ROUTER,
                f"--{name}",
                str(missing),
                "--socket",
                f"127.0.0.1:{free_port()}",
                "--wsgi-file",
                str(APP),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].endswith(f"--virtualenv {missing}: no such directory")
        assert "Traceback" not in done.stderr


def test_pythonpath_directories_and_globs(procs: ProcessManager, tmp_path: Path) -> None:
    for name in ("libone", "libtwo", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"mod_{name}.py").write_text(f"VALUE = {name!r}\n")
    proc, address = start(procs, "--pythonpath", str(tmp_path / "other"), "--pp", str(tmp_path / "lib*"))
    for name in ("libone", "libtwo", "other"):
        response = get(address, f"/import/mod_{name}")
        assert response.status == 200, response.body
        assert response.body.startswith(name.encode())
    log = proc.log()
    assert f"added {tmp_path}/libone/ to pythonpath." in log
    assert f"added {tmp_path}/other/ to pythonpath." in log
