"""The master supervisor: shared sockets, local WSGI app workers, respawns, reloads, stops, operations.

Each test starts its own instance through ``procs``; apps are written into the test's tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support import (
    NGINX,
    ROUTER,
    WRK,
    Proc,
    ProcessManager,
    Response,
    can_connect,
    free_port,
    group_members,
    http_get,
    request_vars,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

APP_SOURCE = """
import hashlib
import os
import pwd
import time
import warnings
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)  # a warning of the validator fails the request too

MARKS = {marks!r}
DATA = {data!r}


def _text(start_response, body, status="200 OK"):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _checked(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/md5":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        return _text(start_response, hashlib.md5(body).hexdigest().encode())
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk %d\\n" % i for i in range(200))
    if path == "/file":
        size = str(os.path.getsize(DATA))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", size)])
        return environ["wsgi.file_wrapper"](open(DATA, "rb"), 8192)
    if path.startswith("/sleep/"):
        with open(os.path.join(MARKS, "sleep-%d" % os.getpid()), "w") as mark:
            mark.write(path)
        time.sleep(float(path.rsplit("/", 1)[1]))
        return _text(start_response, b"slept pid=%d" % os.getpid())
    if path == "/warm":  # busy long enough for a second request to go to another worker
        time.sleep(0.3)
        return _text(start_response, b"hello pid=%d" % os.getpid())
    if path == "/cwd":
        return _text(start_response, os.getcwd().encode())
    return _text(start_response, b"hello pid=%d" % os.getpid())


_validated = validator(_checked)


def application(environ, start_response):
    # nginx forwards every request header as HTTP_*, Content-Length and Content-Type too, and uWSGI 2.0.31
    # passes them on as they come (checked); the validator forbids those two keys, so they go here.
    environ.pop("HTTP_CONTENT_LENGTH", None)
    environ.pop("HTTP_CONTENT_TYPE", None)
    if environ["PATH_INFO"] == "/raw-file":  # not wrapped, so the worker can send the real file itself
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(DATA, "rb"), 8192)
    return _validated(environ, start_response)
"""

BOUND = re.compile(r"uwsgi socket 0 bound to 127\.0\.0\.1:(\d+) fd \d+")


@dataclass
class Site:
    """The app file and what it reads and writes."""

    app: Path
    data: bytes
    marks: Path

    def sleepers(self) -> dict[int, str]:
        """pid -> path of the /sleep/ requests that have started so far."""
        return {int(p.name.split("-")[1]): p.read_text() for p in self.marks.glob("sleep-*")}


def write_site(directory: Path) -> Site:
    directory.mkdir(parents=True, exist_ok=True)
    marks = directory / "marks"
    marks.mkdir(exist_ok=True)
    data = hashlib.sha256(b"seed").digest() * 10_000 + b"tail"  # 320 KB, not a multiple of 8192
    (directory / "data.bin").write_bytes(data)
    app = directory / "app.py"
    app.write_text(APP_SOURCE.format(marks=str(marks), data=str(directory / "data.bin")))
    return Site(app, data, marks)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return write_site(tmp_path / "site")


# -- helpers ---------------------------------------------------------------------------------------


def title(process: psutil.Process) -> str:
    """What ps shows for the process ('' once it is gone or a zombie)."""
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return ""
        return " ".join(process.cmdline()).strip()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def workers(master_pid: int) -> dict[int, str]:
    """pid -> title of the master's live children."""
    try:
        children = psutil.Process(master_pid).children()
    except psutil.NoSuchProcess:
        return {}
    return {child.pid: name for child in children if (name := title(child))}


def pid_of(master_pid: int, name: str) -> int:
    return next((pid for pid, t in workers(master_pid).items() if t == name), 0)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def bound_port(proc: Proc) -> int:
    """The real port of ``--socket 127.0.0.1:0``, read from the log."""
    match = wait_until(lambda: BOUND.search(proc.log()) or not proc.alive(), 15, what="the 'bound' log line")
    assert proc.alive(), proc.log()
    assert isinstance(match, re.Match)
    return int(match.group(1))


