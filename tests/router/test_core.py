"""The router's loop (router/core.py) in process: a real listening UNIX socket, ``run()`` in a thread that the test
stops through a wake-up pipe, played clients and nodes; and its handlers called directly where time must be
controlled (the sweep, the drain rules). No process is started."""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.router.conftest import client_of, descriptors_left, messages
from tests.router.fakeloop import Backend, routing_for, static_routing
from tests.support import read_all, recv_exactly, request_vars, uwsgi_packet
from tools.harness import wait_until
from uwsgirouter.router import sysio
from uwsgirouter.router.core import (
    ACCEPT_BURST,
    ACCEPT_PAUSE_S,
    BACKEND_HEADROOM,
    SPARE_FDS,
    RouterLoop,
    client_limit,
    fd_budget,
)
from uwsgirouter.router.loop import Callback, Settings
from uwsgirouter.router.mappers import Mapper
from uwsgirouter.router.nodes import Node
from uwsgirouter.router.routing import Routing
from uwsgirouter.router.session import DONE, HEAD, RELAY, WAITING

GET = uwsgi_packet(request_vars(host="example.com", path="/x"))
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class LiveMapper(Mapper):
    """A mapper whose nodes come and go (as the subscription table's): ``live`` is what cheap mode sees."""

    def __init__(self, nodes: Sequence[Node] = (), live: int = 0) -> None:
        self.nodes = list(nodes)
        self.live = live

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        return next((n for n in self.nodes if n not in tried), None)

    def live_nodes(self) -> int | None:
        return self.live


def make_loop(listener: socket.socket, routing: Routing, settings: Settings | None = None, **kwargs: Any) -> RouterLoop:
    return RouterLoop([listener], routing, settings or Settings(), routing.notes, **kwargs)


class Running:
    """``loop.run()`` in a thread; ``stop()`` sets ``exit_now`` and wakes it through a pipe the loop watches."""

    def __init__(self, loop: RouterLoop, tick: Callable[[], None] | None = None, interval: float = 0.01) -> None:
        self.loop = loop
        self.ticks = 0
        self.tick = tick
        self.error: BaseException | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop.watch(self.wake_r, self._drain)
        self.thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self.thread.start()

    def _drain(self, events: int) -> None:
        try:
            os.read(self.wake_r, 512)
        except BlockingIOError:
            pass

    def _tick(self) -> None:
        self.ticks += 1
        if self.tick is not None:
            self.tick()

    def _run(self, interval: float) -> None:
        try:
            self.loop.run(self._tick, interval)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def wake(self) -> None:
        os.write(self.wake_w, b"x")

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the loop did not end"
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.loop.close()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.loop.exit_now = True
        self.wake()
        self.join()


# -- the descriptor budget --------------------------------------------------------------------------------------


def test_the_budget_is_the_descriptor_limit_less_the_process_own_and_a_spare() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fd_budget(10) == hard - 10 - SPARE_FDS
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_budget_raises_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert fd_budget(20) == hard - 20 - SPARE_FDS
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_budget_keeps_the_soft_limit_when_it_cannot_be_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (300, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert fd_budget(20) == 300 - 20 - SPARE_FDS
    assert fd_budget(1000) == 2, "never less than two"


def test_an_unlimited_descriptor_limit_gives_a_huge_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    unlimited = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda which: (unlimited, unlimited))
    assert fd_budget(20) == 1 << 30


def test_clients_leave_headroom_for_backends() -> None:
    assert client_limit(10_000) == 10_000 - BACKEND_HEADROOM
    assert client_limit(400) == 300, "a quarter of a small budget"
    assert client_limit(401) == 301 and isinstance(client_limit(401), int)
    assert client_limit(1) == 1
    assert client_limit(0) == 1


