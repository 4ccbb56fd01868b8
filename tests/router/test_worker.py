"""The router worker (router/worker.py) and its stats document (router/stats.py) in process, without forking: a
Config from the command line, listeners the test binds, ``on_signal`` called directly, ``run()`` in a thread woken
through the worker's own wake-up pipe, a stats client over the stats listener, the heartbeat through a ``beat``
callable."""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.router.conftest import client_of, messages
from tests.router.fakeloop import Backend
from tests.support import read_all, recv_exactly, request_vars, uwsgi_packet
from tools.harness import wait_until
from uwsgirouter import __version__
from uwsgirouter.config import Config, load_config
from uwsgirouter.heartbeat import CHEAP, Counters
from uwsgirouter.router.mappers import Mapper, StaticMapper, SubscriptionMapper, static_nodes
from uwsgirouter.router.nodes import Node
from uwsgirouter.router.stats import UWSGI_VERSION, render, stats_document
from uwsgirouter.router.worker import RouterWorker, own_addresses, router_settings
from uwsgirouter.sock import Listener
from uwsgirouter.subscription.image import TableImage

GET = uwsgi_packet(request_vars(host="example.com", path="/x"))
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def unix_listener(path: Path) -> Listener:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(128)
    sock.setblocking(False)
    return Listener(sock, str(path))


class Beats:
    """The master's heartbeat table as a callable: what each beat said."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int, Counters]] = []

    def __call__(self, busy_since: float, requests: int, counters: Counters) -> None:
        self.calls.append((busy_since, requests, counters))


class Worker:
    """A RouterWorker on listeners in a temporary directory, run in a thread."""

    def __init__(
        self, tmp_path: Path, node: Backend, *options: str, stats: bool = True, mapper: Mapper | None = None
    ) -> None:
        self.router = unix_listener(tmp_path / "router.sock")
        self.stats = unix_listener(tmp_path / "stats.sock")
        self.config = load_config(["--fastrouter-to", str(node.path), *options], {})
        self.beats = Beats()
        mapper = mapper or StaticMapper(static_nodes([str(node.path)]), 30.0)
        self.worker = RouterWorker(self.config, [self.router], mapper, 1, self.beats, self.stats if stats else None)
        self.worker.parent_pid = os.getppid()
        self.thread: threading.Thread | None = None
        self.status: int | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        # what init_process sets up before run() (its signal part needs the main thread)
        worker = self.worker
        worker._wakeup_r, worker._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.status = self.worker.run()
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(5)
        assert not self.thread.is_alive(), "the worker did not end"
        if self.error is not None:
            raise self.error

    def signal(self, signum: int) -> None:
        self.worker.on_signal(signum, None)
        self.worker.wake()

    def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.signal(signal.SIGINT)
        if self.thread is not None:
            self.join()  # raises what ended the thread, if anything did
        for fd in (self.worker._wakeup_r, self.worker._wakeup_w):
            if fd >= 0:
                os.close(fd)
        self.router.close()
        self.stats.close()


@pytest.fixture
def rlimit() -> Iterator[None]:
    """run() raises the soft descriptor limit to the hard one (as a router process should); put it back."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    gc.unfreeze()  # run() froze what the test process held


@pytest.fixture
def make(tmp_path: Path, node: Backend, rlimit: None) -> Iterator[Any]:
    made: list[Worker] = []

    def build(*options: str, **kwargs: Any) -> Worker:
        directory = tmp_path / f"w{len(made)}"
        directory.mkdir()
        made.append(Worker(directory, node, *options, **kwargs))
        return made[-1]

    yield build
    for worker in made:
        worker.close()


def serve_one(worker: Worker, node: Backend) -> bytes:
    client = client_of(worker.router, GET)
    conn = node.accept()
    recv_exactly(conn, len(GET))
    conn.sendall(ANSWER)
    conn.close()
    answer = read_all(client)
    client.close()
    return answer


# -- the worker --------------------------------------------------------------------------------------------------


