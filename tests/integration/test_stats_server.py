"""The master's stats server (--stats): uWSGI's document, uwsgitop on it, and Prometheus metrics over HTTP.

uwsgitop runs unchanged under a pseudo-terminal; its screen is rebuilt with a terminal emulator (pyte) and
read as a user would read it.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyte
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    APPS,
    UWSGI,
    Address,
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
from uwsgirouter.stats.exchange import REQUEST_WAIT_S

pytestmark = pytest.mark.integration

UWSGITOP = str(Path(sys.executable).parent / "uwsgitop")
APP = str(APPS / "instance_app.py")
COLUMNS, ROWS = 160, 30


def read_stats(address: Address) -> bytes:
    with connect(address, 5.0) as sock:
        return read_all(sock)


def stats_json(address: Address) -> dict[str, Any]:
    return json.loads(read_stats(address))  # type: ignore[no-any-return]


def http_stats(port: int, path: str) -> Response:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n".encode())
        return Response.parse(read_all(sock))


def metric_samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def send_requests(port: int, count: int) -> None:
    for _ in range(count):
        assert uwsgi_request(("127.0.0.1", port), request_vars()).status == 200


class Top:
    """uwsgitop on a pseudo-terminal of a fixed size; ``screen()`` is what a user sees now."""

    def __init__(self, address: str) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = dict(os.environ, TERM="xterm", LINES=str(ROWS), COLUMNS=str(COLUMNS))
        try:
            self.proc = subprocess.Popen(
                [UWSGITOP, "--frequency", "1", address],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(slave)
        self.terminal = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.terminal)
        self.output = b""

    def pump(self) -> None:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:  # EIO: uwsgitop closed the terminal
                return
            if not data:
                return
            self.output += data
            self.stream.feed(data)

    def screen(self) -> str:
        self.pump()
        return "\n".join(line.rstrip() for line in self.terminal.display)

    def wait_for(self, predicate: Callable[[str], object], what: str, timeout: float = 15.0) -> str:
        def check() -> str | None:
            assert self.proc.poll() is None, f"uwsgitop exited:\n{self.output.decode(errors='replace')}"
            text = self.screen()
            return text if predicate(text) else None

        try:
            return str(wait_until(check, timeout, 0.1, what))
        except AssertionError:
            print(self.screen())
            raise

    def rows(self) -> dict[int, list[str]]:
        """uwsgitop's worker rows by pid: WID % PID REQ RPS EXC SIG STATUS AVG RSS VSZ TX ReSpwn HC RunT LastSpwn."""
        found = {}
        for line in self.screen().splitlines():
            cells = line.split()
            if len(cells) >= 16 and cells[2].isdigit():
                found[int(cells[2])] = cells
        return found

    def quit(self) -> int:
        """Press q; uwsgitop leaves with status 0 unless it crashed."""
        try:
            os.write(self.master, b"q")
            return self.proc.wait(5)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            os.close(self.master)


@contextmanager
def uwsgitop(address: str) -> Iterator[Top]:
    top = Top(address)
    try:
        yield top
    finally:
        if top.proc.poll() is None:
            os.killpg(top.proc.pid, signal.SIGKILL)
            top.proc.wait(5)
            os.close(top.master)


def start_instance(procs: ProcessManager, stats: str, *extra: str) -> tuple[Any, int]:
    port = free_port()
    proc = procs.router(
        "--socket",
        f"127.0.0.1:{port}",
        "--wsgi-file",
        APP,
        "--master",
        "--processes",
        "2",
        "--disable-logging",
        "--stats",
        stats,
        *extra,
        wait_for=("127.0.0.1", port),
    )
    send_requests(port, 1)  # served: the master has its signal handlers
    return proc, port


def start_backend(procs: ProcessManager) -> int:
    """An app instance without a stats server, the node of the routers under test; returns its port."""
    port = free_port()
    procs.router(
        "--socket", f"127.0.0.1:{port}", "--wsgi-file", APP, "--master", "--disable-logging",
        wait_for=("127.0.0.1", port),
    )  # fmt: skip
    return port