def start_router_and_app(procs: ProcessManager, site: Site, *extra: str) -> tuple[Proc, int]:
    """``--fastrouter 127.0.0.1:P --fastrouter-use-socket --socket 127.0.0.1:0 --processes 2``, all up."""
    port = free_port()
    proc = procs.router(
        "--fastrouter",
        f"127.0.0.1:{port}",
        "--fastrouter-use-socket",
        "--socket",
        "127.0.0.1:0",
        "--processes",
        "2",
        "--wsgi-file",
        str(site.app),
        *extra,
        wait_for=("127.0.0.1", port),
    )
    wait_for_workers(proc.pid, {"uwsgirouter fastrouter 1", "uwsgirouter worker 1", "uwsgirouter worker 2"})
    warm_up(("127.0.0.1", port), 2)
    return proc, port


def warm_up(address: tuple[str, int] | str, count: int) -> set[int]:
    """Wait until ``count`` app workers answer (concurrent slow requests go to distinct idle workers)."""

    def answered() -> set[int] | None:
        requests = [Background(address, "/warm") for _ in range(count)]
        pids = set()
        for request in requests:
            response = request.join(15)
            assert response is not None and response.status == 200, (request.error, response)
            pids.add(int(response.body.split(b"pid=")[1]))
        return pids if len(pids) == count else None

    pids: set[int] = wait_until(answered, 10, what=f"{count} app workers to answer")
    return pids


def wait_for_workers(master_pid: int, titles: set[str], timeout: float = 10.0) -> dict[int, str]:
    def found() -> dict[int, str] | None:
        now = workers(master_pid)
        return now if sorted(now.values()) == sorted(titles) else None

    now: dict[int, str] = wait_until(found, timeout, what=f"workers {sorted(titles)}")
    return now


def new_generation(master_pid: int, old: set[int], count: int, timeout: float) -> dict[int, str]:
    """Wait until exactly ``count`` workers run and none of them is in ``old``."""

    def found() -> dict[int, str] | None:
        now = workers(master_pid)
        return now if len(now) == count and not set(now) & old else None

    now: dict[int, str] = wait_until(found, timeout, what=f"{count} new workers")
    return now


def kill_logging_to(logfile: Path) -> None:
    """SIGKILL every process whose stdout is ``logfile``: a daemon we started, which left the procs group."""
    for process in psutil.process_iter():
        try:
            if os.readlink(f"/proc/{process.pid}/fd/1") == str(logfile):
                process.kill()
        except (OSError, psutil.NoSuchProcess):
            pass


def assert_clean_log(proc: Proc) -> None:
    log = proc.log()
    for bad in ("Traceback", "Exception ignored", "exception in the app", "AssertionError"):
        assert bad not in log, log


@dataclass
class Outcome:
    at: float
    status: int  # 0: no HTTP response (closed, reset, timed out)
    error: str = ""


@dataclass
class Hammer:
    """``threads`` clients sending uwsgi requests back to back until stopped; every outcome is kept."""

    address: tuple[str, int] | str
    threads: int = 2
    path: str = "/"
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = uwsgi_request(self.address, request_vars(path=self.path), timeout=5.0)
                outcome = Outcome(time.monotonic(), response.status, "" if response.status else repr(response.raw))
            except OSError as exc:
                outcome = Outcome(time.monotonic(), 0, repr(exc))
            self.outcomes.append(outcome)

    def __enter__(self) -> Hammer:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def count(self) -> int:
        return len(self.outcomes)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]


class Background:
    """One request in a thread, its response (or error) kept for later."""

    def __init__(self, address: tuple[str, int] | str, path: str, timeout: float = 15.0) -> None:
        self.response: Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(address, path, timeout), daemon=True)
        self._thread.start()

    def _run(self, address: tuple[str, int] | str, path: str, timeout: float) -> None:
        try:
            self.response = uwsgi_request(address, request_vars(path=path), timeout=timeout)
        except OSError as exc:
            self.error = exc

    def join(self, timeout: float) -> Response | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the request is still running"
        return self.response