def test_the_worker_serves_beats_and_reports_what_it_served(make: Any, node: Backend) -> None:
    running = make()
    running.start()
    assert serve_one(running, node) == ANSWER
    wait_until(lambda: running.worker.loop.requests == 1, 5)
    running.signal(signal.SIGINT)
    running.join()
    assert running.status == 0
    busy_since, requests, counters = running.beats.calls[-1]
    assert (busy_since, requests) == (0.0, 1), "the last beat carries the last request"
    assert counters.tx == len(ANSWER) and counters.in_flight == 0 and counters.flags == 0
    assert counters.running_us == running.worker.loop.running_us
    assert counters.avg_rt_us == running.worker.loop.avg_rt_us
    assert len(running.beats.calls) >= 2, "one beat at the start, one at the end"
    assert running.worker.loop.epfd == -1, "the epoll set is released"


def test_the_worker_beats_while_it_runs(make: Any, node: Backend) -> None:
    running = make()
    running.start()
    wait_until(lambda: len(running.beats.calls) >= 1, 5)  # at the start
    for count in (2, 3):  # then at every wake-up at least 0.5 s after the last beat
        time.sleep(0.55)
        running.worker.wake()
        wait_until(lambda: len(running.beats.calls) >= count, 5)  # noqa: B023


def test_a_worker_without_a_stats_server_serves(make: Any, node: Backend) -> None:
    running = make(stats=False)
    running.start()
    assert serve_one(running, node) == ANSWER
    with client_of(running.stats) as unserved:
        unserved.settimeout(0.1)
        with pytest.raises(TimeoutError):
            unserved.recv(10)  # nobody serves the (unused) stats socket
    running.signal(signal.SIGINT)
    running.join()


def test_sigusr2_retires_the_worker_and_sigterm_stops_it_gracefully(make: Any) -> None:
    retiring = make()
    retiring.worker.on_signal(signal.SIGUSR2, None)
    assert retiring.worker.stopping and retiring.worker.loop.stopping
    assert not retiring.worker.loop.shutting_down and not retiring.worker.exit_now
    stopping = make()
    stopping.worker.on_signal(signal.SIGTERM, None)
    assert stopping.worker.stopping and stopping.worker.loop.stopping and stopping.worker.loop.shutting_down
    for signum in (signal.SIGINT, signal.SIGQUIT):
        leaving = make()
        leaving.worker.on_signal(signum, None)
        assert leaving.worker.exit_now and leaving.worker.loop.exit_now
        assert not leaving.worker.stopping


def test_a_retiring_worker_with_nothing_in_flight_ends(make: Any) -> None:
    running = make()
    running.start()
    running.signal(signal.SIGUSR2)
    running.join()
    assert running.status == 0


def test_a_stopping_worker_answers_503_to_newcomers(make: Any, node: Backend) -> None:
    running = make("--worker-reload-mercy", "30")
    running.start()
    client = client_of(running.router, GET)
    conn = node.accept()
    recv_exactly(conn, len(GET))
    running.signal(signal.SIGTERM)
    with client_of(running.router, GET) as newcomer:
        assert read_all(newcomer).startswith(b"HTTP/1.1 503 Service Unavailable")
    conn.sendall(ANSWER)
    conn.close()
    assert read_all(client) == ANSWER
    client.close()
    running.join()


