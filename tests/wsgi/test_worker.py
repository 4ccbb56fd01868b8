"""A forked ``WsgiWorker`` on a real socket, driven by a raw uwsgi client (tests/support.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.support import Response, connect, read_all, request_vars, uwsgi_packet, uwsgi_request, wait_until
from tests.wsgi import apps
from tests.wsgi.forked import Served, WorkerFactory
from uwsgirouter.workers.wsgi import WsgiWorker

pytestmark = pytest.mark.timeout(60)


def get(served: Served, path: str = "/", body: bytes = b"", **extra: str) -> Response:
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    method = "POST" if body else "GET"
    vars = request_vars(path=path, method=method, body_len=len(body), QUERY_STRING=query, **extra)
    return uwsgi_request(served.address, vars, body)


def raw_exchange(served: Served, packet: bytes) -> bytes:
    """Send bytes, read until close; a reset (unread bytes at close, as with uWSGI) reads as nothing."""
    with connect(served.address) as sock:
        try:
            sock.sendall(packet)
            return read_all(sock)
        except ConnectionResetError:
            return b""


@pytest.fixture
def served(workers: WorkerFactory) -> Served:
    return workers.start(apps.application)


# -- requests and responses ----------------------------------------------------------------------


def test_get(served: Served) -> None:
    r = get(served, "/hello?a=1")
    assert r.raw == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\nhello GET /hello a=1"


def test_status_line_uses_server_protocol_else_http_1_0(served: Served) -> None:
    vars = request_vars(SERVER_PROTOCOL="HTTP/1.0")
    assert uwsgi_request(served.address, vars).raw.startswith(b"HTTP/1.0 200 OK\r\n")
    del vars["SERVER_PROTOCOL"]
    assert uwsgi_request(served.address, vars).raw.startswith(b"HTTP/1.0 200 OK\r\n")


def test_environ_seen_by_the_app(served: Served) -> None:
    body = get(served, "/environ", HTTPS="on").body.decode()
    assert "'wsgi.url_scheme': 'https'" in body
    assert "'uwsgi.version': b'2.0.31'" in body
    assert f"'uwsgi.node': {socket.gethostname().encode()!r}" in body
    assert "'SCRIPT_NAME': ''" in body
    assert "'uwsgi.modifier1': None" in body


def test_post_1_mib_md5(served: Served) -> None:
    data = os.urandom(1 << 20)
    r = get(served, "/post", data)
    assert r.status == 200
    assert r.body == f"len={len(data)} md5={hashlib.md5(data).hexdigest()}".encode()


def test_body_lines(served: Served) -> None:
    assert get(served, "/lines", b"one\ntwo\nthree").body == b"one|two|three"


def test_streaming_generator_is_sent_and_closed(served: Served, tmp_path: Path) -> None:
    marker = tmp_path / "stream"
    r = get(served, "/stream?n=50&size=10000", HTTP_X_MARKER=str(marker))
    assert r.status == 200
    assert r.body == b"".join(bytes([65 + i % 26]) * 10000 for i in range(50))
    assert "content-length" not in r.headers
    assert Path(str(marker) + ".closed").exists()


def test_write_callable(served: Served) -> None:
    assert get(served, "/write").body == b"written and returned"


def test_file_wrapper_with_sendfile_and_through_the_validator(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    content = os.urandom(300_000)
    path.write_bytes(content)
    r = get(served, f"/raw/file?path={path}")
    assert (r.status, r.body) == (200, content)
    r = get(served, f"/raw/file?path={path}&offset=1000")
    assert r.body == content[1000:]
    r = get(served, f"/file?path={path}")
    assert (r.status, r.body) == (200, content)


def test_unread_body_is_drained_so_the_response_arrives(served: Served) -> None:
    r = get(served, "/noread", os.urandom(512 * 1024))
    assert (r.status, r.body) == (200, b"did not read the body")


def test_uwsgi_module_in_the_worker(workers: WorkerFactory, clean_process: None) -> None:
    from uwsgirouter import uwsgi_module
    from uwsgirouter.config import load_config

    uwsgi_module.install(load_config(["--processes", "4"], {}))  # the master's job; inherited by the fork
    served = workers.start(apps.application, "--processes", "4")
    assert get(served, "/uwsgi").body == b"worker_id=1 numproc=4"


# -- failures ------------------------------------------------------------------------------------


def test_app_exception_gives_500_and_the_worker_lives_on(served: Served) -> None:
    r = get(served, "/raise")
    assert r.status == 500
    assert r.body == b"Internal Server Error"
    assert get(served, "/").status == 200
    log = served.wait_log("ValueError: boom from the app")
    assert "exception in the app while serving GET /raise:\nTraceback" in log


def test_sys_exit_in_the_app_ends_the_worker_like_uwsgi(served: Served) -> None:
    assert get(served, "/exit").status == 500
    assert served.child.wait(5) == 1  # not a boot failure (3, 4): the master respawns it
    assert "the app called sys.exit(3) while serving GET /exit; worker exits" in served.log()


def test_exception_after_the_head_was_sent_closes_the_connection(served: Served) -> None:
    r = get(served, "/raise_late")
    assert r.raw == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial"
    assert get(served, "/").status == 200
    served.wait_log("ValueError: late boom")


def test_client_gone_mid_response_is_one_log_line(served: Served) -> None:
    with connect(served.address) as sock:
        sock.sendall(uwsgi_packet(request_vars(path="/raw/big")))
        assert sock.recv(65536)
    log = served.wait_log("client gone while sending the response")
    assert "Traceback" not in log
    assert get(served, "/").status == 200


def test_client_closing_before_the_declared_body_end(served: Served) -> None:
    vars = request_vars(path="/post", method="POST", body_len=100)
    r = uwsgi_request(served.address, vars, b"only ten b", half_close=True)
    assert r.raw == b""
    log = served.wait_log("client closed the connection after 10 of 100 body bytes")
    assert "Traceback" not in log
    assert get(served, "/").status == 200


def test_head_larger_than_buffer_size_is_refused(workers: WorkerFactory) -> None:
    served = workers.start(apps.application)
    vars = request_vars(HTTP_X_BIG="x" * 5000)
    assert raw_exchange(served, uwsgi_packet(vars)) == b""
    size = len(uwsgi_packet(vars)) - 4
    served.wait_log(f"invalid request block size: {size} (max 4096)...skip")
    assert get(served, "/").status == 200
    bigger = workers.start(apps.application, "--buffer-size", "8192")
    assert uwsgi_request(bigger.address, vars).status == 200


def test_at_most_twice_max_vars_pairs(served: Served) -> None:
    base = list(request_vars().items())
    ok = base + [(f"HTTP_X_{i}", "v") for i in range(128 - len(base))]
    assert uwsgi_request(served.address, ok).status == 200
    assert raw_exchange(served, uwsgi_packet([*ok, ("HTTP_X_ONE_MORE", "v")])) == b""
    served.wait_log("too many vars: 129 (max 128)...skip")


def test_modifiers(served: Served) -> None:
    assert raw_exchange(served, uwsgi_packet(request_vars(), modifier1=5)) == b""
    served.wait_log("-- unavailable modifier requested: 5 --")
    assert raw_exchange(served, struct.pack("<BHB", 100, 0, 0)) == b"d\x00\x00\x01"  # ping -> pong
    vars = request_vars(path="/app/environ", SCRIPT_NAME="/app")
    assert b"'SCRIPT_NAME': '/app'" in uwsgi_request(served.address, vars, modifier1=30).body


def test_socket_timeout_while_reading_the_head(workers: WorkerFactory) -> None:
    served = workers.start(apps.application, "--socket-timeout", "1")
    started = time.monotonic()
    assert raw_exchange(served, b"\x00\x10") == b""
    assert 0.8 < time.monotonic() - started < 5
    served.wait_log("timeout reading a request head (2 bytes received)")
    assert get(served, "/").status == 200


def test_garbage_and_silent_connections(served: Served) -> None:
    connect(served.address).close()
    assert raw_exchange(served, struct.pack("<BHB", 0, 4, 0) + b"\x00\x00\x00\x00") == b""
    served.wait_log("invalid uwsgi request: vars block: empty key")
    assert get(served, "/").status == 200


# -- logging -------------------------------------------------------------------------------------

REQUEST_LINE = re.compile(
    r"\[pid: (\d+)\|app: 0\|req: 1/1\] 127\.0\.0\.1 \(\) \{22 vars in 221 bytes\} "
    r"\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] GET / => generated 12 bytes in \d+ msecs "
    r"\(HTTP/1\.1 200\) 2 headers in 65 bytes \(1 switches on core 0\)"
)


def test_request_log_line_like_uwsgi(served: Served) -> None:
    get(served, "/")  # 22 vars in 221 bytes: what uWSGI 2.0.31 logs for the same request
    log = served.wait_log("GET / =>")
    match = REQUEST_LINE.search(log)
    assert match, log
    assert int(match.group(1)) == served.child.pid


def test_disable_logging(workers: WorkerFactory) -> None:
    served = workers.start(apps.application, "--disable-logging")
    get(served, "/")
    get(served, "/raise")
    log = served.wait_log("boom from the app")
    assert "=> generated" not in log


# -- signals, parent, heartbeat, concurrency -----------------------------------------------------


def slow_request(served: Served, marker: Path, seconds: float) -> tuple[socket.socket, Path]:
    sock = connect(served.address)
    vars = request_vars(path="/sleep", QUERY_STRING=f"s={seconds}", HTTP_X_MARKER=str(marker))
    sock.sendall(uwsgi_packet(vars))
    wait_until(lambda: marker.exists() and marker.read_text(), 10, what="the app to start")
    return sock, Path(str(marker) + ".done")


def test_sigterm_finishes_the_current_request_then_exits_0(served: Served, tmp_path: Path) -> None:
    sock, _ = slow_request(served, tmp_path / "m", 1.0)
    with sock:
        os.kill(served.child.pid, signal.SIGTERM)
        r = Response.parse(read_all(sock))
    assert (r.status, r.body) == (200, f"slept pid={served.child.pid}".encode())
    assert served.child.wait(5) == 0
    assert "graceful stop after 1 request(s)" in served.log()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_sigint_and_sigquit_exit_at_once(served: Served, tmp_path: Path, signum: int) -> None:
    sock, done = slow_request(served, tmp_path / "m", 30.0)
    with sock:
        started = time.monotonic()
        os.kill(served.child.pid, signum)
        assert served.child.wait(5) == 0
        assert read_all(sock) == b""
    assert time.monotonic() - started < 5
    assert done.exists()  # the app was unwound (its finally ran), not frozen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2, signal.SIGQUIT])
def test_idle_worker_stops_on_signal(served: Served, signum: int) -> None:
    assert get(served, "/").status == 200
    os.kill(served.child.pid, signum)
    assert served.child.wait(5) == 0


def test_worker_leaves_when_the_master_is_gone(workers: WorkerFactory) -> None:
    def pretend_reparented(worker: WsgiWorker) -> None:
        worker.parent_pid = os.getppid() + 1  # run() keeps it; getppid() no longer matches

    served = workers.start(apps.application, before_run=pretend_reparented)
    assert served.child.wait(5) == 0
    assert "the master process is gone; worker 1 exits" in served.log()


def test_heartbeat_idle_and_busy(workers: WorkerFactory, tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)

    def install_beat(worker: WsgiWorker) -> None:
        def beat(*_: object) -> None:
            os.write(write_end, b"B" if worker.busy_since else b".")

        worker.beat = beat

    try:
        served = workers.start(apps.application, before_run=install_beat)
        idle = bytearray()

        def idle_beats() -> bool:
            with contextlib.suppress(BlockingIOError):
                idle.extend(os.read(read_end, 1000))
            return idle.count(b".") >= 2

        wait_until(idle_beats, 5, what="two idle heartbeats")
        get(served, "/sleep?s=0.1", HTTP_X_MARKER=str(tmp_path / "m"))
        wait_until(lambda: b"B" in os.read(read_end, 1000) or None, 5, what="a busy beat")
    finally:
        os.close(read_end)
        os.close(write_end)


def test_workers_share_the_socket(workers: WorkerFactory) -> None:
    served = workers.start(apps.application, count=3)
    pids: list[bytes] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            for _ in range(4):
                r = get(served, "/sleep?s=0.05")
                assert r.status == 200
                pids.append(r.body.split(b"pid=")[1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(pids) == 24
    assert {int(p) for p in pids} == {c.pid for c in served.children}


def test_a_flood_of_bad_heads_cannot_flood_the_log(served: Served) -> None:
    """Hostile clients trigger one error line each: at most 50 a second are written, the rest counted."""
    vars = request_vars(HTTP_X_BIG="x" * 5000)
    for _ in range(300):  # bounded
        raw_exchange(served, uwsgi_packet(vars))
    assert get(served, "/").status == 200
    text = served.wait_log("like these in the last second")
    assert 0 < text.count("invalid request block size") <= 100, text.count("invalid request block size")