# -- 1. WSGI through nginx ---------------------------------------------------------------------------


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_wsgi_app_passes_the_validator_through_nginx(procs: ProcessManager, site: Site) -> None:
    proc = procs.router("--socket", "127.0.0.1:0", "--master", "--processes", "2", "--wsgi-file", str(site.app))
    port = bound_port(proc)
    http_port = free_port()
    procs.nginx(f"127.0.0.1:{port}", http_port)

    for _ in range(4):  # both workers, more than once
        response = http_get(http_port, "/")
        assert response.status == 200, proc.log()
        assert response.body.startswith(b"hello pid=")

    body = os.urandom(300_000)
    response = http_get(http_port, "/md5", method="POST", body=body)
    assert response.status == 200, proc.log()
    assert response.body == hashlib.md5(body).hexdigest().encode()

    response = http_get(http_port, "/stream")
    assert response.status == 200, proc.log()
    assert response.body == b"".join(b"chunk %d\n" % i for i in range(200))

    for path in ("/file", "/raw-file"):
        response = http_get(http_port, path)
        assert response.status == 200, (path, proc.log())
        assert response.headers["content-type"] == "application/octet-stream"
        assert hashlib.md5(response.body).hexdigest() == hashlib.md5(site.data).hexdigest(), path

    assert proc.alive()
    assert_clean_log(proc)


# -- 2. a killed worker is replaced, the service goes on ---------------------------------------------


#: A worker that dies after a long life is respawned at once, without back-off: the arbiter's unit tests hold that
#: on a fake clock (tests/unit/test_arbiter.py::test_unexpected_death_is_respawned_at_once_after_a_long_life). Here
#: the wall clock only bounds the respawn, generously for a loaded 2-core machine (it takes milliseconds).
RESPAWN_DEADLINE_S = 5.0


def test_kill9_app_worker_is_respawned_and_other_requests_are_fine(procs: ProcessManager, site: Site) -> None:
    proc, port = start_router_and_app(procs, site)
    address = ("127.0.0.1", port)
    slow = Background(address, "/sleep/3")
    victim = wait_until(lambda: next(iter(site.sleepers()), 0), 5, what="the slow request to start")
    name = workers(proc.pid)[victim]
    assert name.startswith("uwsgirouter worker ")

    with Hammer(address, threads=2) as hammer:
        wait_until(lambda: hammer.count() >= 20, 5, what="requests via the other worker")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        replacement = wait_until(
            lambda: pid_of(proc.pid, name) not in (0, victim) and pid_of(proc.pid, name),
            RESPAWN_DEADLINE_S,
            what=f"a new {name}",
        )
        before = hammer.count()
        wait_until(lambda: hammer.count() >= before + 50, 5, what="requests after the respawn")
    assert not hammer.failures(), hammer.failures()[:5]
    assert f"(pid {victim}) died (" in proc.log()
    assert alive(replacement)

    # the GET in flight on the killed worker broke before any answer: the router sends it once more
    # (a worker that is gone is no reason to fail an idempotent request) and another worker answers it
    response = slow.join(8)
    assert response is not None and response.status == 200, (slow.error, response)
    assert b"slept" in response.body
    assert time.monotonic() - killed_at < 3.0 + RESPAWN_DEADLINE_S  # the 3 s request, sent once more
    app_workers = {pid for pid, name in workers(proc.pid).items() if name.startswith("uwsgirouter worker ")}
    assert replacement in app_workers and victim not in app_workers
    assert warm_up(address, 2) == app_workers  # the new worker serves too


def test_kill9_router_worker_is_respawned_and_requests_go_on(procs: ProcessManager, site: Site) -> None:
    proc, port = start_router_and_app(procs, site)
    victim = pid_of(proc.pid, "uwsgirouter fastrouter 1")
    threads = 3
    with Hammer(("127.0.0.1", port), threads=threads) as hammer:
        wait_until(lambda: hammer.count() >= 20, 5, what="requests through the router")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        replacement = wait_until(
            lambda: (
                pid_of(proc.pid, "uwsgirouter fastrouter 1") not in (0, victim)
                and pid_of(proc.pid, "uwsgirouter fastrouter 1")
            ),
            RESPAWN_DEADLINE_S,
            what="a new fastrouter 1",
        )
        before = hammer.count()
        wait_until(lambda: hammer.count() >= before + 50, 5, what="requests through the new router")
    failures = hammer.failures()
    # at most the request each client had in flight on the killed router; they all ended around the kill (none
    # on the new router: its 50 and more requests all succeeded)
    assert len(failures) <= threads, failures
    assert all(abs(f.at - killed_at) < RESPAWN_DEADLINE_S for f in failures), (killed_at, failures)
    assert f"(pid {victim}) died (" in proc.log()
    assert alive(replacement)
    assert proc.alive()


