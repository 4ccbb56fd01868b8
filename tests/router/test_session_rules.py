"""The session's finer rules in process, each checked where a user (or the mapper, or the log) can see it: what the
mapper hears, the counters, the exact lines and pages, the modifiers, when the node is connected, and how many
wake-ups an answer takes."""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.router.conftest import (
    descriptors_left,
    messages,
    read_to_end,
    recv_stepping,
    send_stepping,
    steps,
    tcp_backend,
)
from tests.router.fakeloop import Backend, FakeLoop, open_session, routing_for, static_routing
from tests.support import recv_exactly, request_vars, uwsgi_packet
from uwsgirouter.router.loop import Settings
from uwsgirouter.router.mappers import Mapper, StaticMapper
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.router.session import BUFFERING, DONE, FILE_CHUNK, RELAY, WAITING, Session

GET = uwsgi_packet(request_vars(host="example.com", path="/x"))
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Recording(Mapper):
    """A static mapper that records what the data path tells it."""

    def __init__(self, nodes: Sequence[Node], gracetime: float = 30.0) -> None:
        self.inner = StaticMapper(nodes, gracetime)
        self.calls: list[tuple[str, object]] = []

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        return self.inner.pick(key, tried, now)

    def failed(self, node: Node, now: float) -> None:
        self.calls.append(("failed", node))
        self.inner.failed(node, now)

    def done(self, node: Node) -> None:
        self.calls.append(("done", node))


def sent(
    loop: FakeLoop, routing_mapper: Mapper, request: bytes = GET, settings: Settings | None = None
) -> tuple[Session, socket.socket]:
    session, client = open_session(loop, routing_for(routing_mapper), settings)
    client.sendall(request)
    loop.step(0.3)
    return session, client


# -- what the mapper hears ----------------------------------------------------------------------------------------


def test_the_mapper_hears_once_that_a_session_using_a_node_ended(loop: FakeLoop, node: Backend) -> None:
    mapper = Recording([node.node])
    _session, client = sent(loop, mapper)
    conn = node.accept()
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    assert mapper.calls == [("done", node.node)]
    client.close()


def test_the_mapper_hears_each_failed_node_and_no_end_for_a_node_never_used(loop: FakeLoop, tmp_path: Path) -> None:
    gone = [make_node(str(tmp_path / f"gone{n}.sock")) for n in range(2)]
    mapper = Recording(gone)
    _session, client = sent(loop, mapper)
    assert read_to_end(client, loop).startswith(b"HTTP/1.1 502 Bad Gateway")
    assert mapper.calls == [("failed", gone[0]), ("failed", gone[1])]
    client.close()


def test_the_mapper_hears_the_end_of_both_nodes_of_a_resent_request(
    loop: FakeLoop, node: Backend, nodes: Callable[[str], Backend]
) -> None:
    second = nodes("second.sock")
    mapper = Recording([node.node, second.node])
    _session, client = sent(loop, mapper)
    node.accept().close()
    steps(loop, 10)
    conn = second.accept()
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    assert mapper.calls == [("done", node.node), ("done", second.node)]
    client.close()


def test_a_node_given_up_for_want_of_a_descriptor_is_handed_back(loop: FakeLoop, node: Backend) -> None:
    mapper = Recording([node.node])
    session, client = open_session(loop, routing_for(mapper))
    with descriptors_left(0):
        client.sendall(GET)
        loop.step(0.3)
    assert session.state == WAITING
    assert mapper.calls == [("done", node.node)]
    client.close()
    session.close()
    assert mapper.calls == [("done", node.node)], "nothing more: the session never used it"


def test_a_node_that_broke_and_is_then_gone_leaves_a_502(loop: FakeLoop, node: Backend) -> None:
    session, client = sent(loop, StaticMapper([node.node], 30))
    conn = node.accept()
    node.listener.close()
    node.path.unlink()
    conn.close()  # broke without answering; the retry finds it gone
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"no node could be reached for key example.com" in answer
    assert session.resends and node.node.stats.failures == 1
    client.close()


# -- counters ------------------------------------------------------------------------------------------------------


def test_node_counters_add_up_over_sessions(loop: FakeLoop, node: Backend, tmp_path: Path) -> None:
    for _ in range(2):
        _session, client = sent(loop, StaticMapper([node.node], 30))
        conn = node.accept()
        recv_exactly(conn, len(GET))
        conn.sendall(ANSWER)
        conn.close()
        assert read_to_end(client, loop) == ANSWER
        client.close()
    stats = node.node.stats
    assert (stats.hits, stats.bytes_to_node, stats.bytes_from_node) == (2, 2 * len(GET), 2 * len(ANSWER))
    gone = make_node(str(tmp_path / "gone.sock"))
    for _ in range(2):
        _session, client = sent(loop, StaticMapper([gone], 0))  # no grace time: tried every time
        read_to_end(client, loop)
        client.close()
    assert gone.stats.failures == 2


# -- lines and pages -----------------------------------------------------------------------------------------------