def test_a_worker_whose_master_is_gone_leaves(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter")
    running = make()
    running.worker.parent_pid = -1
    running.start()
    running.join()
    assert "the master process is gone; fastrouter 1 exits" in messages(caplog)


def test_the_heartbeat_says_in_flight_sessions_and_cheap_mode(make: Any, node: Backend) -> None:
    running = make()
    worker = running.worker
    worker.loop.sessions.add(object())
    worker.loop.is_cheap = True
    worker.loop.requests = 7
    worker.heartbeat()
    _, requests, counters = running.beats.calls[-1]
    assert requests == 7 and counters.in_flight == 1 and counters.flags == CHEAP
    assert worker.sessions is worker.loop.sessions
    worker.loop.sessions.clear()


# -- configuration ------------------------------------------------------------------------------------------------


def test_router_settings_come_from_the_options() -> None:
    config = load_config(
        [
            "--fastrouter-buffer-size=8192",
            "--fastrouter-timeout=7",
            "--fastrouter-max-retries=2",
            "--fastrouter-post-buffering=100",
            "--fastrouter-post-buffering-dir=/tmp",
            "--fastrouter-quiet=1",
            "--fastrouter-force-key=k\udcff",
            "--fastrouter-fallback-on-no-key",
        ],
        {},
    )
    settings = router_settings(config)
    assert (settings.high_water, settings.timeout, settings.max_retries) == (8192, 7.0, 2)
    assert (settings.post_buffering, settings.post_buffering_dir) == (100, "/tmp")
    assert settings.quiet and settings.fallback_on_no_key
    assert settings.force_key == b"k\xff"
    defaults = router_settings(load_config([], {}))
    assert defaults.force_key == b"" and not defaults.quiet and not defaults.fallback_on_no_key
    assert defaults.timeout == 60.0 and defaults.high_water == 4096 and defaults.max_retries == 3


def test_the_loop_gets_the_cap_the_mercy_and_the_head_grace(make: Any, node: Backend, tmp_path: Path) -> None:
    running = make(
        "--fastrouter-events=5",
        "--worker-reload-mercy=9",
        "--socket-timeout=3",
        "--fastrouter-fallback",
        str(tmp_path / "f.sock"),
        "--fastrouter-max-retries=1",
        "--fastrouter-fallback-on-no-key",
    )
    loop = running.worker.loop
    assert (loop.max_sessions, loop.mercy, loop.head_grace) == (5, 9.0, 3.0)
    routing = running.worker.routing
    assert [n.name for n in routing.fallbacks] == [str(tmp_path / "f.sock")]
    assert routing.max_retries == 1 and routing.fallback_on_no_key
    assert routing.own_addresses == frozenset({running.router.name.encode()})
    assert not routing.cheap and routing.local is None
    assert running.worker.stats_names == [running.router.name]
    assert routing.on_no_live_node == loop.go_cheap


def test_cheap_mode_needs_a_mapper_whose_nodes_come_and_go(tmp_path: Path, node: Backend, rlimit: None) -> None:
    router = unix_listener(tmp_path / "router.sock")
    try:
        config = load_config(["--fastrouter-cheap"], {})
        static = RouterWorker(config, [router], StaticMapper([node.node], 30), local_address=str(node.path))
        assert not static.routing.cheap and static.routing.local is None
        subscribed = RouterWorker(
            config, [router], SubscriptionMapper(TableImage(1 << 16)), local_address=str(node.path)
        )
        assert subscribed.routing.cheap
        local = subscribed.routing.local
        assert local is not None and local.name == str(node.path)
        no_local = RouterWorker(config, [router], SubscriptionMapper(TableImage(1 << 16)))
        assert no_local.routing.cheap and no_local.routing.local is None
        plain = RouterWorker(load_config([], {}), [router], SubscriptionMapper(TableImage(1 << 16)))
        assert not plain.routing.cheap
        for worker in (static, subscribed, no_local, plain):
            worker.loop.close()
    finally:
        router.close()


def test_own_addresses_cover_every_way_to_reach_a_listener(tmp_path: Path) -> None:
    loopback = socket.create_server(("127.0.0.1", 0))
    port = loopback.getsockname()[1]
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "own.sock"))
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(b"\0uwsgirouter-test-own-%d" % os.getpid())
    unnamed = socket.socket(socket.AF_UNIX)
    closed = socket.socket(socket.AF_UNIX)
    closed.close()
    try:
        found = own_addresses([Listener(s, "x") for s in (loopback, unix, abstract, unnamed, closed)])
        assert found == {
            ("127.0.0.1", port),
            ("0.0.0.0", port),
            ("::", port),
            ("::1", port),
            str(tmp_path / "own.sock").encode(),
            b"\0uwsgirouter-test-own-%d" % os.getpid(),
        }
    finally:
        for sock in (loopback, unix, abstract, unnamed):
            sock.close()


def test_a_listener_on_another_address_is_only_itself() -> None:
    other = socket.socket(socket.AF_INET)
    other.bind(("127.0.0.2", 0))
    try:
        port = other.getsockname()[1]
        assert own_addresses([Listener(other, "x")]) == {("127.0.0.2", port)}
    finally:
        other.close()


# -- the stats server ----------------------------------------------------------------------------------------------