def worker_pids(address: Address, count: int) -> list[int]:
    def ready() -> list[int] | None:
        try:
            doc = stats_json(address)
        except OSError:
            return None
        pids = [w["pid"] for w in doc["workers"]]
        return pids if len(pids) == count and all(pids) else None

    return list(wait_until(ready, 15, what="the stats document listing every worker"))


def test_uwsgitop_watches_an_app_instance(procs: ProcessManager) -> None:
    stats_port = free_port()
    _, port = start_instance(procs, f"127.0.0.1:{stats_port}")
    pids = worker_pids(("127.0.0.1", stats_port), 2)
    with uwsgitop(f"127.0.0.1:{stats_port}") as top:
        screen = top.wait_for(lambda s: all(str(pid) in s for pid in pids), "both workers on uwsgitop's screen")
        assert "WID" in screen and "masterpid" in screen
        send_requests(port, 20)
        top.wait_for(lambda s: "req: 21 " in s, "the 21 requests in uwsgitop's header")
        rows = top.rows()
        assert set(rows) == set(pids)
        assert sum(int(cells[3]) for cells in rows.values()) == 21  # REQ per worker
        assert all(cells[7] == "idle" for cells in rows.values())  # STATUS
        assert top.quit() == 0
        assert b"Traceback" not in top.output


def test_uwsgitop_watches_a_router_master(procs: ProcessManager, unix_dir: Path) -> None:
    backend_port, router_port = start_backend(procs), free_port()
    stats = str(unix_dir / "stats.sock")
    procs.router(
        "--fastrouter",
        f"127.0.0.1:{router_port}",
        "--fastrouter-to",
        f"127.0.0.1:{backend_port}",
        "--fastrouter-processes",
        "2",
        "--stats",
        stats,
        wait_for=("127.0.0.1", router_port),
    )
    send_requests(router_port, 1)
    pids = worker_pids(stats, 2)

    def totals() -> tuple[int, int]:
        workers = stats_json(stats)["workers"]
        return sum(w["requests"] for w in workers), sum(w["running_time"] for w in workers)

    with uwsgitop(stats) as top:
        top.wait_for(lambda s: all(str(pid) in s for pid in pids), "both router processes on uwsgitop's screen")
        _, before = wait_until(lambda: (t := totals())[0] == 1 and t, what="the first request counted")
        started = time.monotonic()
        send_requests(router_port, 30)
        window = time.monotonic() - started
        top.wait_for(lambda s: "req: 31 " in s, "the 31 routed requests in uwsgitop's header")
        assert set(top.rows()) == set(pids)
        assert top.quit() == 0
    # one request after another: the time they spent in the router fits in the time it took to send them
    assert 0 < totals()[1] - before <= window * 1e6


def test_the_document_has_uwsgis_layout(procs: ProcessManager) -> None:
    """Every key and type of real uWSGI 2.0.31's master document, for an instance with the same options."""
    assert UWSGI, "uWSGI 2.0.31 is not installed"
    theirs_stats, ours_stats = free_port(), free_port()
    theirs_port = free_port()
    procs.uwsgi_backend(
        f"127.0.0.1:{theirs_port}", "real", "--stats", f"127.0.0.1:{theirs_stats}", wait_for=("127.0.0.1", theirs_port)
    )
    _, port = start_instance(procs, f"127.0.0.1:{ours_stats}")
    send_requests(theirs_port, 3)
    send_requests(port, 3)
    theirs = wait_until(lambda: stats_json(("127.0.0.1", theirs_stats)), what="uWSGI's stats")
    ours = stats_json(("127.0.0.1", ours_stats))

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        if isinstance(value, list):
            return [shape(value[0])] if value else []
        return type(value).__name__

    def contains(mine: Any, reference: Any, where: str) -> None:
        if isinstance(reference, dict):
            assert isinstance(mine, dict), where
            for key, item in reference.items():
                assert key in mine, f"{where}.{key} missing"
                contains(mine[key], item, f"{where}.{key}")
        elif isinstance(reference, list):
            assert isinstance(mine, list), where
            if reference and mine:
                contains(mine[0], reference[0], f"{where}[0]")
        else:
            assert mine == reference, f"{where}: {mine} instead of {reference}"

    contains(shape(ours), shape(theirs), "doc")
    assert [w["id"] for w in ours["workers"]] == [1, 2]
    assert ours["locks"] == theirs["locks"]
    assert ours["sockets"][0]["name"] == f"127.0.0.1:{port}"
    assert sum(w["requests"] for w in ours["workers"]) == 4
    assert all(w["rss"] > 0 and w["vsz"] > w["rss"] for w in ours["workers"])
    assert all(w["respawn_count"] == 1 and w["last_spawn"] <= time.time() for w in ours["workers"])


