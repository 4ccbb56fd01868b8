"""Log files as an operator sees them: after ``mv router.log router.log.1`` a SIGHUP (``--reload``) makes the
master write a new ``router.log``, and its new workers too; rotation by size (``--log-maxsize``,
``--log-backupname``) that every process follows; the date prefix (``--logdate``); ``--logto2`` and
``--logfile-chown``; which request lines app workers write (``--disable-logging``, ``--log-4xx``, ...)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import (
    ROUTER,
    ProcessManager,
    can_connect,
    connect,
    free_port,
    read_all,
    request_vars,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_sighup_reopens_the_log_file_after_rotation(procs: ProcessManager, tmp_path: Path) -> None:
    port = free_port()
    log_file = tmp_path / "router.log"
    router = procs.router(
        "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", "127.0.0.1:9", "--logto", str(log_file),
        wait_for=("127.0.0.1", port),
    )  # fmt: skip
    # serving (the master's signal handlers are installed): a request to the refusing node is answered
    assert uwsgi_request(("127.0.0.1", port), request_vars(host="before.rotation")).status == 502
    wait_until(lambda: "before.rotation" in log_file.read_text(), 10, what="the first log lines")
    rotated = tmp_path / "router.log.1"
    log_file.rename(rotated)
    router.signal(signal.SIGHUP)
    wait_until(lambda: log_file.exists() and "graceful reload" in log_file.read_text(), 10, what="a new log file")
    # the old router worker (which keeps the old file until it exits) is gone: only the new one serves
    wait_until(lambda: "exited" in log_file.read_text(), 15, what="the old router worker to leave")
    # the new router worker logs there too (a request for a node that refuses: one line)
    assert uwsgi_request(("127.0.0.1", port), request_vars(host="after.rotation")).status == 502
    wait_until(lambda: "after.rotation" in log_file.read_text(), 10, what="the new worker's line")
    assert "after.rotation" not in rotated.read_text()


# -- the logging options real configurations use --------------------------------------------------------

APP = """
import time

def application(environ, start_response):
    first = environ["PATH_INFO"].strip("/").split("/")[0] or "200"
    if first == "slow":
        time.sleep(0.3)
        first = "200"
    start_response(first + " X", [("Content-Type", "text/plain")])
    return [b"x"]
"""


def write_app(directory: Path) -> Path:
    app = directory / "app.py"
    app.write_text(APP)
    return app


def garbage_to(port: int) -> None:
    """A packet whose first var claims more bytes than the packet holds: the router logs a line for it."""
    with connect(("127.0.0.1", port)) as sock:
        sock.sendall(b"\x00\x08\x00\x00\xff\xff\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_WR)
        read_all(sock)


def instance(procs: ProcessManager, tmp_path: Path, *args: str) -> int:
    """A router in front of one app worker (both children of one master); returns the router's port."""
    port = free_port()
    procs.router(
        "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-use-socket", "--socket", "127.0.0.1:0",
        "--processes", "1", "--wsgi-file", str(write_app(tmp_path)), *args, wait_for=("127.0.0.1", port),
    )  # fmt: skip
    return port


@pytest.mark.parametrize("backupname", [True, False])
def test_log_maxsize_rotates_and_every_process_follows(procs: ProcessManager, tmp_path: Path, backupname: bool) -> None:
    log_file, backup, maxsize = tmp_path / "site.log", tmp_path / "site.log.old", 3000
    options = ["--log-backupname", str(backup)] if backupname else []
    started = int(time.time())
    port = instance(procs, tmp_path, "--logto", str(log_file), "--log-maxsize", str(maxsize), *options)

    def rotated() -> list[Path]:
        return [backup] if backup.exists() else sorted(tmp_path.glob("site.log.[0-9]*"))

    sent = 0

    def one_more_request() -> list[Path]:
        nonlocal sent
        if not rotated() and sent < 200:  # each request line is about 280 bytes: a dozen pass the size
            sent += 1
            assert uwsgi_request(("127.0.0.1", port), request_vars(path=f"/200/before-{sent}")).status == 200
        return rotated()

    (old,) = wait_until(one_more_request, 20, interval=0.05, what="a rotation")
    if not backupname:
        assert started <= int(old.name.rpartition(".")[2]) <= int(time.time())  # NAME.<unix time>, as uWSGI
    old_text = old.read_text()
    assert old.stat().st_size > maxsize  # renamed once it passed the size, not before
    said = re.search(r"\[master\] logsize: (\d+), triggering rotation to (.*)\.\.\.$", old_text, re.MULTILINE)
    assert said and int(said.group(1)) > maxsize and said.group(2) == str(old), old_text[-500:]
    # every process writes to the new file from its next line on: the app worker, the router, the master
    assert uwsgi_request(("127.0.0.1", port), request_vars(path="/200/after-rotation")).status == 200
    garbage_to(port)
    wait_until(lambda: "invalid request" in log_file.read_text(), 10, what="the router's line in the new file")
    new_text = log_file.read_text()
    assert "GET /200/after-rotation" in new_text and "[worker 1]" in new_text
    assert "[fastrouter 1]" in new_text
    assert "after-rotation" not in old.read_text() and "invalid request" not in old.read_text()
    assert "GET /200/before-1 " in old_text