def test_router_workers_ignore_sighup_sigusr1_sigpipe_and_sigtstp(procs: ProcessManager, site: Site) -> None:
    """docs/signals.md, "To a worker": a router worker sent SIGHUP, SIGUSR1, SIGPIPE or SIGTSTP (by an operator's
    stray kill, a peer gone mid-write, a terminal's Ctrl-Z) stays the same process and routes on; their default
    action would end it (or stop it, for SIGTSTP: uWSGI's gateways ignore it too)."""
    proc, port = start_router_and_app(procs, site)
    router = pid_of(proc.pid, "uwsgirouter fastrouter 1")
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE, signal.SIGTSTP):
        os.kill(router, signum)
        response = uwsgi_request(("127.0.0.1", port), request_vars(path="/hello"))
        assert response.status == 200, (signum, response.raw, proc.log()[-2000:])
        assert alive(router) and pid_of(proc.pid, "uwsgirouter fastrouter 1") == router, signum
    assert "graceful reload" not in proc.log()  # the master was not reloaded: the router took them itself
    # Started in a session of its own, the process group is orphaned: the kernel drops a SIGTSTP whose
    # action is to stop, so only the disposition shows that a terminal's Ctrl-Z would not stop the router.
    found = re.search(r"^SigIgn:\s*([0-9a-f]+)$", Path(f"/proc/{router}/status").read_text(), re.M)
    assert found is not None and int(found[1], 16) >> (signal.SIGTSTP - 1) & 1


# -- 3. SIGHUP under load ------------------------------------------------------------------------------


@pytest.mark.skipif(NGINX is None or WRK is None, reason="nginx or wrk is not installed")
def test_sighup_under_wrk_load_loses_nothing(procs: ProcessManager, site: Site) -> None:
    proc, port = start_router_and_app(procs, site, "--disable-logging")
    http_port = free_port()
    procs.nginx(f"127.0.0.1:{port}", http_port)
    assert http_get(http_port).status == 200

    generations = [set(workers(proc.pid))]
    started = time.monotonic()
    assert WRK is not None  # the skipif above
    wrk = procs.start([WRK, "-t2", "-c16", "-d20s", f"http://127.0.0.1:{http_port}/"], "wrk")
    for at, generation in ((5.0, 1), (12.0, 2)):
        time.sleep(max(0.0, started + at - time.monotonic()))  # the load's schedule, not a readiness wait
        proc.signal(signal.SIGHUP)
        new = new_generation(proc.pid, generations[-1], 3, 6)
        assert sorted(new.values()) == ["uwsgirouter fastrouter 1", "uwsgirouter worker 1", "uwsgirouter worker 2"]
        generations.append(set(new))
        assert f"graceful reload: generation {generation} serving" in proc.log()
    assert wrk.wait(30) == 0
    output = wrk.log()
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output
    total = re.search(r"(\d+) requests in", output)
    assert total and int(total.group(1)) > 1000, output
    assert proc.alive()
    assert "Traceback" not in proc.log()


# -- 4. SIGTERM: graceful stop ---------------------------------------------------------------------------


def test_sigterm_finishes_the_request_in_flight_then_exits_clean(
    procs: ProcessManager, site: Site, unix_dir: Path, tmp_path: Path
) -> None:
    app_sock, router_sock, pidfile = str(unix_dir / "app.sock"), str(unix_dir / "router.sock"), tmp_path / "m.pid"
    proc = procs.router(
        "--fastrouter",
        router_sock,
        "--fastrouter-use-socket",
        "--socket",
        app_sock,
        "--processes",
        "2",
        "--wsgi-file",
        str(site.app),
        "--pidfile",
        str(pidfile),
        wait_for=router_sock,
    )
    wait_for_workers(proc.pid, {"uwsgirouter fastrouter 1", "uwsgirouter worker 1", "uwsgirouter worker 2"})
    warm_up(router_sock, 2)
    assert pidfile.read_text().strip() == str(proc.pid)
    slow = Background(router_sock, "/sleep/3")
    wait_until(site.sleepers, 5, what="the slow request to start")

    proc.signal(signal.SIGTERM)
    wait_until(lambda: "new requests get 503" in proc.log(), 2, what="the router to start draining")
    draining = uwsgi_request(router_sock)
    assert draining.status == 503, draining.raw
    assert b"127.0.0.1" not in draining.raw and unix_dir.name.encode() not in draining.raw  # no internal address

    response = slow.join(6)
    assert response is not None and response.status == 200, (slow.error, proc.log())
    assert response.body.startswith(b"slept pid=")
    assert proc.wait(5) == 0, proc.log()
    assert not pidfile.exists()
    assert not os.path.exists(app_sock)
    assert not os.path.exists(router_sock)
    assert not group_members(proc.pid)