def test_a_worker_id_keeps_its_counters_across_a_respawn(procs: ProcessManager) -> None:
    stats_port = free_port()
    _, port = start_instance(procs, f"127.0.0.1:{stats_port}")
    address = ("127.0.0.1", stats_port)
    worker_pids(address, 2)
    send_requests(port, 10)

    def settled() -> dict[int, dict[str, Any]] | None:
        # a worker's beat may carry a request's count before its bytes (the next beat has both): wait until two
        # reads a beat apart agree (the sleep is that window, not a wait for a condition)
        first = {w["id"]: w for w in stats_json(address)["workers"]}
        time.sleep(1.0)
        return first if first == {w["id"]: w for w in stats_json(address)["workers"]} else None

    before = wait_until(settled, 15, what="the workers' counters to settle")
    assert sum(w["requests"] for w in before.values()) == 11
    victim = max(before.values(), key=lambda w: w["requests"])
    os.kill(victim["pid"], signal.SIGKILL)

    def respawned() -> dict[str, Any] | None:
        entry = next(w for w in stats_json(address)["workers"] if w["id"] == victim["id"])
        return entry if entry["pid"] not in (0, victim["pid"]) else None

    entry = wait_until(respawned, 15, what="the killed worker respawned")
    assert entry["respawn_count"] == 2
    assert entry["requests"] == victim["requests"] and entry["delta_requests"] == 0
    assert entry["tx"] == victim["tx"] > 0


def test_minified_and_http_json(procs: ProcessManager) -> None:
    stats_port = free_port()
    start_instance(procs, f"127.0.0.1:{stats_port}", "--stats-minified", "--stats-http")
    wait_until(lambda: http_stats(stats_port, "/").status == 200, what="the HTTP stats")
    reply = http_stats(stats_port, "/")
    assert reply.headers["content-type"] == "application/json"
    assert b"\n" not in reply.body and b"\t" not in reply.body
    assert len(json.loads(reply.body)["workers"]) == 2


def test_prometheus_metrics_of_an_instance(procs: ProcessManager) -> None:
    stats_port = free_port()
    _, port = start_instance(procs, f"127.0.0.1:{stats_port}", "--stats-http")
    send_requests(port, 12)

    def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        reply = http_stats(stats_port, "/metrics")
        assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        return metric_samples(reply.body)

    def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        found = metrics()
        total = sum(v for (name, _), v in found.items() if name == "uwsgirouter_worker_requests_total")
        return found if total == 13 else None

    found = wait_until(counted, 10, what="13 requests counted in the metrics")
    workers = {labels for (name, labels) in found if name == "uwsgirouter_worker_rss_bytes"}
    assert workers == {(("kind", "worker"), ("worker", "1")), (("kind", "worker"), ("worker", "2"))}
    assert all(found["uwsgirouter_worker_rss_bytes", labels] > 0 for labels in workers)
    tx = sum(v for (n, _), v in found.items() if n == "uwsgirouter_worker_tx_bytes_total")
    assert tx > 13 * 40  # every response's head and body
    assert found["uwsgirouter_socket_listen_queue", (("socket", f"127.0.0.1:{port}"),)] == 0