def stats_of(worker: Worker) -> Any:
    with client_of(worker.stats) as client:
        return read_all(client)


def test_the_stats_server_sends_uwsgis_document(make: Any, node: Backend) -> None:
    running = make()
    running.start()
    assert serve_one(running, node) == ANSWER
    doc = json.loads(stats_of(running))
    assert list(doc)[:8] == [
        "version",
        "uwsgirouter_version",
        "pid",
        "uid",
        "gid",
        "cwd",
        "active_sessions",
        "fastrouter",
    ]
    assert doc["version"] == UWSGI_VERSION == "2.0.31"
    assert doc["uwsgirouter_version"] == __version__
    assert (doc["pid"], doc["uid"], doc["gid"], doc["cwd"]) == (os.getpid(), os.getuid(), os.getgid(), os.getcwd())
    assert doc["active_sessions"] == 0 and doc["fastrouter"] == [running.router.name]
    (entry,) = doc["static_nodes"]
    assert entry["name"] == str(node.path) and entry["hits"] == 1 and entry["tx"] == len(ANSWER)
    assert doc["cheap"] == 0
    assert list(doc)[-1] == "cheap"
    assert not running.worker.stats_clients


def test_a_stats_document_larger_than_the_socket_takes_is_sent_as_the_client_reads(
    make: Any, node: Backend, tmp_path: Path
) -> None:
    many = [Node(f"{tmp_path}/node-{n:04d}.sock", socket.AF_UNIX, b"x") for n in range(3000)]
    running = make(mapper=StaticMapper(many, 30.0))
    running.start()
    with client_of(running.stats) as client:
        wait_until(lambda: running.worker.stats_clients, 5, what="the reply waits for the client to read")
        doc = json.loads(read_all(client))
    assert len(doc["static_nodes"]) == 3000
    wait_until(lambda: not running.worker.stats_clients, 5)


def test_the_stats_server_over_http_answers_json_and_metrics(make: Any) -> None:
    running = make("--stats-http", "--stats-minified")
    running.start()
    with client_of(running.stats, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") as client:
        reply = read_all(client)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") and b"application/json" in head
    assert b" " not in body.strip() and json.loads(body)["active_sessions"] == 0
    with client_of(running.stats, b"GET /metrics HTTP/1.1\r\n\r\n") as client:
        reply = read_all(client)
    assert reply.startswith(b"HTTP/1.0 200 OK") and b"text/plain" in reply.partition(b"\r\n\r\n")[0]
    # a client that sends its head in two pieces is served once it is whole
    with client_of(running.stats, b"GET / HT") as client:
        wait_until(lambda: running.worker.stats_clients, 5)
        client.sendall(b"TP/1.1\r\n\r\n")
        assert read_all(client).startswith(b"HTTP/1.0 200 OK")
    wait_until(lambda: not running.worker.stats_clients, 5)


def test_a_silent_http_stats_client_gets_the_json_after_the_wait(make: Any) -> None:
    running = make("--stats-http")
    running.start()
    with client_of(running.stats) as client:
        client.settimeout(5)
        reply = read_all(client)  # the housekeeping tick (once a second) finds its deadline passed
    assert reply.startswith(b"HTTP/1.0 200 OK")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["version"] == UWSGI_VERSION


def test_the_stats_server_takes_a_bounded_number_of_clients(make: Any) -> None:
    from uwsgirouter.stats.exchange import MAX_CLIENTS

    running = make("--stats-http")
    waiting = [client_of(running.stats) for _ in range(MAX_CLIENTS + 1)]
    try:
        for _ in range(MAX_CLIENTS + 1):
            running.worker._serve_stats(0)
        assert len(running.worker.stats_clients) == MAX_CLIENTS
        assert waiting[-1].recv(10) == b"", "one too many is closed at once"
        running.worker._serve_stats(0)  # nothing waits: nothing happens
        assert len(running.worker.stats_clients) == MAX_CLIENTS
    finally:
        for client in waiting:
            client.close()
        for exchange in running.worker.stats_clients.values():
            exchange.close()
        running.worker.stats_clients.clear()
        running.worker.loop.close()


def test_stats_clients_left_at_the_end_are_closed(make: Any) -> None:
    running = make("--stats-http")
    running.start()
    client = client_of(running.stats)
    try:
        wait_until(lambda: running.worker.stats_clients, 5)
        running.signal(signal.SIGINT)
        running.join()
        assert not running.worker.stats_clients
        assert client.recv(10) == b""
    finally:
        client.close()


class FakeRouter:
    """What the document reads of a router process."""

    def __init__(self, sessions: int, mapper: Any) -> None:
        self.sessions = set(range(sessions))
        self.mapper = mapper


def test_the_document_names_the_listeners_counts_sessions_and_says_cheap(node: Backend) -> None:
    router = FakeRouter(3, StaticMapper([node.node], 30))
    assert stats_document(router, ["a"])["cheap"] == 0
    assert json.loads(render(router, ["a"], cheap=True))["cheap"] == 1
    doc = stats_document(router, ["a", "b"], cheap=True)
    assert doc["active_sessions"] == 3 and doc["fastrouter"] == ["a", "b"] and doc["cheap"] == 1
    assert [n["name"] for n in doc["static_nodes"]] == [node.node.name]
    plain = json.loads(render(router, ["a"]))
    assert plain["cheap"] == 0 and plain["fastrouter"] == ["a"]
    assert b"\n" in render(router, ["a"]) and b"\n" not in render(router, ["a"], minified=True).strip()
    metrics = render(router, ["a"], http=True, path="/metrics")
    assert metrics.startswith(b"HTTP/1.0 200 OK") and b"uwsgi" in metrics.lower()
    page = render(router, ["a"], http=True, path="/")
    assert json.loads(page.partition(b"\r\n\r\n")[2])["active_sessions"] == 3


def test_config_type_is_what_the_worker_takes() -> None:
    assert isinstance(load_config([], {}), Config)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "::1"])