def test_logdate_prefixes_every_line_with_uwsgi_s_date(procs: ProcessManager, tmp_path: Path) -> None:
    log_file = tmp_path / "site.log"
    port = instance(procs, tmp_path, "--logto", str(log_file), "--logdate")
    assert uwsgi_request(("127.0.0.1", port), request_vars(path="/200/dated")).status == 200
    garbage_to(port)
    wait_until(lambda: "invalid request" in log_file.read_text(), 10, what="the router's line")
    lines = log_file.read_text().splitlines()
    ctime = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} - \[")
    assert all(ctime.match(line) for line in lines), lines
    assert {"[master]", "[worker 1]", "[fastrouter 1]"} <= {line.split(" - ")[1].split("] ")[0] + "]" for line in lines}


def test_logdate_with_a_strftime_format_from_an_ini_file(procs: ProcessManager, tmp_path: Path) -> None:
    log_file, port = tmp_path / "site.log", free_port()
    ini = tmp_path / "site.ini"
    ini.write_text(
        f"[uwsgi]\nfastrouter = 127.0.0.1:{port}\nfastrouter-to = 127.0.0.1:9\nlogto = {log_file}\n"
        "log-date = <%%Y/%%m/%%d %%H:%%M:%%S>\n"
    )
    procs.router(str(ini), wait_for=("127.0.0.1", port))
    assert uwsgi_request(("127.0.0.1", port), request_vars(host="dated.example")).status == 502
    wait_until(lambda: "dated.example" in log_file.read_text(), 10, what="the router's line")
    lines = log_file.read_text().splitlines()
    assert all(re.match(r"^<\d{4}/\d\d/\d\d \d\d:\d\d:\d\d> - \[", line) for line in lines), lines


@pytest.mark.parametrize(
    ("options", "logged"),
    [
        ([], ["200", "404", "500", "slow"]),
        (["--disable-logging", "--log-4xx"], ["404"]),
        (["--disable-logging", "--log-5xx"], ["500"]),
        (["--disable-logging", "--log-4xx", "--log-5xx"], ["404", "500"]),
        (["--disable-logging", "--log-slow", "200"], ["slow"]),
    ],
)
def test_request_lines_by_status(procs: ProcessManager, tmp_path: Path, options: list[str], logged: list[str]) -> None:
    port = free_port()
    proc = procs.router(
        "--socket", f"127.0.0.1:{port}", "--processes", "1", "--wsgi-file", str(write_app(tmp_path)), *options,
        wait_for=("127.0.0.1", port),
    )  # fmt: skip
    for path in ["200", "404", "500", "slow"]:
        uwsgi_request(("127.0.0.1", port), request_vars(path=f"/{path}/req"))
    # one worker serves them in turn: once the last wanted line is there, every earlier one is too
    wait_until(lambda: f"GET /{logged[-1]}/req" in proc.log(), 10, what="the last request line")
    assert [p for p in ["200", "404", "500", "slow"] if f"GET /{p}/req" in proc.log()] == logged


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_logfile_chown_without_gid_keeps_the_group(procs: ProcessManager, tmp_path: Path) -> None:
    """docs/differences.md, "`--logfile-chown` without `--gid`": the file goes to --uid and keeps its group
    (uWSGI gives it to group 0)."""
    nobody, group = pwd.getpwnam("nobody"), 4242  # a group no file here has by chance
    log, port = tmp_path / "router.log", free_port()
    log.touch()
    os.chown(log, 0, group)
    procs.router(
        "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", "127.0.0.1:9", "--logto", str(log),
        "--logfile-chown", "--uid", str(nobody.pw_uid), wait_for=("127.0.0.1", port),
    )  # fmt: skip
    assert uwsgi_request(("127.0.0.1", port), request_vars(host="chown.example")).status == 502
    wait_until(lambda: "chown.example" in log.read_text(), 10, what="the request line")
    assert (log.stat().st_uid, log.stat().st_gid) == (nobody.pw_uid, group)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_logto2_and_logfile_chown_as_the_uid_user(procs: ProcessManager) -> None:
    """--logto is opened as root and given to --uid/--gid by --logfile-chown; --logto2 is opened after the
    privileges are dropped, so the new user creates it (in a directory only that user can write)."""
    nobody = pwd.getpwnam("nobody")
    public = Path(tempfile.mkdtemp(prefix="ur-logs-"))  # pytest's own tmp dirs are private to root
    try:
        public.chmod(0o755)
        private = public / "private"
        private.mkdir(mode=0o700)
        os.chown(private, nobody.pw_uid, nobody.pw_gid)
        first, second, port = public / "first.log", private / "second.log", free_port()
        procs.router(
            "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", "127.0.0.1:9", "--logto", str(first),
            "--logto2", str(second), "--logfile-chown", "--uid", str(nobody.pw_uid), "--gid", str(nobody.pw_gid),
            wait_for=("127.0.0.1", port),
        )  # fmt: skip
        assert uwsgi_request(("127.0.0.1", port), request_vars(host="second.example")).status == 502
        wait_until(lambda: second.exists() and "second.example" in second.read_text(), 10, what="the new log")
        assert (first.stat().st_uid, first.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
        assert (second.stat().st_uid, second.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
        assert f"logging to {second} from now on" in first.read_text()
        assert "second.example" not in first.read_text()
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_a_daemon_logs_to_its_daemonize_file_even_with_logto(procs: ProcessManager, tmp_path: Path) -> None:
    """uWSGI 2.0.31 ignores --logto when --daemonize names a file; so do we."""
    daemon_log, logto, pidfile, port = tmp_path / "d.log", tmp_path / "l.log", tmp_path / "d.pid", free_port()
    command = procs.start(
        [*ROUTER, "--daemonize", str(daemon_log), "--logto", str(logto), "--pidfile", str(pidfile),
         "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", "127.0.0.1:9"],
        "daemonize",
    )  # fmt: skip
    try:
        assert command.wait(10) == 0, command.log()
        wait_until(lambda: can_connect(("127.0.0.1", port)), 10, what="the daemon's router")
        assert uwsgi_request(("127.0.0.1", port), request_vars(host="daemon.example")).status == 502
        wait_until(lambda: "daemon.example" in daemon_log.read_text(), 10, what="the line in the daemonize file")
        assert not logto.exists()
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGINT)
            wait_until(lambda: not pidfile.exists(), 10, what="the daemon to stop")


def test_log_maxsize_without_a_log_file_says_so(procs: ProcessManager) -> None:
    port = free_port()
    proc = procs.router(
        "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", "127.0.0.1:9", "--log-maxsize", "100",
        wait_for=("127.0.0.1", port),
    )  # fmt: skip
    wait_until(lambda: "--log-maxsize: there is no log file to rotate" in proc.log(), 10, what="the warning")


def test_the_fifo_s_rotation_uses_the_backup_name_and_logto2(procs: ProcessManager, tmp_path: Path) -> None:
    """The master fifo's L rotates the file being written (--logto2's here) to --log-backupname, as uWSGI."""
    from tests.integration.test_master_control import send, start_instance

    fifo, first, log_file, backup = tmp_path / "m.fifo", tmp_path / "first.log", tmp_path / "i.log", tmp_path / "i.bak"
    start_instance(
        procs, tmp_path, "--master-fifo", str(fifo), "--logto", str(first), "--logto2", str(log_file),
        "--log-backupname", str(backup),
    )  # fmt: skip
    send(fifo, "L")
    wait_until(lambda: "log rotated" in log_file.read_text(), 10, what="the rotation")
    assert f"rotating the log to {backup}" in backup.read_text()
    assert not list(tmp_path.glob("*.log.[0-9]*"))