def test_size_to_sets_both_limits(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        loop.size_to(40)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert loop.fd_budget == hard - 40 - SPARE_FDS
    assert loop.fd_limit == client_limit(loop.fd_budget)
    loop.close()


# -- serving ----------------------------------------------------------------------------------------------------


def test_a_request_is_accepted_routed_answered_and_counted(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    running = Running(loop)
    try:
        client = client_of(listener, GET)
        conn = node.accept()
        assert recv_exactly(conn, len(GET)) == GET
        wait_until(lambda: loop.descriptors == 2, 5)
        assert len(loop.sessions) == 1
        conn.sendall(ANSWER)
        conn.close()
        assert read_all(client) == ANSWER
        client.close()
        wait_until(lambda: not loop.sessions, 5)
        assert loop.descriptors == 0
        assert loop.requests == 1 and loop.bytes_sent == len(ANSWER)
        assert loop.running_us >= 0 and loop.avg_rt_us == loop.running_us // 2
        time.sleep(0.02)  # time passing, not a wait: the tick is due at the first wake-up after its interval
        running.wake()
        wait_until(lambda: running.ticks >= 1, 5, what="the tick runs at a wake-up after its interval")
    finally:
        running.stop()


def test_a_long_answer_reaches_a_client_that_reads_it_late(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    running = Running(loop)
    try:
        client = client_of(listener, GET)
        conn = node.accept()
        recv_exactly(conn, len(GET))
        answer = bytes(range(256)) * 8192  # 2 MiB: the router waits for the client to take it
        sender = threading.Thread(target=conn.sendall, args=(answer,), daemon=True)
        sender.start()

        def node_held_back() -> bool:
            sessions = list(loop.sessions)
            backend = sessions[0].backend if len(sessions) == 1 else None
            return backend is not None and not backend.mask & select.EPOLLIN

        wait_until(node_held_back, 5, what="the router to stop reading the node while the client lags")
        got = bytearray()
        for _ in range(10000):
            chunk = client.recv(1 << 20)
            got += chunk
            if len(got) >= len(answer):
                break
        sender.join(5)
        conn.close()
        assert bytes(got) == answer
        assert client.recv(10) == b""
        client.close()
    finally:
        running.stop()


def test_an_event_for_a_descriptor_forgotten_meanwhile_is_skipped(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    r, w = os.pipe()
    seen: list[int] = []
    loop.watch(r, seen.append)
    loop.forget(r)  # still in the epoll set until it is closed, with no handler any more
    os.write(w, b"x")
    running = Running(loop)
    try:
        time.sleep(0.05)  # a window in which nothing may happen (the forgotten descriptor is ready throughout)
        assert seen == []
        assert serve_one_request(listener, node) == ANSWER
    finally:
        running.stop()
        os.close(r)
        os.close(w)


def serve_one_request(listener: socket.socket, node: Backend) -> bytes:
    client = client_of(listener, GET)
    conn = node.accept()
    recv_exactly(conn, len(GET))
    conn.sendall(ANSWER)
    conn.close()
    answer = read_all(client)
    client.close()
    return answer


def test_the_request_counters_keep_uwsgis_running_average(listener: socket.socket, node: Backend) -> None:
    loop = armed(make_loop(listener, static_routing(node.node)), listener)
    loop.now = 100.0
    loop.session_ended(object(), True, 10, 100.0 - 0.000003)  # type: ignore[arg-type]  # 3 us
    assert (loop.requests, loop.running_us, loop.avg_rt_us, loop.bytes_sent) == (1, 3, 1, 10)
    loop.session_ended(object(), True, 5, 99.0)  # type: ignore[arg-type]  # 1 s
    assert (loop.requests, loop.running_us, loop.avg_rt_us) == (2, 1_000_003, 500_000)
    assert isinstance(loop.avg_rt_us, int)
    loop.session_ended(object(), False, 7, 0.0)  # type: ignore[arg-type]  # no request: not counted
    loop.session_ended(object(), True, 1, 200.0)  # type: ignore[arg-type]  # a clock step back counts as 0
    assert (loop.requests, loop.running_us, loop.avg_rt_us, loop.bytes_sent) == (3, 1_000_003, 250_000, 16)
    loop.close()


def test_a_new_loop_has_uwsgis_defaults(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    assert (loop.mercy, loop.head_grace) == (60.0, 4.0)
    assert loop.max_sessions == loop.fd_limit == loop.fd_budget == 1 << 30, "no limit until size_to"
    assert (loop.requests, loop.running_us, loop.avg_rt_us, loop.bytes_sent) == (0, 0, 0, 0)
    assert not (loop.accepting or loop.is_cheap or loop.stopping or loop.shutting_down or loop.exit_now)
    assert make_loop(listener, static_routing(node.node), max_sessions=7).max_sessions == 7
    loop.close()


def test_a_loop_at_its_limit_says_so_once_a_second(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = armed(make_loop(listener, static_routing(node.node), max_sessions=1), listener)
    first = client_of(listener, GET[:3])
    loop_acceptor(loop, listener)()
    second = client_of(listener, GET[:3])
    for _ in range(3):
        loop_acceptor(loop, listener)()
    assert messages(caplog).count("1 sessions (--fastrouter-events): not accepting until one ends") == 1
    loop.close()
    first.close()
    second.close()


def test_an_accept_without_descriptors_pauses_and_the_loop_resumes_by_itself(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = make_loop(listener, static_routing(node.node))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    running = Running(loop)
    try:
        with descriptors_left(0):  # not even the client's descriptor
            client.connect(listener.getsockname())
            client.sendall(GET)
            wait_until(
                lambda: "cannot accept a connection: Too many open files; pausing accepts briefly" in messages(caplog),
                5,
            )
            assert not loop.sessions
        conn = node.accept()  # accepted once the pause is over, with no other event
        recv_exactly(conn, len(GET))
        conn.sendall(ANSWER)
        conn.close()
        assert read_all(client) == ANSWER
    finally:
        running.stop()
        client.close()


def test_a_silent_client_is_closed_by_the_sweep(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node), Settings(timeout=0.1))
    running = Running(loop)
    try:
        client = client_of(listener, GET[:5])
        wait_until(lambda: len(loop.sessions) == 1, 5)
        started = time.monotonic()
        assert client.recv(10) == b"", "closed without an answer"
        assert time.monotonic() - started < 3
        client.close()
        wait_until(lambda: not loop.sessions, 5)
    finally:
        running.stop()


def test_the_sweep_times_out_only_sessions_idle_for_the_timeout(listener: socket.socket, node: Backend) -> None:
    loop = armed(make_loop(listener, static_routing(node.node), Settings(timeout=10)), listener)
    loop.now = 1000.0
    accept = loop_acceptor(loop, listener)
    old = client_of(listener, GET[:3])
    accept()
    loop.now = 1005.0
    new = client_of(listener, GET[:3])
    accept()
    assert len(loop.sessions) == 2
    loop.now = 1010.0
    loop.sweep()
    assert len(loop.sessions) == 2, "idle for exactly the timeout: not yet"
    loop.now = 1010.5
    loop.sweep()
    assert len(loop.sessions) == 1
    assert old.recv(10) == b""
    (left,) = loop.sessions
    assert left.started == 1005.0 and left.state == HEAD
    loop.close()
    assert left.state == DONE
    old.close()
    new.close()


def armed(loop: RouterLoop, listener: socket.socket) -> RouterLoop:
    """The loop as run() sets it up: the listener watched, accepting."""
    loop.watch(listener.fileno(), loop_handler(loop, listener))
    loop.accepting = True
    return loop


def loop_acceptor(loop: RouterLoop, listener: socket.socket) -> Callable[[], None]:
    """What the loop does when the listener is readable, as a call."""
    return lambda: loop.accept(listener.fileno())


# -- accepting: the session cap and the descriptor budget ---------------------------------------------------------


def test_at_the_session_cap_the_router_stops_accepting_until_a_session_ends(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = make_loop(listener, static_routing(node.node), max_sessions=1)
    running = Running(loop)
    try:
        first = client_of(listener, GET)
        conn = node.accept()
        recv_exactly(conn, len(GET))
        wait_until(lambda: not loop.accepting, 5)
        second = client_of(listener, GET)
        time.sleep(0.05)  # the second waits in the listen queue: no session takes it
        assert len(loop.sessions) == 1
        assert "1 sessions (--fastrouter-events): not accepting until one ends" in messages(caplog)
        conn.sendall(ANSWER)
        conn.close()
        assert read_all(first) == ANSWER
        again = node.accept()  # the second is accepted once the first ended
        recv_exactly(again, len(GET))
        again.sendall(ANSWER)
        again.close()
        assert read_all(second) == ANSWER
        first.close()
        second.close()
    finally:
        running.stop()


def test_at_the_descriptor_limit_the_router_stops_accepting(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = make_loop(listener, static_routing(node.node))
    loop.fd_limit = 2
    armed(loop, listener)
    loop.now = 50.0
    accept = loop_acceptor(loop, listener)
    first = client_of(listener, GET[:3])
    accept()
    assert loop.accepting, "one descriptor of two"
    second = client_of(listener, GET[:3])
    accept()
    assert not loop.accepting
    assert "descriptor limit reached (2 sessions, 2 descriptors): not accepting until one ends" in messages(caplog)
    third = client_of(listener, GET[:3])
    accept()  # a readiness event that still came: refused, not accepted
    assert len(loop.sessions) == 2
    first.close()
    poll_once(loop)
    assert len(loop.sessions) == 1 and loop.accepting, "a session ended: accepting again"
    loop.close()
    for sock in (second, third):
        sock.close()


def loop_handler(loop: RouterLoop, listener: socket.socket) -> Callable[[int], None]:
    return lambda events: loop.accept(listener.fileno())


def poll_once(loop: RouterLoop, timeout: float = 0.5) -> None:
    ready = sysio.epoll_wait(loop.epfd, int(timeout * 1000), 64)
    for fd, events in zip(ready[::2], ready[1::2], strict=True):
        watcher = loop.handlers[fd]
        if watcher is not None:
            watcher.ready(fd, events)


def test_accept_errors_pause_or_pass(listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = armed(make_loop(listener, static_routing(node.node)), listener)
    loop.now = 10.0

    def failing(code: int) -> Callable[[int], int]:
        return lambda fd: -code

    fd = listener.fileno()
    loop.accept(fd, failing(errno.EAGAIN))  # another process took it
    loop.accept(fd, failing(errno.ECONNABORTED))  # the client left first
    assert loop.accepting and not loop.sessions
    loop.accept(fd, failing(errno.EMFILE))
    assert not loop.accepting
    assert loop.accept_paused_until == 10.0 + ACCEPT_PAUSE_S
    assert "cannot accept a connection: Too many open files; pausing accepts briefly" in messages(caplog)
    with pytest.raises(OSError, match="Bad file descriptor") as unexpected:
        loop.accept(fd, failing(errno.EBADF))
    assert unexpected.value.errno == errno.EBADF
    # the pause holds until its end, then accepting resumes
    loop.session_ended(object(), False, 0, 0)
    assert not loop.accepting
    loop.now = 10.0 + ACCEPT_PAUSE_S
    loop.session_ended(object(), False, 0, 0)
    assert loop.accepting  # the listener is watched again: a client is accepted
    client = client_of(listener, GET[:3])
    poll_once(loop)
    assert len(loop.sessions) == 1
    loop.close()
    client.close()


def test_a_request_that_finds_no_descriptor_waits_and_is_served_when_one_frees(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = make_loop(listener, static_routing(node.node))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    running = Running(loop)
    try:
        with descriptors_left(1):  # room for the client, none for its node
            client.connect(listener.getsockname())
            client.sendall(GET)
            wait_until(lambda: loop.fd_waiters, 5)
            (session,) = loop.sessions
            assert session.state == WAITING
            assert not loop.accepting
        conn = node.accept()
        assert recv_exactly(conn, len(GET)) == GET
        conn.sendall(ANSWER)
        conn.close()
        assert read_all(client) == ANSWER
        wait_until(lambda: loop.accepting, 5)
        assert "descriptor limit reached (1 sessions, 1 descriptors): 1 request(s) wait for a descriptor" in messages(
            caplog
        )
    finally:
        running.stop()
        client.close()


def test_waiting_requests_resume_only_while_the_budget_has_room(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    resumed: list[int] = []

    def resume(number: int) -> Callable[[], None]:
        def call() -> None:
            resumed.append(number)
            loop.descriptors += 1

        return call

    loop.fd_budget = 2
    for number in range(3):
        loop.wait_for_descriptor(resume(number))
    loop.exit_now = False
    # what run() does once per wake-up while requests wait
    loop.descriptors = 1
    loop._resume_fd_waiters()
    assert resumed == [0] and len(loop.fd_waiters) == 2
    loop.descriptors = 0
    loop._resume_fd_waiters()
    assert resumed == [0, 1, 2] and not loop.fd_waiters
    loop.close()


# -- cheap mode -------------------------------------------------------------------------------------------------


def test_cheap_mode_stops_accepting_while_no_node_lives_and_resumes_when_one_comes(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    mapper = LiveMapper([node.node], live=0)
    loop = make_loop(listener, routing_for(mapper, cheap=True))
    running = Running(loop)
    try:
        wait_until(lambda: loop.is_cheap and not loop.accepting, 5)
        assert "no more nodes available. Going cheap..." in messages(caplog)
        client = client_of(listener, GET)
        time.sleep(0.15)  # a window in which nothing may happen: the connection waits, ready, in the listen queue
        assert not loop.sessions, "a cheap router leaves connections to the app workers"
        mapper.live = 1
        wait_until(lambda: not loop.is_cheap and loop.accepting, 5)
        assert "leaving cheap mode..." in messages(caplog)
        conn = node.accept()
        assert recv_exactly(conn, len(GET)) == GET
        conn.sendall(ANSWER)
        conn.close()
        assert read_all(client) == ANSWER
        client.close()
        mapper.live = 0
        wait_until(lambda: loop.is_cheap and not loop.accepting, 5)
    finally:
        running.stop()


def test_a_cheap_router_looks_at_the_table_before_it_accepts(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    mapper = LiveMapper([node.node], live=1)
    loop = armed(make_loop(listener, routing_for(mapper, cheap=True)), listener)
    client = client_of(listener, GET[:3])
    mapper.live = 0
    loop_acceptor(loop, listener)()
    assert loop.is_cheap and not loop.sessions and not loop.accepting
    mapper.live = 2
    loop_acceptor(loop, listener)()
    assert not loop.is_cheap and len(loop.sessions) == 1
    loop.go_cheap()
    loop.go_cheap()
    assert messages(caplog).count("no more nodes available. Going cheap...") == 2, "once per going cheap"
    loop.close()
    client.close()


def test_a_router_with_live_nodes_stays_out_of_cheap_mode(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = make_loop(listener, routing_for(LiveMapper([node.node], live=1), cheap=True))
    running = Running(loop)
    try:
        assert serve_one_request(listener, node) == ANSWER
        loop.check_cheap()
        assert not loop.is_cheap and loop.accepting
    finally:
        running.stop()
    assert not [m for m in messages(caplog) if "cheap" in m]


def test_a_stopping_router_does_not_go_cheap(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, routing_for(LiveMapper(live=0), cheap=True))
    loop.stopping = True
    loop.check_cheap()
    assert not loop.is_cheap
    loop.stopping = False
    loop.check_cheap()
    assert loop.is_cheap
    loop.close()


# -- draining ---------------------------------------------------------------------------------------------------


def test_a_retiring_router_stops_accepting_and_ends_when_its_sessions_are_done(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = make_loop(listener, static_routing(node.node))
    running = Running(loop)
    client = client_of(listener, GET)
    late: socket.socket | None = None
    try:
        conn = node.accept()
        recv_exactly(conn, len(GET))
        loop.stopping = True
        running.wake()
        wait_until(lambda: "retiring (reload), 1 session(s) in flight" in messages(caplog), 5)
        assert loop.door_closed_at and not loop.accepting
        late = client_of(listener, GET)
        time.sleep(0.1)  # a window in which nothing may happen: the newcomer waits, ready, in the listen queue
        assert len(loop.sessions) == 1, "no newcomer is accepted"
        conn.sendall(ANSWER)
        conn.close()
        assert read_all(client) == ANSWER
        running.join()  # the loop ended by itself
    finally:
        if running.thread.is_alive():
            running.stop()
        client.close()
        if late is not None:
            late.close()


def test_a_graceful_stop_answers_newcomers_503_and_ends_when_the_proxied_requests_are_done(
    listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = make_loop(listener, static_routing(node.node))
    running = Running(loop)
    client = client_of(listener, GET)
    try:
        conn = node.accept()
        recv_exactly(conn, len(GET))
        loop.stopping = loop.shutting_down = True
        running.wake()
        wait_until(lambda: "graceful stop (new requests get 503), 1 session(s) in flight" in messages(caplog), 5)
        with client_of(listener, GET) as newcomer:
            assert read_all(newcomer).startswith(b"HTTP/1.1 503 Service Unavailable")
        assert not loop.door_closed_at, "the door stays open while a request is proxied"
        conn.sendall(ANSWER)
        conn.close()
        assert read_all(client) == ANSWER
        running.join()
    finally:
        if running.thread.is_alive():
            running.stop()
        client.close()


def accepted(loop: RouterLoop, listener: socket.socket, data: bytes) -> socket.socket:
    client = client_of(listener, data)
    loop_acceptor(loop, listener)()
    return client


def test_a_graceful_stop_gives_heads_still_arriving_the_head_grace(listener: socket.socket, node: Backend) -> None:
    loop = armed(make_loop(listener, static_routing(node.node), mercy=60, head_grace=4), listener)
    loop.now = 100.0
    slow = accepted(loop, listener, GET[:3])
    loop.stopping = loop.shutting_down = True
    assert loop.drained() is False
    assert loop.door_closed_at == 100.0, "nothing proxied: the door closes at once"
    assert not loop.accepting
    loop.now = 104.0
    assert loop.drained() is False, "within the head grace"
    loop.now = 104.5
    assert loop.drained() is True
    loop.close()
    slow.close()


def test_a_graceful_stop_keeps_the_door_open_while_a_request_is_proxied(listener: socket.socket, node: Backend) -> None:
    loop = armed(make_loop(listener, static_routing(node.node), mercy=60, head_grace=4), listener)
    loop.now = 100.0
    proxied = accepted(loop, listener, GET)
    (session,) = loop.sessions
    assert session.state == RELAY
    loop.stopping = loop.shutting_down = True
    assert loop.drained() is False
    loop.now = 110.0
    assert loop.drained() is False and not loop.door_closed_at
    conn = node.accept()
    conn.sendall(ANSWER)
    conn.close()
    for _ in range(50):
        poll_once(loop, 0.05)
        if not loop.sessions:
            break
    assert loop.drained() is True
    loop.close()
    proxied.close()


def test_mercy_cuts_what_is_left(listener: socket.socket, node: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    loop = armed(make_loop(listener, static_routing(node.node), mercy=5, head_grace=4), listener)
    loop.now = 100.0
    proxied = accepted(loop, listener, GET)
    loop.stopping = True
    assert loop.drained() is False
    assert loop.stop_deadline == 105.0
    loop.now = 104.9
    assert loop.drained() is False
    loop.now = 105.0
    assert loop.drained() is True
    assert "1 session(s) cut after 5 s of mercy" in messages(caplog)
    loop.close()
    assert not proxied.recv(10)
    proxied.close()


def test_a_retiring_router_is_done_at_once_without_sessions(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    loop.stopping = True
    assert loop.drained() is True
    loop.close()


def test_exit_now_leaves_at_once_and_close_ends_every_session(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    running = Running(loop)
    client = client_of(listener, GET)
    conn = node.accept()
    recv_exactly(conn, len(GET))
    running.stop()
    assert client.recv(10) == b"", "the client's connection is closed"
    assert conn.recv(10) == b"", "the node's connection is closed"
    assert not loop.sessions
    conn.close()
    client.close()


def run_one_wake_up(loop: RouterLoop, deadline: float = 5.0) -> None:
    """``loop.run()`` until a watcher sets ``exit_now``, failing instead of waiting past ``deadline`` seconds."""
    give_up = time.monotonic() + deadline

    def tick() -> None:
        assert time.monotonic() < give_up, "no watcher ended the loop"

    loop.run(tick, 0.1)


def test_each_watcher_of_one_wake_up_gets_its_own_events(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    r, w = os.pipe()
    r2, w2 = os.pipe()
    os.write(w, b"x")
    seen: list[tuple[str, int]] = []

    def recorder(name: str) -> Callable[[int], None]:
        def on_ready(events: int) -> None:
            seen.append((name, events))
            loop.exit_now = True  # after this wake-up

        return on_ready

    loop.watch(r, recorder("readable"), select.EPOLLIN)
    loop.watch(w2, recorder("writable"), select.EPOLLOUT)
    run_one_wake_up(loop)
    assert sorted(seen) == [("readable", select.EPOLLIN), ("writable", select.EPOLLOUT)]
    assert loop.busy, "a wake-up with two events is a busy one (accepts come in bursts)"
    loop.close()
    for fd in (r, w, r2, w2):
        os.close(fd)


def test_a_descriptor_unregistered_earlier_in_the_same_wake_up_is_skipped(
    listener: socket.socket, node: Backend
) -> None:
    loop = make_loop(listener, static_routing(node.node))
    (a, a_w), (b, b_w) = os.pipe(), os.pipe()
    os.write(a_w, b"x")
    os.write(b_w, b"x")
    ran: list[int] = []

    def first_of(mine: int, other: int) -> Callable[[int], None]:
        def on_ready(events: int) -> None:
            ran.append(mine)
            loop.unregister(other)  # as a session does when it drops its node: the event in hand is stale
            loop.exit_now = True

        return on_ready

    loop.register(a, Callback(first_of(a, b)), select.EPOLLIN)
    loop.register(b, Callback(first_of(b, a)), select.EPOLLIN)
    run_one_wake_up(loop)
    assert len(ran) == 1, "the second event of the wake-up belonged to a descriptor no longer watched"
    loop.close()
    for fd in (a, a_w, b, b_w):
        os.close(fd)


def test_the_epoll_set_refuses_what_it_cannot_watch(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    closed = os.dup(0)
    os.close(closed)
    with pytest.raises(OSError) as refused:
        loop.watch(closed, lambda events: None)
    assert refused.value.errno == errno.EBADF
    assert loop.watched() == set(), "nothing half-registered"
    r, w = os.pipe()
    with pytest.raises(OSError) as unknown:
        loop.modify(r, select.EPOLLIN)
    assert unknown.value.errno == errno.ENOENT, "a descriptor the set does not hold"
    loop.close()
    loop.close()  # twice is no error
    os.close(r)
    os.close(w)


def test_watch_and_forget_do_not_count_against_the_budget(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    r, w = os.pipe()
    seen: list[int] = []
    loop.watch(r, seen.append)
    assert loop.descriptors == 0
    os.write(w, b"x")
    poll_once(loop)
    assert seen == [select.EPOLLIN]
    loop.forget(r)
    loop.forget(r)  # twice is no error
    loop.forget(len(loop.handlers))  # one it never watched: no error either
    assert loop.handlers[r] is None, "forgotten"
    loop.close()
    os.close(r)
    os.close(w)


# -- accepting in bursts, and what the kernel is asked to watch ------------------------------------------------------


def test_a_quiet_wake_up_takes_one_connection_and_a_busy_one_a_burst(listener: socket.socket, node: Backend) -> None:
    loop = armed(make_loop(listener, static_routing(node.node)), listener)
    clients = [client_of(listener, GET[:3]) for _ in range(ACCEPT_BURST + 4)]
    try:
        assert not loop.busy
        loop_acceptor(loop, listener)()
        assert len(loop.sessions) == 1, "the readiness event promised one"
        loop.busy = True
        loop_acceptor(loop, listener)()
        assert len(loop.sessions) == 1 + ACCEPT_BURST
        loop_acceptor(loop, listener)()
        assert len(loop.sessions) == len(clients), "the rest; the queue is then empty, without an error"
    finally:
        loop.close()
        for client in clients:
            client.close()


def test_a_client_gone_before_its_accept_does_not_end_the_burst(listener: socket.socket, node: Backend) -> None:
    loop = armed(make_loop(listener, static_routing(node.node)), listener)
    loop.busy = True
    clients = [client_of(listener, GET[:3]) for _ in range(2)]
    calls = 0

    def accept(fd: int) -> int:
        nonlocal calls
        calls += 1
        return -errno.ECONNABORTED if calls == 1 else sysio.accept(fd)

    loop.accept(listener.fileno(), accept)
    assert len(loop.sessions) == 2
    loop.close()
    for client in clients:
        client.close()


def test_the_loop_knows_a_busy_wake_up_from_a_quiet_one(listener: socket.socket, node: Backend) -> None:
    loop = make_loop(listener, static_routing(node.node))
    pipes = [os.pipe() for _ in range(2)]
    seen: list[bool] = []

    def reader(fd: int) -> Callable[[int], None]:
        def on_ready(events: int) -> None:
            seen.append(loop.busy)
            os.read(fd, 16)

        return on_ready

    for r, _ in pipes:
        loop.watch(r, reader(r))
    for _, w in pipes:
        os.write(w, b"x")  # both ready at the first wake-up
    running = Running(loop)
    try:
        wait_until(lambda: len(seen) == 2, 5)
        assert seen == [True, True], "two events: busy"
        os.write(pipes[0][1], b"x")
        wait_until(lambda: len(seen) == 3, 5)
        assert seen[2] is False, "one event: quiet"
    finally:
        running.stop()
        for r, w in pipes:
            os.close(r)
            os.close(w)


def watched_masks(loop: RouterLoop) -> dict[int, int]:
    """What the kernel's epoll set watches, from /proc: descriptor -> event mask."""
    masks = {}
    for line in Path(f"/proc/self/fdinfo/{loop.epfd}").read_text().splitlines():
        if line.startswith("tfd:"):
            fields = line.split()
            masks[int(fields[1])] = int(fields[3], 16) & ~(select.EPOLLERR | select.EPOLLHUP)  # always reported
    return masks


def test_the_kernel_watches_what_the_sessions_and_the_process_asked_for(listener: socket.socket, node: Backend) -> None:
    loop = armed(make_loop(listener, static_routing(node.node)), listener)
    r, w = os.pipe()
    loop.watch(r, lambda events: None, select.EPOLLOUT)
    client = client_of(listener, GET)
    loop_acceptor(loop, listener)()
    (session,) = loop.sessions
    backend = session.backend
    assert backend is not None
    masks = watched_masks(loop)
    assert masks[r] == select.EPOLLOUT
    assert masks[listener.fileno()] == select.EPOLLIN
    assert masks[session.client.fd] == select.EPOLLIN
    assert masks[backend.fd] == select.EPOLLIN | select.EPOLLRDHUP
    client.shutdown(socket.SHUT_WR)
    poll_once(loop)
    assert watched_masks(loop)[session.client.fd] == 0, "a client at its end of input is not read"
    loop.close()
    client.close()
    os.close(r)
    os.close(w)