def test_sigint_stops_at_once_even_with_a_request_in_flight(procs: ProcessManager, site: Site, tmp_path: Path) -> None:
    pidfile = tmp_path / "m.pid"
    proc, port = start_router_and_app(procs, site, "--pidfile", str(pidfile))
    slow = Background(("127.0.0.1", port), "/sleep/3")
    wait_until(site.sleepers, 5, what="the slow request to start")
    proc.signal(signal.SIGINT)
    sent = time.monotonic()
    assert proc.wait(5) == 0, proc.log()
    assert time.monotonic() - sent < 3.0, proc.log()  # before the 3 s request could have ended
    response = slow.join(2)
    assert response is None or response.status != 200  # cut, as asked; it does not hang
    assert not pidfile.exists()
    assert not group_members(proc.pid)


def test_sighup_with_an_app_that_no_longer_imports_keeps_the_old_workers(procs: ProcessManager, site: Site) -> None:
    proc, port = start_router_and_app(procs, site)
    before = workers(proc.pid)
    site.app.write_text("import no_such_module_for_uwsgirouter_tests\n")
    proc.signal(signal.SIGHUP)
    wait_until(lambda: "reload aborted" in proc.log(), 5, what="the reload to be abandoned")
    assert wait_for_workers(proc.pid, set(before.values())) == before, proc.log()  # the same processes serve on
    for _ in range(10):
        response = uwsgi_request(("127.0.0.1", port))
        assert response.status == 200, proc.log()
    assert "no_such_module_for_uwsgirouter_tests" in proc.log()
    assert proc.alive()


# -- 5. kill -9 of the master --------------------------------------------------------------------------


def test_no_worker_outlives_a_killed_master(procs: ProcessManager, site: Site) -> None:
    proc, _ = start_router_and_app(procs, site)
    pids = list(workers(proc.pid))
    assert len(pids) == 3
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: not any(alive(pid) for pid in pids), 2.0, what="every worker to exit")
    assert time.monotonic() - killed_at < 2.0


def test_worker_still_loading_its_app_does_not_outlive_a_killed_master(procs: ProcessManager, tmp_path: Path) -> None:
    slow_import = tmp_path / "slow_import.py"
    slow_import.write_text(
        "import time\n"
        "time.sleep(1.0)  # a big app takes a while to import\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n"
    )
    proc = procs.router("--socket", "127.0.0.1:0", "--processes", "2", "--wsgi-file", str(slow_import))
    port = bound_port(proc)
    pids = list(wait_for_workers(proc.pid, {"uwsgirouter worker 1", "uwsgirouter worker 2"}))
    os.kill(proc.pid, signal.SIGKILL)  # while the workers are still importing the app
    killed_at = time.monotonic()
    try:
        wait_until(lambda: not any(alive(pid) for pid in pids), 2.0, what="every worker to exit")
    except AssertionError:
        orphans = [(pid, psutil.Process(pid).ppid()) for pid in pids if alive(pid)]
        still = uwsgi_request(("127.0.0.1", port), timeout=2).status if can_connect(("127.0.0.1", port)) else None
        raise AssertionError(f"orphaned workers (pid, ppid): {orphans}; the app port still answers: {still}") from None
    assert time.monotonic() - killed_at < 2.0


# -- 6. process titles -------------------------------------------------------------------------------