def test_prometheus_metrics_of_the_router_stats_server(procs: ProcessManager) -> None:
    backend_port, router_port, stats_port = start_backend(procs), free_port(), free_port()
    dead = f"127.0.0.1:{free_port()}"
    procs.router(
        "--fastrouter",
        f"127.0.0.1:{router_port}",
        "--fastrouter-to",
        f"127.0.0.1:{backend_port}",
        "--fastrouter-to",
        dead,
        "--fastrouter-stats",
        f"127.0.0.1:{stats_port}",
        "--stats-http",
        wait_for=("127.0.0.1", router_port),
    )
    wait_until(lambda: http_stats(stats_port, "/metrics").status == 200, what="the router's HTTP stats")
    for _ in range(9):
        assert uwsgi_request(("127.0.0.1", router_port), request_vars()).status == 200
    found = metric_samples(http_stats(stats_port, "/metrics").body)
    live = (("key", ""), ("node", f"127.0.0.1:{backend_port}"))
    assert found["uwsgirouter_node_requests_total", live] == 9
    assert found["uwsgirouter_node_received_bytes_total", live] > 9 * 40
    assert found["uwsgirouter_node_failures_total", (("key", ""), ("node", dead))] >= 1
    assert found["uwsgirouter_node_up", (("key", ""), ("node", dead))] == 0
    assert found["uwsgirouter_nodes", (("state", "live"),)] == 1
    doc = json.loads(http_stats(stats_port, "/").body)  # any other path: the JSON, as before
    assert doc["static_nodes"][0]["hits"] == 9


def test_a_silent_http_client_gets_the_json_and_delays_nobody(procs: ProcessManager) -> None:
    stats_port = free_port()
    proc, port = start_instance(procs, f"127.0.0.1:{stats_port}", "--stats-http")
    wait_until(lambda: http_stats(stats_port, "/").status == 200, what="the HTTP stats")

    def metrics_and_requests() -> float:
        started = time.monotonic()
        assert http_stats(stats_port, "/metrics").status == 200
        send_requests(port, 3)
        return time.monotonic() - started

    alone = metrics_and_requests()  # the baseline, on this machine now
    with connect(("127.0.0.1", stats_port), 5.0) as silent:
        # a server that waited for the silent client's request line would add its REQUEST_WAIT_S (1 s)
        with_silent = metrics_and_requests()
        assert with_silent < alone + REQUEST_WAIT_S / 2, (
            f"{with_silent:.2f} s with a silent client, {alone:.2f} s without"
        )
        reply = Response.parse(read_all(silent))  # after its wait for a request line
        assert reply.status == 200 and json.loads(reply.body)["pid"] == proc.pid


BUSY_APP = """
import time

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("asked to fail")
    if path == "/sleep":
        time.sleep(3)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def test_exceptions_and_a_busy_worker_show(procs: ProcessManager, tmp_path: Path) -> None:
    app = tmp_path / "busy_app.py"
    app.write_text(BUSY_APP)
    stats_port, port = free_port(), free_port()
    procs.router(
        "--socket",
        f"127.0.0.1:{port}",
        "--wsgi-file",
        str(app),
        "--master",
        "--processes",
        "2",
        "--stats",
        f"127.0.0.1:{stats_port}",
        wait_for=("127.0.0.1", port),
    )
    address = ("127.0.0.1", stats_port)
    worker_pids(address, 2)
    for _ in range(3):
        assert uwsgi_request(("127.0.0.1", port), request_vars(path="/boom")).status == 500
    with connect(("127.0.0.1", port)) as slow, uwsgitop(f"127.0.0.1:{stats_port}") as top:
        slow.sendall(uwsgi_packet(request_vars(path="/sleep")))
        screen = top.wait_for(lambda s: " busy " in s, "a busy worker on uwsgitop's screen")
        assert sum(int(cells[5]) for cells in top.rows().values()) == 3, screen  # EXC
    doc = stats_json(address)
    assert sum(w["exceptions"] for w in doc["workers"]) == 3
    assert sum(w["apps"][0]["exceptions"] for w in doc["workers"]) == 3