def test_a_node_that_is_the_router_itself_is_named_in_a_line(
    loop: FakeLoop, node: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    itself = make_node(str(tmp_path / "router.sock"))
    routing = static_routing(itself, node.node, own_addresses=frozenset({itself.sockaddr}))
    session, client = open_session(loop, routing)
    client.sendall(GET)
    loop.step(0.3)
    assert f"key example.com: node {itself.name} is this router itself; skipped" in messages(caplog)
    assert itself.dead_until > 0, "marked like a node that refused"
    client.close()
    session.close()


def test_a_socket_that_cannot_be_made_is_answered_once_and_no_other_node_is_tried(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    odd = Node("odd", 4242, b"x")
    _session, client = open_session(loop, static_routing(odd, node.node))
    client.sendall(GET)
    answer = read_to_end(client, loop)
    assert answer.count(b"HTTP/1.1 503 Service Unavailable") == 1
    assert node.node.stats.hits == 0
    assert "key example.com: cannot create a socket for node odd: Address family not supported by protocol" in messages(
        caplog
    )
    client.close()


def test_a_body_that_cannot_be_buffered_is_named_with_the_os_error(
    loop: FakeLoop, node: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    missing = tmp_path / "missing"
    settings = Settings(post_buffering=16, post_buffering_dir=str(missing))
    body = b"b" * 100
    _session, client = sent(
        loop, StaticMapper([node.node], 30), uwsgi_packet(request_vars(method="POST", body_len=100)) + body, settings
    )
    read_to_end(client, loop)
    assert any(
        m.startswith("key : cannot buffer the request body: [Errno 2] No such file or directory") and str(missing) in m
        for m in messages(caplog)
    )
    client.close()


def test_an_invalid_request_is_named_in_its_line(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    _session, client = sent(loop, StaticMapper([node.node], 30), b"\x00\x04\x00\x00\xff\xff\x00\x00")
    read_to_end(client, loop)
    (line,) = [m for m in messages(caplog) if m.startswith("invalid request from client: ")]
    assert len(line) > len("invalid request from client: ") + 5 and "None" not in line
    client.close()


def test_a_router_shutting_down_says_so_in_its_503(loop: FakeLoop, node: Backend) -> None:
    loop.shutting_down = True
    _session, client = sent(loop, StaticMapper([node.node], 30))
    answer = read_to_end(client, loop)
    assert answer.endswith(b"503 Service Unavailable: the router is shutting down\n")
    client.close()


def test_a_request_without_a_key_is_logged_with_where_a_key_comes_from(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    _session, client = sent(loop, StaticMapper([node.node], 30), uwsgi_packet(request_vars(host="", SERVER_NAME="")))
    read_to_end(client, loop)
    assert "request without a key (UWSGI_FASTROUTER_KEY, HTTP_HOST or SERVER_NAME): answered 502" in messages(caplog)
    client.close()


def test_a_request_waiting_too_long_for_a_descriptor_says_why_in_its_503(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    with descriptors_left(0):
        client.sendall(GET)
        loop.step(0.3)
    session.timed_out()
    assert read_to_end(client, loop).endswith(b"503 Service Unavailable: the router is out of resources\n")
    client.close()


def test_silent_ends_write_no_line(
    loop: FakeLoop, node: Backend, tcp_node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    # a head that times out
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET[:3])
    loop.step(0.1)
    session.timed_out()
    client.close()
    # an answer cut by its node, and an answer cut at the timeout
    for cut in ("reset", "timeout"):
        session, client = sent(loop, StaticMapper([tcp_node.node], 30))
        conn = tcp_node.accept()
        conn.sendall(b"partial")
        loop.run_until(lambda: session.replied)  # noqa: B023
        if cut == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()
        else:
            session.timed_out()
            conn.close()
        assert read_to_end(client, loop) == b"partial"
        client.close()
    assert not [m for m in messages(caplog) if "session closed" in m]


# -- the head and the body -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modifier1", "modifier2"),
    [(5, 0), (GET[1], 0), (0, GET[4]), (0, 7), (0, 0)],
    ids=["m1", "size", "vars", "m2", "same"],
)
def test_the_head_carries_the_nodes_modifiers(loop: FakeLoop, node: Backend, modifier1: int, modifier2: int) -> None:
    played = make_node(str(node.path), modifier1, modifier2)
    session, client = open_session(loop, static_routing(played))
    client.sendall(GET)
    loop.step(0.3)
    head = recv_exactly(node.accept(), len(GET))
    assert head == bytes([modifier1]) + GET[1:3] + bytes([modifier2]) + GET[4:]
    client.close()
    session.close()


def test_a_one_byte_body_is_post_buffered_too(loop: FakeLoop, node: Backend) -> None:
    post = uwsgi_packet(request_vars(method="POST", body_len=1))
    session, client = sent(loop, StaticMapper([node.node], 30), post, Settings(post_buffering=1024))
    assert session.state == BUFFERING and session.backend is None
    client.sendall(b"!")
    loop.run_until(lambda: session.state == RELAY)
    assert recv_exactly(node.accept(), len(post) + 1) == post + b"!"
    client.close()
    session.close()


def test_bytes_that_arrive_in_pieces_while_waiting_are_all_kept(loop: FakeLoop, stalled_node: Backend) -> None:
    session, client = sent(loop, StaticMapper([stalled_node.node], 30))
    assert session.backend is not None and session.upload == b""
    for piece in (b"one ", b"two ", b"three"):
        client.sendall(piece)
        loop.run_until(lambda: session.upload.endswith(piece))  # noqa: B023
    assert session.upload == b"one two three"
    client.close()
    session.close()


@pytest.fixture
def stalled_node() -> Iterator[Backend]:
    played = tcp_backend(backlog=0)
    played.conns.append(socket.create_connection(played.listener.getsockname()))  # fills the accept queue
    yield played
    played.close()


# -- the answer ----------------------------------------------------------------------------------------------------


def test_a_one_byte_answer_is_an_answer(loop: FakeLoop, node: Backend, nodes: Callable[[str], Backend]) -> None:
    second = nodes("second.sock")
    session, client = sent(loop, StaticMapper([node.node, second.node], 30))
    conn = node.accept()
    conn.sendall(b"x")
    loop.run_until(lambda: session.replied)
    conn.close()
    assert read_to_end(client, loop) == b"x"
    assert not session.resends and second.node.stats.hits == 0
    client.close()


def test_a_short_answer_with_its_end_takes_one_wake_up(loop: FakeLoop, node: Backend) -> None:
    session, client = sent(loop, StaticMapper([node.node], 30))
    conn = node.accept()
    recv_exactly(conn, len(GET))
    conn.sendall(ANSWER)
    conn.close()
    backend = session.backend
    assert backend is not None
    ready = loop.poller.poll(1.0)
    assert any(events & select.EPOLLRDHUP for fd, events in ready if fd == backend.fd), "the end came with the bytes"
    for fd, events in ready:
        loop.handlers[fd].ready(fd, events)
    assert session.state == DONE, "the short read with the node's end was the end"
    assert client.recv(100) == ANSWER
    client.close()


def test_a_spilled_body_is_read_from_its_file_a_chunk_at_a_time(loop: FakeLoop, node: Backend, tmp_path: Path) -> None:
    body = b"f" * (2 << 20)
    post = uwsgi_packet(request_vars(method="POST", body_len=len(body)))
    settings = Settings(post_buffering=1024, post_buffering_dir=str(tmp_path), high_water=1 << 20)
    session, client = open_session(loop, static_routing(node.node), settings)
    send_stepping(client, post + body, loop)
    loop.run_until(lambda: session.state == RELAY)
    conn = node.accept()
    conn.setblocking(False)
    got = 0
    largest = 0
    for _ in range(100000):
        loop.step(0.0)
        backend = session.backend
        if backend is not None:
            largest = max(largest, len(backend.out))
        try:
            got += len(conn.recv(4096))  # a slow node
        except BlockingIOError:
            pass
        if got >= len(post) + len(body):
            break
    assert got == len(post) + len(body)
    assert largest <= FILE_CHUNK + len(post), "never more than one chunk of the file in memory"
    client.close()
    session.close()
    conn.close()


def test_a_node_that_answers_before_taking_the_whole_upload_is_still_read(loop: FakeLoop, node: Backend) -> None:
    body = b"u" * (8 << 20)
    post = uwsgi_packet(request_vars(method="POST", body_len=len(body)))
    session, client = sent(loop, StaticMapper([node.node], 30), post, Settings(splice=False))
    conn = node.accept()
    recv_exactly(conn, len(post))
    client.setblocking(False)
    view = memoryview(body)
    for _ in range(500):
        try:
            view = view[client.send(view) :]
        except BlockingIOError:
            pass
        loop.step(0.0)
    backend = session.backend
    assert backend is not None and backend.out, "bytes wait for the node"
    conn.sendall(b"HTTP/1.1 413 Too Large\r\n\r\n")  # it answers without reading on
    assert recv_stepping(client, 26, loop) == b"HTTP/1.1 413 Too Large\r\n\r\n"
    conn.close()
    client.close()
    session.close()


def test_a_client_with_answer_bytes_waiting_for_it_is_still_read(loop: FakeLoop, node: Backend) -> None:
    post = uwsgi_packet(request_vars(method="POST", body_len=1 << 20))
    session, client = sent(loop, StaticMapper([node.node], 30), post, Settings(splice=False, high_water=1 << 20))
    conn = node.accept()
    recv_exactly(conn, len(post))
    conn.setblocking(False)
    for _ in range(200):  # the node answers more than the client reads
        try:
            conn.send(b"a" * 65536)
        except BlockingIOError:
            break
        loop.step(0.0)
    assert session.client.out, "answer bytes wait for the client"
    client.sendall(b"more body")
    assert recv_stepping(conn, 9, loop) == b"more body"
    conn.close()
    client.close()
    session.close()