def test_process_titles(procs: ProcessManager, site: Site) -> None:
    proc, _ = start_router_and_app(procs, site)
    assert title(psutil.Process(proc.pid)) == "uwsgirouter master"
    assert sorted(workers(proc.pid).values()) == [
        "uwsgirouter fastrouter 1",
        "uwsgirouter worker 1",
        "uwsgirouter worker 2",
    ]


@pytest.mark.parametrize(
    ("option", "prefix"),
    [
        ("--procname-prefix", "x-"),
        ("--procname-prefix-spaced", "x"),
    ],
    ids=["prefix", "spaced"],
)
def test_procname_prefix(procs: ProcessManager, site: Site, option: str, prefix: str) -> None:
    shown = prefix if option == "--procname-prefix" else prefix + " "
    port = free_port()
    proc = procs.router(
        "--fastrouter",
        f"127.0.0.1:{port}",
        "--fastrouter-use-socket",
        "--socket",
        "127.0.0.1:0",
        "--processes",
        "1",
        "--wsgi-file",
        str(site.app),
        option,
        prefix,
        wait_for=("127.0.0.1", port),
    )
    wait_until(lambda: title(psutil.Process(proc.pid)) == f"{shown}uwsgirouter master", 5, what="the master's title")
    wait_for_workers(proc.pid, {f"{shown}uwsgirouter fastrouter 1", f"{shown}uwsgirouter worker 1"}, 3)


# -- 7. operations -------------------------------------------------------------------------------------


def test_daemonize_reload_and_stop_by_pidfile(procs: ProcessManager, site: Site, tmp_path: Path) -> None:
    logfile, pidfile, port = tmp_path / "daemon.log", tmp_path / "daemon.pid", free_port()
    command = procs.start(
        [
            *ROUTER,
            "--daemonize",
            str(logfile),
            "--pidfile",
            str(pidfile),
            "--fastrouter",
            f"127.0.0.1:{port}",
            "--fastrouter-use-socket",
            "--socket",
            "127.0.0.1:0",
            "--processes",
            "2",
            "--wsgi-file",
            str(site.app),
        ],
        "daemonize",
    )
    launched = time.monotonic()
    try:
        assert command.wait(5) == 0, command.log()
        assert time.monotonic() - launched < 2.0  # it returns at once, the daemon goes on
        master = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, what="the pidfile"))
        wait_until(lambda: can_connect(("127.0.0.1", port)), 10, what="the daemon's router")
        assert alive(master)
        wait_until(lambda: title(psutil.Process(master)) == "uwsgirouter master", 5, what="the daemon's title")
        first = wait_for_workers(master, {"uwsgirouter fastrouter 1", "uwsgirouter worker 1", "uwsgirouter worker 2"})
        assert uwsgi_request(("127.0.0.1", port)).status == 200
        wait_until(lambda: "GET /" in logfile.read_text(), 5, what="the request line in the daemon's log")
        assert "fastrouter bound on" in logfile.read_text()
        assert command.log() == ""  # nothing went to the terminal

        reload = procs.start([*ROUTER, "--reload", str(pidfile)], "reload")
        assert reload.wait(10) == 0, reload.log()
        new_generation(master, set(first), 3, 10)
        assert uwsgi_request(("127.0.0.1", port)).status == 200
        assert alive(master)

        stop = procs.start([*ROUTER, "--stop", str(pidfile)], "stop")
        assert stop.wait(10) == 0, stop.log()
        wait_until(lambda: not alive(master), 5, what="the daemon to stop")
        assert not pidfile.exists()
        assert not can_connect(("127.0.0.1", port))
    finally:
        kill_logging_to(logfile)


def test_chdir_with_a_relative_wsgi_file(procs: ProcessManager, tmp_path: Path) -> None:
    where = write_site(tmp_path / "elsewhere")
    proc = procs.router(
        "--chdir", str(where.app.parent), "--socket", "127.0.0.1:0", "--processes", "1", "--wsgi-file", "app.py"
    )
    port = bound_port(proc)
    wait_until(lambda: can_connect(("127.0.0.1", port)), 5)
    response = uwsgi_request(("127.0.0.1", port), request_vars(path="/cwd"))
    assert response.status == 200, proc.log()
    assert response.body == str(where.app.parent).encode()