def test_a_wildcard_or_loopback_listener_is_reached_through_every_local_address(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("no IPv6")
    try:
        try:
            sock.bind((host, 0))
        except OSError:
            pytest.skip(f"cannot bind {host}")
        port = sock.getsockname()[1]
        assert own_addresses([Listener(sock, "x")]) == {
            ("0.0.0.0", port),
            ("127.0.0.1", port),
            ("::", port),
            ("::1", port),
        }
    finally:
        sock.close()


def test_a_worker_is_number_one_with_its_configuration(tmp_path: Path, node: Backend, rlimit: None) -> None:
    router = unix_listener(tmp_path / "router.sock")
    config = load_config([], {})
    try:
        worker = RouterWorker(config, [router], StaticMapper([node.node], 30))
        assert worker.number == 1 and worker.config is config
        assert worker.loop.notes is worker.notes and worker.routing.notes is worker.notes
        assert worker.notes.logger.name == "uwsgirouter.router"
        worker.loop.close()
    finally:
        router.close()


def test_a_worker_logs_what_its_sessions_report(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    running = make()
    running.start()
    with client_of(running.router, uwsgi_packet(request_vars(host="", SERVER_NAME=""))) as client:
        assert read_all(client).startswith(b"HTTP/1.1 502 Bad Gateway")
    assert "request without a key (UWSGI_FASTROUTER_KEY, HTTP_HOST or SERVER_NAME): answered 502" in messages(caplog)


def test_a_cheap_worker_says_so_in_its_stats(make: Any) -> None:
    running = make()
    running.worker.loop.is_cheap = True
    running.start()
    assert json.loads(stats_of(running))["cheap"] == 1


def test_a_served_stats_client_is_forgotten_and_the_wake_up_pipe_drained(make: Any) -> None:
    running = make()
    running.start()
    stats_of(running)
    wait_until(lambda: not running.worker.stats_clients, 5)
    watched = {running.worker._wakeup_r, running.stats.fileno(), running.router.fileno()}
    assert running.worker.loop.watched() == watched, "the stats client's descriptor is forgotten"
    running.worker.wake()
    running.worker.wake()

    def drained() -> bool:  # looked at without reading from it
        with select.epoll() as poller:
            poller.register(running.worker._wakeup_r, select.EPOLLIN)
            return not poller.poll(0)

    wait_until(drained, 5)
