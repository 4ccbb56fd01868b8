"""The session before the relay, in process: choosing and connecting (refusals, a handshake that takes a while, no
descriptor left), the routing failures the client sees as error pages, post-buffering, and the timeouts of each
state. Client and node are sockets the test plays; no process is started."""

from __future__ import annotations

import logging
import resource
import select
import signal
import socket
from collections.abc import Iterator
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
from tests.router.fakeloop import Backend, FakeLoop, handed, open_session, routing_for, static_routing
from tests.support import parse_vars, recv_exactly, request_vars, uwsgi_packet
from uwsgirouter.router.loop import Settings
from uwsgirouter.router.mappers import BaseDirMapper, NoMapper
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.router.session import BUFFERING, CONNECTING, DONE, HEAD, RELAY, WAITING, Session

GET = uwsgi_packet(request_vars(host="example.com", path="/x"))
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def post(body: bytes, **extra: str) -> bytes:
    return uwsgi_packet(request_vars(method="POST", body_len=len(body), **extra))


@pytest.fixture
def stalled() -> Iterator[tuple[Backend, socket.socket]]:
    """A TCP node whose accept queue is full (listen(0) with one connection waiting): a new connect stays in its
    handshake until the test accepts the waiting one and the kernel retries the SYN (about a second later)."""
    played = tcp_backend(backlog=0)
    filler = socket.create_connection(played.listener.getsockname())
    yield played, filler
    filler.close()
    played.close()


def connecting(
    loop: FakeLoop, played: Backend, *more: Node, settings: Settings | None = None
) -> tuple[Session, socket.socket]:
    session, client = open_session(loop, static_routing(played.node, *more), settings)
    client.sendall(GET)
    loop.step(0.2)
    assert session.state == CONNECTING
    return session, client


# -- connecting -------------------------------------------------------------------------------------------------


def test_a_node_still_handshaking_is_waited_for_then_gets_the_head_and_what_came_meanwhile(
    loop: FakeLoop, stalled: tuple[Backend, socket.socket]
) -> None:
    played, _filler = stalled
    session, client = connecting(loop, played)
    backend = session.backend
    assert backend is not None and session.node is played.node
    assert loop.masks[backend.fd] == select.EPOLLOUT, "the router waits for the handshake to end"
    assert loop.masks[session.client.fd] == select.EPOLLIN
    client.sendall(b"early")
    client.shutdown(socket.SHUT_WR)
    loop.run_until(lambda: session.client.eof)
    assert session.state == CONNECTING and session.upload == b"early"
    played.accept().close()  # the queue has room again: the kernel's next SYN gets through
    loop.run_until(lambda: session.state == RELAY, timeout=5)
    conn = played.accept()
    got = recv_stepping(conn, len(GET) + 5, loop)
    assert got == GET + b"early", "the head, then the bytes that came while connecting"
    steps(loop, 5)
    assert conn.recv(10) == b"", "the client's end of input reached the node"
    assert played.node.stats.hits == 1
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    client.close()


def test_body_bytes_that_came_with_the_head_reach_the_next_node_when_a_handshake_fails(
    loop: FakeLoop, stalled: tuple[Backend, socket.socket], node: Backend
) -> None:
    played, _ = stalled
    session, client = open_session(loop, static_routing(played.node, node.node))
    client.sendall(GET + b"early")  # one read: the head and the first body bytes
    loop.step(0.2)
    assert session.state == CONNECTING
    played.listener.close()  # the kernel's next SYN is refused
    loop.run_until(lambda: session.state == RELAY, timeout=5)
    conn = node.accept()
    assert recv_exactly(conn, len(GET) + 5) == GET + b"early", "the bytes went with the head to the node that took it"
    conn.close()
    client.close()
    session.close()