def test_app_that_fails_to_import_stops_the_master(procs: ProcessManager, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_for_uwsgirouter_tests\n")
    port = free_port()
    proc = procs.router(
        "--fastrouter",
        f"127.0.0.1:{port}",
        "--fastrouter-use-socket",
        "--socket",
        "127.0.0.1:0",
        "--processes",
        "2",
        "--wsgi-file",
        str(broken),
    )
    status = proc.wait(5)
    log = proc.log()
    assert status != 0, log
    lines = log.strip().splitlines()
    assert lines[-1].startswith("uwsgirouter: ") and "could not start" in lines[-1], log
    assert "no_such_module_for_uwsgirouter_tests" in log  # the reason is shown
    assert sum("could not start" in line for line in lines) == 1, log
    assert "respawning" not in log, log
    assert not group_members(proc.pid)  # no worker left behind


def test_logto_file(procs: ProcessManager, site: Site, tmp_path: Path) -> None:
    logfile, port = tmp_path / "logto.log", free_port()
    proc = procs.router(
        "--fastrouter",
        f"127.0.0.1:{port}",
        "--fastrouter-use-socket",
        "--socket",
        "127.0.0.1:0",
        "--processes",
        "1",
        "--wsgi-file",
        str(site.app),
        "--logto",
        str(logfile),
        wait_for=("127.0.0.1", port),
    )
    wait_for_workers(proc.pid, {"uwsgirouter fastrouter 1", "uwsgirouter worker 1"})
    assert uwsgi_request(("127.0.0.1", port)).status == 200
    wait_until(lambda: "GET /" in logfile.read_text(), 5, what="the request line in the --logto file")
    text = logfile.read_text()
    assert "uwsgi socket 0 bound to" in text
    assert f"fastrouter bound on 127.0.0.1:{port}" in text
    assert proc.log() == ""


# -- 8. a fastrouter-only instance -------------------------------------------------------------------


def test_fastrouter_only_instance_has_no_app_workers(procs: ProcessManager, site: Site) -> None:
    port = free_port()
    proc = procs.router(
        "--fastrouter",
        f"127.0.0.1:{port}",
        "--processes",
        "2",
        "--wsgi-file",
        str(site.app),
        wait_for=("127.0.0.1", port),
    )
    wait_for_workers(proc.pid, {"uwsgirouter fastrouter 1"})
    assert uwsgi_request(("127.0.0.1", port)).status == 502  # nowhere to route, and no app here
    assert sorted(workers(proc.pid).values()) == ["uwsgirouter fastrouter 1"]
    assert sorted(group_members(proc.pid)) == sorted([proc.pid, *workers(proc.pid)])  # nothing else runs
    assert "uwsgi socket" not in proc.log()  # no app socket was bound
    assert "worker 1" not in proc.log()


def test_an_instance_without_an_app_answers_500(procs: ProcessManager) -> None:
    """docs/differences.md, "An instance with no app": as uWSGI, the instance starts and its workers answer
    500 (rather than refusing to start or leaving the client without an answer)."""
    port = free_port()
    proc = procs.router("--master", "--socket", f"127.0.0.1:{port}", "--processes", "1", wait_for=("127.0.0.1", port))
    for _ in range(2):
        response = uwsgi_request(("127.0.0.1", port), request_vars(path="/"))
        assert response.status == 500, (response.raw, proc.log()[-2000:])
    assert proc.alive()
    assert sorted(workers(proc.pid).values()) == ["uwsgirouter worker 1"]
    assert "--- no python application found, check your startup logs for errors ---" in proc.log()  # uWSGI's line


def test_harakiri_kills_a_worker_stuck_on_one_request(procs: ProcessManager, site: Site) -> None:
    """--harakiri 1: a request running longer is cut (the client gets a 502 from the router), the worker
    is killed and replaced, and the next requests are served."""
    proc, port = start_router_and_app(procs, site, "--harakiri", "1")
    before = set(workers(proc.pid))
    started = time.monotonic()
    response = http_via_router(port, "/sleep/10")
    assert response.status == 502, response.raw[:200]
    assert time.monotonic() - started < 6, "harakiri must cut the request long before the app finishes"
    wait_until(lambda: "HARAKIRI on worker" in proc.log(), 5, what="the harakiri log line")
    wait_until(lambda: len(set(workers(proc.pid)) - before) >= 1, 5, what="a new worker")
    for _ in range(5):
        assert http_via_router(port, "/").status == 200


def http_via_router(port: int, path: str) -> Response:
    return uwsgi_request(("127.0.0.1", port), request_vars(path=path), timeout=15)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_uid_gid_drop_privileges_after_binding(procs: ProcessManager, site: Site, tmp_path: Path) -> None:
    """--uid/--gid: the master binds first (a port below 1024 would work), then every process runs as the
    user; --fastrouter-uid applies to the router process alone."""
    nobody = pwd.getpwnam("nobody")
    public = Path(tempfile.mkdtemp(prefix="ur-uid-"))  # pytest's own tmp dirs are private to root
    public.chmod(0o755)
    app = public / "app.py"
    app.write_text("def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n")
    app.chmod(0o644)
    port = free_port()
    proc = procs.router(
        "--fastrouter",
        f"127.0.0.1:{port}",
        "--fastrouter-use-socket",
        "--socket",
        "127.0.0.1:0",
        "--wsgi-file",
        str(app),
        "--uid",
        str(nobody.pw_uid),
        "--gid",
        str(nobody.pw_gid),
        wait_for=("127.0.0.1", port),
    )
    wait_until(lambda: len(workers(proc.pid)) == 2, 10, what="the router and the app worker")
    try:
        for process in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children()]:
            assert process.uids().effective == nobody.pw_uid, title(process)
            assert process.gids().effective == nobody.pw_gid, title(process)
        assert uwsgi_request(("127.0.0.1", port), request_vars()).body == b"ok"
    finally:
        shutil.rmtree(public, ignore_errors=True)


