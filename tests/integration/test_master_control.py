"""Controlling a running master as uWSGI's operators do: the master fifo (``echo r > fifo``), touch files,
--exit-on-reload, --vacuum, and the owner, mode and umask of what the master creates."""

from __future__ import annotations

import errno
import os
import pwd
import signal
import socket
import stat
import time
from pathlib import Path

import psutil
import pytest

from tests.support import (
    Proc,
    ProcessManager,
    Response,
    connect,
    free_port,
    read_all,
    request_vars,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

PID_APP = """
import os
import time


def application(environ, start_response):
    if environ["PATH_INFO"].startswith("/sleep/"):
        open(os.path.join(os.path.dirname(__file__), "sleeping"), "w").close()
        time.sleep(float(environ["PATH_INFO"].split("/")[2]))
    body = b"pid=%d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _try_write(fifo: Path, text: str) -> bool:
    """One writer: open without blocking (no reader yet, or the master reopening it: try again)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return True


def send(fifo: Path, text: str) -> None:
    """``echo TEXT > fifo``, as an operator would."""
    wait_until(lambda: _try_write(fifo, text + "\n"), 10, what=f"the master reading {fifo}")


def start_instance(procs: ProcessManager, tmp_path: Path, *args: str) -> tuple[Proc, int]:
    """An app instance (one worker answering with its pid), serving once this returns."""
    app = tmp_path / "pid_app.py"
    app.write_text(PID_APP)
    port = free_port()
    proc = procs.router(
        "--master", "--socket", f"127.0.0.1:{port}", "--wsgi-file", str(app), "--processes", "1", *args,
        wait_for=("127.0.0.1", port),
    )  # fmt: skip
    worker_pid(port)  # serving: the master runs its loop
    return proc, port


def worker_pid(port: int) -> int:
    response = uwsgi_request(("127.0.0.1", port), request_vars())
    assert response.status == 200, response.raw
    return int(response.body.decode().removeprefix("pid="))


def new_worker(port: int, old: int) -> int:
    return int(wait_until(lambda: (pid := worker_pid(port)) != old and pid, 20, what="a new worker"))


def reloaded(proc: Proc, generation: int) -> None:
    """The reload is over (a reload asked for during another one is ignored, as in uWSGI)."""
    wait_until(lambda: f"generation {generation} serving" in proc.log(), 20, what=f"generation {generation}")


def master_cpu_seconds(proc: Proc, window: float) -> float:
    """CPU time the master uses over ``window`` seconds of wall time (a measurement, not a wait)."""
    master = psutil.Process(proc.pid)
    before = sum(master.cpu_times()[:2])
    time.sleep(window)
    return sum(master.cpu_times()[:2]) - before


def test_fifo_reloads_again_and_again_then_stops_with_status_0(procs: ProcessManager, tmp_path: Path) -> None:
    fifo = tmp_path / "master.fifo"
    proc, port = start_instance(procs, tmp_path, "--master-fifo", str(fifo))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o600
    first = worker_pid(port)
    send(fifo, "r")
    second = new_worker(port, first)
    reloaded(proc, 1)
    send(fifo, "r")  # the fifo was opened again after the first writer left
    new_worker(port, second)
    assert proc.log().count("master fifo: 'r' (graceful reload)") == 2
    # the writers are gone: the master waits again instead of spinning on the fifo's end of file
    assert master_cpu_seconds(proc, window=2.0) < 0.2
    send(fifo, "q")
    assert proc.wait(20) == 0
    assert "[master] graceful stop: waiting" in proc.log()


def test_fifo_Q_stops_at_once_and_w_reloads_only_the_workers(procs: ProcessManager, tmp_path: Path) -> None:
    fifo = tmp_path / "master.fifo"
    proc, port = start_instance(procs, tmp_path, "--master-fifo", str(fifo))
    send(fifo, "w")
    new_worker(port, worker_pid(port))
    assert "graceful reload of the workers: starting generation 1" in proc.log()
    send(fifo, "Q")
    assert proc.wait(20) == 0
    assert "[master] immediate stop" in proc.log()


@pytest.mark.parametrize("command", ["R", "W"])
def test_brutal_reloads_cut_the_requests_in_flight(procs: ProcessManager, tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "master.fifo"
    proc, port = start_instance(procs, tmp_path, "--master-fifo", str(fifo))
    with connect(("127.0.0.1", port)) as slow:
        slow.sendall(uwsgi_packet(request_vars(path="/sleep/4")))
        wait_until((tmp_path / "sleeping").exists, 10, what="the slow request in a worker")
        send(fifo, command)
        reloaded(proc, 1)
        assert read_all(slow) == b""  # the old worker left at once (r and w would let it answer)
    assert worker_pid(port)


def test_digits_switch_the_fifo_and_unknown_commands_are_logged_once(procs: ProcessManager, tmp_path: Path) -> None:
    first, second = tmp_path / "first.fifo", tmp_path / "second.fifo"
    proc, port = start_instance(procs, tmp_path, "--master-fifo", str(first), "--master-fifo", str(second))
    assert not second.exists()  # only the active fifo exists, as in uWSGI
    send(first, "xxxx7")
    wait_until(lambda: "there is no fifo 7" in proc.log(), 10, what="the digit out of range")
    assert proc.log().count("unknown command 'x'") == 1
    send(first, "1")
    wait_until(second.exists, 10, what="the second fifo")
    old = worker_pid(port)
    send(second, "r")
    new_worker(port, old)
    assert "active master fifo is now" in proc.log()


def test_fifo_l_reopens_the_log_and_L_rotates_it(procs: ProcessManager, tmp_path: Path) -> None:
    fifo, log_file = tmp_path / "master.fifo", tmp_path / "instance.log"
    start_instance(procs, tmp_path, "--master-fifo", str(fifo), "--logto", str(log_file))
    moved = tmp_path / "instance.log.old"
    log_file.rename(moved)
    send(fifo, "l")
    wait_until(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), 10, what="a new log")
    assert "log files reopened" not in moved.read_text()
    send(fifo, "L")
    wait_until(lambda: "log rotated" in log_file.read_text(), 10, what="the rotation")
    rotated = [p for p in tmp_path.glob("instance.log.*") if p != moved]
    assert len(rotated) == 1 and "rotating the log" in rotated[0].read_text()


def test_fifo_P_writes_the_pidfile_again(procs: ProcessManager, tmp_path: Path) -> None:
    fifo, pidfile = tmp_path / "master.fifo", tmp_path / "instance.pid"
    proc, _ = start_instance(procs, tmp_path, "--master-fifo", str(fifo), "--pidfile", str(pidfile))
    pidfile.unlink()
    send(fifo, "P")
    wait_until(pidfile.exists, 10, what="the pidfile")
    assert pidfile.read_text().strip() == str(proc.pid)


def _received(sock: socket.socket, key: bytes, seconds: float) -> bool:
    """Whether an announce for ``key`` arrives within ``seconds`` (the socket's timeout)."""
    sock.settimeout(seconds)
    try:
        while True:
            if key in sock.recv(4096):
                return True
    except TimeoutError:
        return False


def test_fifo_S_blocks_and_unblocks_the_announces(procs: ProcessManager, tmp_path: Path) -> None:
    fifo = tmp_path / "master.fifo"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{server.getsockname()[1]}:control.key"
        proc, _ = start_instance(
            procs, tmp_path, "--master-fifo", str(fifo), "--subscribe-to", target, "--subscribe-freq", "1",
            "--start-unsubscribed",
        )  # fmt: skip
        # started unsubscribed: nothing for longer than the first two announces would take
        assert not _received(server, b"control.key", 2.5)
        send(fifo, "S")
        assert _received(server, b"control.key", 5.0)
        assert "subscriptions re-enabled" in proc.log()
        send(fifo, "S")
        wait_until(lambda: "subscriptions blocked" in proc.log(), 10, what="the block")
        _received(server, b"", 0.2)  # drain what was sent before the block
        assert not _received(server, b"control.key", 2.5)
        # blocked, a stop sends no unsubscribe either (uWSGI's rule)
        proc.signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not _received(server, b"control.key", 0.5)


def app_workers(proc: Proc) -> list[int]:
    """The pids of the master's children (an app instance has no other)."""
    return [child.pid for child in psutil.Process(proc.pid).children()]


def no_child_for(proc: Proc, seconds: float) -> bool:
    """Whether the master has no child at every look over ``seconds`` (a measurement, not a wait)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if app_workers(proc):
            return False
        time.sleep(0.05)
    return True


def test_fifo_C_stops_the_app_workers_until_a_connection_comes(procs: ProcessManager, tmp_path: Path) -> None:
    fifo = tmp_path / "master.fifo"
    proc, port = start_instance(procs, tmp_path, "--master-fifo", str(fifo))
    first = worker_pid(port)
    with connect(("127.0.0.1", port)) as slow:
        slow.sendall(uwsgi_packet(request_vars(path="/sleep/1")))
        wait_until((tmp_path / "sleeping").exists, 10, what="the slow request in the worker")
        send(fifo, "C")
        assert Response.parse(read_all(slow)).status == 200, "the request in hand finishes (uWSGI cuts it)"
    wait_until(lambda: not app_workers(proc), 10, what="the app worker to leave")
    assert no_child_for(proc, 1.0), "no worker is spawned again before a connection comes"
    assert "going cheap: 1 app worker(s) retiring" in proc.log()
    second = worker_pid(port)  # this connection wakes the master and is served by the new worker
    assert second != first and app_workers(proc) == [second]
    assert "leaving cheap mode: a connection is waiting" in proc.log()


def test_cheap_starts_without_app_workers(procs: ProcessManager, tmp_path: Path) -> None:
    app = tmp_path / "pid_app.py"
    app.write_text(PID_APP)
    port = free_port()
    proc = procs.router("--master", "--socket", f"127.0.0.1:{port}", "--wsgi-file", str(app), "--cheap")
    wait_until(lambda: "cheap mode enabled" in proc.log(), 15, what="the master in cheap mode")
    assert no_child_for(proc, 1.0)
    served_by = worker_pid(port)  # the first connection brings the worker
    assert app_workers(proc) == [served_by]


def _unsubscribed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether an unsubscription (modifier2 1) arrives within ``seconds``; announces before it are skipped."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(4096)[3] == 1:
                return True
        except TimeoutError:
            return False
    return False


def _answered_within(sock: socket.socket, seconds: float) -> bytes | None:
    sock.settimeout(seconds)
    try:
        return read_all(sock)
    except TimeoutError:
        return None


@pytest.mark.parametrize("threads", ["1", "3"])
def test_fifo_p_pauses_the_app_workers_and_withdraws_the_subscriptions(
    procs: ProcessManager, tmp_path: Path, threads: str
) -> None:
    fifo = tmp_path / "master.fifo"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{server.getsockname()[1]}:paused.key"
        proc, port = start_instance(
            procs, tmp_path, "--master-fifo", str(fifo), "--subscribe-to", target, "--subscribe-freq", "1",
            "--threads", threads,
        )  # fmt: skip
        assert _received(server, b"paused.key", 5.0)
        send(fifo, "p")
        wait_until(lambda: "*** worker 1 suspended ***" in proc.log(), 10, what="the worker paused")
        assert _unsubscribed_within(server, 5.0)
        with connect(("127.0.0.1", port)) as client:
            client.sendall(uwsgi_packet(request_vars()))
            assert _answered_within(client, 1.5) is None, "a paused worker accepts nothing"
            assert not _received(server, b"paused.key", 1.0), "no announce while paused"
            send(fifo, "p")
            answer = _answered_within(client, 10.0)  # the waiting connection is served once resumed
        assert answer is not None and Response.parse(answer).status == 200
        assert _received(server, b"paused.key", 5.0)
        assert "resuming the app workers" in proc.log()


def test_sigtstp_to_the_master_pauses_and_resumes_like_p(procs: ProcessManager, tmp_path: Path) -> None:
    proc, port = start_instance(procs, tmp_path)
    proc.signal(signal.SIGTSTP)
    wait_until(lambda: "*** worker 1 suspended ***" in proc.log(), 10, what="the worker paused")
    with connect(("127.0.0.1", port)) as client:
        client.sendall(uwsgi_packet(request_vars()))
        assert _answered_within(client, 1.5) is None
        proc.signal(signal.SIGTSTP)
        answer = _answered_within(client, 10.0)
    assert answer is not None and Response.parse(answer).status == 200
    assert proc.alive() and psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED


def test_touch_reload_and_touch_logreopen(procs: ProcessManager, tmp_path: Path) -> None:
    trigger, reopen, log_file = tmp_path / "reload.trigger", tmp_path / "reopen.trigger", tmp_path / "i.log"
    reopen.touch()
    proc, port = start_instance(
        procs, tmp_path, "--touch-reload", str(trigger), "--touch-logreopen", str(reopen), "--logto", str(log_file)
    )
    assert "events will be triggered as soon as the file is created" in log_file.read_text()  # a missing file is fine
    first = worker_pid(port)
    trigger.touch()  # appears
    second = new_worker(port, first)
    assert f"{trigger} touched (--touch-reload)" in log_file.read_text()
    wait_until(lambda: "generation 1 serving" in log_file.read_text(), 20, what="the first reload to end")
    os.utime(trigger, ns=(os.stat(trigger).st_mtime_ns + 10**9,) * 2)  # touched again
    new_worker(port, second)
    log_file.rename(tmp_path / "i.log.1")
    os.utime(reopen, ns=(os.stat(reopen).st_mtime_ns + 10**9,) * 2)
    wait_until(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), 10, what="a new log")
    assert proc.alive()


def test_exit_on_reload_stops_on_sighup(procs: ProcessManager, tmp_path: Path) -> None:
    proc, _ = start_instance(procs, tmp_path, "--exit-on-reload")
    proc.signal(signal.SIGHUP)
    assert proc.wait(20) == 0
    assert "exit-on-reload: stopping instead of reloading" in proc.log()


@pytest.mark.parametrize("vacuum", [True, False])
def test_vacuum_removes_the_fifo_it_created(procs: ProcessManager, tmp_path: Path, vacuum: bool) -> None:
    fifo, pidfile = tmp_path / "master.fifo", tmp_path / "instance.pid"
    proc, _ = start_instance(
        procs, tmp_path, "--master-fifo", str(fifo), "--pidfile", str(pidfile), *(["--vacuum"] if vacuum else [])
    )
    send(fifo, "q")
    assert proc.wait(20) == 0
    assert fifo.exists() is not vacuum  # uWSGI leaves it; --vacuum removes it here
    assert not pidfile.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a socket to another user needs root")
def test_chown_and_chmod_apply_to_every_unix_socket(procs: ProcessManager, unix_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    app, router, subscription = unix_dir / "app.sock", unix_dir / "router.sock", unix_dir / "sub.sock"
    stats, master_stats = unix_dir / "stats.sock", unix_dir / "master-stats.sock"
    (unix_dir / "app.py").write_text(PID_APP)
    proc = procs.router(
        "--master", "--socket", str(app), "--wsgi-file", str(unix_dir / "app.py"), "--fastrouter", str(router),
        "--fastrouter-subscription-server", str(subscription), "--fastrouter-stats", str(stats),
        "--stats", str(master_stats),
        "--chown-socket", f"nobody:{nobody.pw_gid}", "--chmod-socket=620",
        wait_for=str(router),
    )  # fmt: skip
    for path in (app, router, subscription, stats, master_stats):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o620), path
    assert proc.alive()


def test_umask_applies_to_what_the_master_creates(procs: ProcessManager, unix_dir: Path) -> None:
    app, log_file = unix_dir / "app.sock", unix_dir / "instance.log"
    (unix_dir / "app.py").write_text(PID_APP)
    procs.router(
        "--master", "--socket", str(app), "--wsgi-file", str(unix_dir / "app.py"), "--umask", "027",
        "--logto", str(log_file), wait_for=str(app),
    )  # fmt: skip
    assert stat.S_IMODE(os.stat(app).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(log_file).st_mode) == 0o640