def test_a_handshake_that_fails_moves_on_to_the_next_node(
    loop: FakeLoop, stalled: tuple[Backend, socket.socket], node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    played, _ = stalled
    session, client = connecting(loop, played, node.node)
    played.listener.close()  # the kernel's next SYN is refused
    loop.run_until(lambda: session.state == RELAY, timeout=5)
    assert played.node.stats.failures == 1
    assert played.node.dead_until == loop.now + 30
    assert f"key example.com: unable to connect to node {played.node.name} (0 retries): ECONNREFUSED" in messages(
        caplog
    )
    conn = node.accept()
    assert recv_exactly(conn, len(GET)) == GET
    conn.close()
    client.close()
    session.close()


def test_a_handshake_that_times_out_moves_on_to_the_next_node(
    loop: FakeLoop, stalled: tuple[Backend, socket.socket], node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    played, _ = stalled
    session, client = connecting(loop, played, node.node)
    handshaking = session.backend
    assert handshaking is not None
    session.timed_out()
    assert session.state == RELAY
    assert handshaking.fd == -1, "the connection still handshaking is closed"
    assert played.node.stats.failures == 1
    assert f"key example.com: unable to connect to node {played.node.name} (0 retries): timeout" in messages(caplog)
    assert recv_exactly(node.accept(), len(GET)) == GET
    assert session.client.mask == select.EPOLLIN
    client.close()
    session.close()


def test_a_handshake_that_times_out_with_no_other_node_gets_a_502(
    loop: FakeLoop, stalled: tuple[Backend, socket.socket]
) -> None:
    played, _ = stalled
    session, client = connecting(loop, played)
    session.timed_out()
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"no node could be reached for key example.com" in answer
    client.close()


def test_a_refused_tcp_node_is_marked_and_counted(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    refused = make_node(f"127.0.0.1:{port}")
    session, client = open_session(loop, static_routing(refused, node.node))
    client.sendall(GET)
    loop.step(0.5)
    assert recv_exactly(node.accept(), len(GET)) == GET
    assert refused.stats.failures == 1 and refused.dead_until == loop.now + 30
    assert f"key example.com: unable to connect to node 127.0.0.1:{port} (0 retries): ECONNREFUSED" in messages(caplog)
    client.close()
    session.close()


def test_quiet_leaves_out_the_line_for_a_failed_connect(
    loop: FakeLoop, node: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    gone = make_node(str(tmp_path / "gone.sock"))
    session, client = open_session(loop, static_routing(gone, node.node), Settings(quiet=True))
    client.sendall(GET)
    loop.step(0.5)
    assert recv_exactly(node.accept(), len(GET)) == GET
    assert gone.stats.failures == 1 and gone.dead_until > 0
    assert not [m for m in messages(caplog) if "unable to connect" in m]
    client.close()
    session.close()


def test_an_address_the_kernel_refuses_outright_is_a_failed_connect(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    too_long = Node("toolong", socket.AF_UNIX, b"/" + b"x" * 200)
    session, client = open_session(loop, static_routing(too_long, node.node))
    client.sendall(GET)
    loop.step(0.5)
    assert recv_exactly(node.accept(), len(GET)) == GET
    assert too_long.stats.failures == 1
    assert "key example.com: unable to connect to node toolong (0 retries): EINVAL" in messages(caplog)
    client.close()
    session.close()


def test_a_socket_the_system_will_not_create_gets_a_503(loop: FakeLoop, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    unknown_family = Node("odd", 4242, b"x")
    _session, client = open_session(loop, static_routing(unknown_family))
    client.sendall(GET)
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert answer.endswith(b"the router is out of resources\n")
    assert any(m.startswith("key example.com: cannot create a socket for node odd: ") for m in messages(caplog))
    client.close()


def test_with_no_descriptor_left_the_session_waits_and_goes_on_when_resumed(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    with descriptors_left(0):
        client.sendall(GET)
        loop.step(0.5)
    assert session.state == WAITING
    assert session.tried == [] and session.node is None
    assert len(loop.waiting) == 1
    assert session.backend is None
    client.sendall(b"more")  # bytes that come while waiting are kept for the node
    loop.run_until(lambda: session.upload == b"more")
    loop.waiting.pop()()
    assert session.state == RELAY
    assert recv_exactly(node.accept(), len(GET) + 4) == GET + b"more"
    session.resume_connect()  # a second resume changes nothing
    assert session.state == RELAY
    client.close()
    session.close()


def test_a_session_resumed_when_its_node_is_gone_gets_a_502(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    with descriptors_left(0):
        client.sendall(GET)
        loop.step(0.5)
    assert session.state == WAITING
    node.listener.close()  # the node went away meanwhile: its connect is refused
    node.path.unlink()
    loop.waiting.pop()()
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert session.state == DONE and node.node.stats.failures == 1
    client.close()


def test_a_session_that_waited_for_a_descriptor_too_long_gets_a_503(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    with descriptors_left(0):
        client.sendall(GET)
        loop.step(0.5)
    assert session.state == WAITING
    session.timed_out()
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable")
    loop.waiting.pop()()  # resumed after it ended: nothing happens
    assert session.state == DONE and node.node.stats.hits == 0
    client.close()


# -- routing failures ------------------------------------------------------------------------------------------


def test_no_node_for_the_key_gets_a_502_and_a_line(loop: FakeLoop, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    _session, client = open_session(loop, routing_for(NoMapper()))
    client.sendall(GET)
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert answer.endswith(b"no node for key example.com\n")
    assert "key example.com: no node; answered 502" in messages(caplog)
    client.close()


def test_an_unsafe_key_gets_a_502_and_a_line(loop: FakeLoop, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    _session, client = open_session(loop, routing_for(BaseDirMapper(str(tmp_path) + "/")))
    client.sendall(uwsgi_packet(request_vars(host="..")))
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert answer.endswith(b"no node for key ..\n")
    assert "key .. refused: a relative directory name; answered 502" in messages(caplog)
    client.close()


def test_force_key_routes_every_request_by_it(loop: FakeLoop, tmp_path: Path) -> None:
    played_path = tmp_path / "forced"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(played_path))
    listener.listen(1)
    try:
        session, client = open_session(
            loop, routing_for(BaseDirMapper(str(tmp_path) + "/")), Settings(force_key=b"forced")
        )
        client.sendall(GET)
        loop.step(0.5)
        listener.settimeout(5)
        conn, _ = listener.accept()
        assert session.key == b"forced"
        conn.close()
        client.close()
        session.close()
    finally:
        listener.close()


def test_an_invalid_request_gets_the_status_its_error_hints_and_a_line(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    _session, client = open_session(loop, static_routing(node.node))
    client.sendall(b"\x00\x04\x00\x00\xff\xff\x00\x00")
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.0 400 Bad Request") and answer.endswith(b"invalid uwsgi request\n")
    assert any(m.startswith("invalid request from client: ") for m in messages(caplog))
    client.close()


def test_a_head_with_body_bytes_in_the_same_read_sends_them_with_the_head(loop: FakeLoop, node: Backend) -> None:
    ours, client = socket.socketpair()
    client.sendall(GET + b"early body")
    client.shutdown(socket.SHUT_WR)
    session = Session(loop, static_routing(node.node), Settings(), handed(ours))
    session.start()
    conn = node.accept()
    assert recv_exactly(conn, len(GET) + 10) == GET + b"early body"
    loop.run_until(lambda: session.client.eof)
    steps(loop, 5)
    assert conn.recv(10) == b"", "the end of input reached the node after the head"
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    client.close()


def test_a_head_in_pieces_whose_last_piece_brings_body_bytes_sends_them_with_the_head(
    loop: FakeLoop, node: Backend
) -> None:
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET[:7])  # not the whole head: the session gathers it with a reader
    loop.step(0.1)
    assert session.head is None and session.reader is not None
    client.sendall(GET[7:] + b"early body")
    loop.step(0.5)
    conn = node.accept()
    assert recv_exactly(conn, len(GET) + 10) == GET + b"early body"
    assert session.reader is None
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    client.close()


# -- post-buffering ----------------------------------------------------------------------------------------------


def test_post_buffering_holds_a_body_in_memory_and_sends_it_with_its_head(loop: FakeLoop, node: Backend) -> None:
    body = bytes(range(256)) * 2048  # 512 KiB: more than one send takes
    request = post(body)
    session, client = open_session(loop, static_routing(node.node), Settings(post_buffering=1 << 20))
    send_stepping(client, request + body + b"extra", loop)
    loop.run_until(lambda: session.state == RELAY)
    assert session.body is None
    conn = node.accept()
    assert recv_stepping(conn, len(request) + len(body) + 5, loop) == request + body + b"extra"
    client.close()
    session.close()
    conn.close()


def test_post_buffering_sends_a_spilled_body_then_what_came_after_it(
    loop: FakeLoop, node: Backend, tmp_path: Path
) -> None:
    body = bytes(range(256)) * 1000
    request = post(body)
    settings = Settings(post_buffering=1024, post_buffering_dir=str(tmp_path))
    session, client = open_session(loop, static_routing(node.node), settings)
    send_stepping(client, request + body + b"after", loop)
    loop.run_until(lambda: session.state == RELAY)
    conn = node.accept()
    client.sendall(b" and later")
    assert recv_stepping(conn, len(request) + len(body) + 15, loop) == request + body + b"after and later"
    assert session.body is None and session.after_body == b""
    client.close()
    session.close()
    conn.close()


def test_post_buffering_keeps_bytes_after_the_body_while_the_file_is_sent(
    loop: FakeLoop, node: Backend, tmp_path: Path
) -> None:
    body = b"s" * 300_000
    request = post(body)
    settings = Settings(post_buffering=1024, post_buffering_dir=str(tmp_path), high_water=1 << 20)
    session, client = open_session(loop, static_routing(node.node), settings)
    send_stepping(client, request + body, loop)
    loop.run_until(lambda: session.state == RELAY)
    assert session.body is not None, "the node has not taken the whole file yet"
    client.sendall(b"tail")
    loop.run_until(lambda: session.after_body == b"tail")
    conn = node.accept()
    assert recv_stepping(conn, len(request) + len(body) + 4, loop) == request + body + b"tail"
    client.close()
    session.close()
    conn.close()


def test_post_buffering_without_a_body_routes_at_once(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node), Settings(post_buffering=1024))
    client.sendall(GET)
    loop.step(0.5)
    assert session.state == RELAY and session.body is None
    assert recv_exactly(node.accept(), len(GET)) == GET
    client.close()
    session.close()


def test_post_buffering_answers_an_invalid_content_length_with_a_400(loop: FakeLoop, node: Backend) -> None:
    _session, client = open_session(loop, static_routing(node.node), Settings(post_buffering=1024))
    client.sendall(uwsgi_packet(request_vars(method="POST", CONTENT_LENGTH="12x")))
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request") and answer.endswith(b"invalid CONTENT_LENGTH\n")
    assert node.node.stats.hits == 0
    client.close()


def test_a_client_gone_midway_through_a_buffered_upload_is_closed_and_no_node_is_asked(
    loop: FakeLoop, node: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    body = b"m" * 100_000
    settings = Settings(post_buffering=1024, post_buffering_dir=str(tmp_path))
    session, client = open_session(loop, static_routing(node.node), settings)
    send_stepping(client, post(body) + body[:50_000], loop)
    loop.run_until(lambda: session.body is not None and session.body.spilled)
    spilled = session.body
    assert session.state == BUFFERING
    client.close()
    loop.run_until(lambda: session.state == DONE)
    assert spilled is not None and spilled.file is None, "the spilled body's file is closed"
    assert session.body is None
    assert node.node.stats.hits == 0
    assert "key : session closed: the client went away during its upload" in messages(caplog)


def test_a_client_that_ends_its_input_inside_a_body_held_in_memory_is_closed(loop: FakeLoop, node: Backend) -> None:
    ours, client = socket.socketpair()
    client.sendall(post(b"0123456789") + b"01234")
    client.shutdown(socket.SHUT_WR)
    session = Session(loop, static_routing(node.node), Settings(post_buffering=1024), handed(ours))
    session.start()
    assert session.state == BUFFERING
    loop.run_until(lambda: session.state == DONE)
    assert client.recv(10) == b""
    assert loop.ended[0].request is True
    client.close()


def test_a_body_that_cannot_be_buffered_gets_a_503_and_a_line(
    loop: FakeLoop, node: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    settings = Settings(post_buffering=1024, post_buffering_dir=str(tmp_path / "missing"))
    _session, client = open_session(loop, static_routing(node.node), settings)
    body = b"b" * 4096
    client.sendall(post(body) + body)
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert answer.endswith(b"the router cannot buffer the request body\n")
    assert any(m.startswith("key : cannot buffer the request body: ") for m in messages(caplog))
    assert node.node.stats.hits == 0
    client.close()


def test_a_disk_that_fills_midway_gets_a_503(loop: FakeLoop, node: Backend, tmp_path: Path) -> None:
    settings = Settings(post_buffering=1024, post_buffering_dir=str(tmp_path))
    session, client = open_session(loop, static_routing(node.node), settings)
    body = b"d" * 200_000
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, hard))  # writes past 50 000 bytes fail with EFBIG
    try:
        client.setblocking(False)
        view = memoryview(post(body) + body)
        for _ in range(2000):
            if session.state != BUFFERING and session.state != HEAD:
                break
            try:
                view = view[client.send(view) :]
            except BlockingIOError:
                pass
            loop.step(0.001)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert read_to_end(client, loop).startswith(b"HTTP/1.1 503 Service Unavailable")
    assert session.body is None and node.node.stats.hits == 0
    client.close()


# -- timeouts ---------------------------------------------------------------------------------------------------


def test_a_silent_node_gets_a_504_naming_it(loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET)
    loop.step(0.5)
    conn = node.accept()
    session.timed_out()
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout")
    assert answer.endswith(b"the node for key example.com did not answer in time\n")
    assert f"key example.com: node {node.node.name} timed out; answered 504" in messages(caplog)
    assert node.node.dead_until == 0, "a slow node is not marked dead"
    conn.close()
    client.close()


def test_a_head_that_times_out_is_closed_silently(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET[:4])
    loop.step(0.1)
    session.timed_out()
    assert client.recv(10) == b""
    assert session.state == DONE and loop.ended[0].request is False
    assert not messages(caplog)
    client.close()


def test_the_error_page_speaks_the_clients_protocol(loop: FakeLoop) -> None:
    _session, client = open_session(loop, routing_for(NoMapper()))
    client.sendall(uwsgi_packet(request_vars(SERVER_PROTOCOL="HTTP/1.0")))
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.0 502 Bad Gateway\r\n")
    assert b"Connection: close\r\n" in answer
    client.close()


def test_the_vars_reach_the_node_unchanged(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET)
    loop.step(0.5)
    head = recv_exactly(node.accept(), len(GET))
    assert parse_vars(head[4:])["PATH_INFO"] == "/x"
    client.close()
    session.close()