# -- SIGHUP re-reads the configuration ----------------------------------------------------------------------

RELOAD_INI = """\
[uwsgi]
master = true
fastrouter = 127.0.0.1:{port}
fastrouter-to = {node}
fastrouter-timeout = {timeout}
"""


def test_sighup_rereads_the_ini_file_and_ignores_a_broken_edit(procs: ProcessManager, tmp_path: Path) -> None:
    """An INI file edited to send requests to another node is picked up by SIGHUP; an edit that breaks it is
    logged ("reload aborted ...") and ignored: the same workers go on serving with the last good configuration."""
    node_ports = [free_port(), free_port()]
    for name, node_port in zip(("old", "new"), node_ports, strict=True):
        procs.uwsgi_backend(f"127.0.0.1:{node_port}", name, wait_for=("127.0.0.1", node_port))
    port = free_port()
    address = ("127.0.0.1", port)
    ini = tmp_path / "site.ini"
    ini.write_text(RELOAD_INI.format(port=port, node=f"127.0.0.1:{node_ports[0]}", timeout=30))
    proc = procs.router(str(ini), wait_for=address)

    def served_by() -> bytes:
        response = uwsgi_request(address, request_vars(host="site"))
        assert response.status == 200, response.raw[:200]
        return response.body.split(b" ")[0]

    assert served_by() == b"instance=old"  # served: the master's signal handlers are installed
    first = wait_for_workers(proc.pid, {"uwsgirouter fastrouter 1"})

    ini.write_text(RELOAD_INI.format(port=port, node=f"127.0.0.1:{node_ports[1]}", timeout=30))
    proc.signal(signal.SIGHUP)
    wait_until(lambda: served_by() == b"instance=new", 15, what="requests to go to the node of the edited file")
    second = new_generation(proc.pid, set(first), 1, 15)
    assert [served_by() for _ in range(5)] == [b"instance=new"] * 5

    ini.write_text(RELOAD_INI.format(port=port, node=f"127.0.0.1:{node_ports[0]}", timeout="soon"))
    proc.signal(signal.SIGHUP)
    wait_until(lambda: "reload aborted" in proc.log(), 10, what="the broken edit to be refused")
    line = next(line for line in proc.log().splitlines() if "reload aborted" in line)
    assert "fastrouter-timeout" in line and "soon" in line, line
    assert [served_by() for _ in range(5)] == [b"instance=new"] * 5, "the broken file was used"
    assert workers(proc.pid) == second, "the workers were replaced although the reload was aborted"
    assert proc.alive(), proc.log()
