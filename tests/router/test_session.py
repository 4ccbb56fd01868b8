"""The session in process: a fake loop, a socket pair for the client, a UNIX socket for the node, no processes.

Each test plays client and node by hand and checks what each of them sees (bytes, end of input, an error page)
and what the loop is told (registrations, the end of the session).
"""

from __future__ import annotations

import select
import socket
from pathlib import Path

import pytest

from tests.router.conftest import read_to_end, send_stepping
from tests.router.fakeloop import Backend, FakeLoop, backend, open_session, static_routing
from tests.support import parse_vars, recv_exactly, request_vars, uwsgi_packet
from uwsgirouter.router.loop import Settings
from uwsgirouter.router.nodes import make_node
from uwsgirouter.router.session import (
    CLOSE,
    CLOSING,
    DONE,
    HEAD,
    RELAY,
    TRANSITIONS,
    InvalidTransition,
)

GET = uwsgi_packet(request_vars(host="example.com", path="/x"))
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_get_is_relayed_both_ways_and_the_session_ends_cleanly(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET)
    loop.step(0.5)
    conn = node.accept()
    assert recv_exactly(conn, len(GET)) == GET  # the head, unchanged (modifiers 0 and 0)
    assert session.state == RELAY
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    assert session.state == DONE
    assert loop.handlers == {}, "every descriptor was unregistered"
    assert [(e.request, e.sent) for e in loop.ended] == [(True, len(ANSWER))]
    assert node.node.stats.hits == 1
    assert node.node.stats.bytes_from_node == len(ANSWER)
    assert node.node.stats.bytes_to_node == len(GET)
    client.close()


def test_the_node_gets_its_own_modifiers(loop: FakeLoop, node: Backend) -> None:
    modified = make_node(str(node.path), 5, 9)
    session, client = open_session(loop, static_routing(modified))
    client.sendall(GET)
    loop.step(0.5)
    head = recv_exactly(node.accept(), len(GET))
    assert (head[0], head[3]) == (5, 9)
    assert head[1:3] == GET[1:3] and head[4:] == GET[4:]
    client.close()
    session.close()


def test_a_head_sent_one_byte_at_a_time_arrives_whole(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    for byte in GET[:-1]:
        client.send(bytes([byte]))
        loop.step(0.2)
        assert session.state == HEAD
    client.send(GET[-1:])
    loop.step(0.5)
    assert parse_vars(recv_exactly(node.accept(), len(GET))[4:])["HTTP_HOST"] == "example.com"
    client.close()
    session.close()


def test_a_malformed_head_gets_a_400_and_no_node_is_asked(loop: FakeLoop, node: Backend) -> None:
    _session, client = open_session(loop, static_routing(node.node))
    client.sendall(b"\x00\x04\x00\x00\xff\xff\x00\x00")  # a key length beyond the block
    assert read_to_end(client, loop).startswith(b"HTTP/1.0 400 Bad Request")
    assert node.node.stats.hits == 0
    assert loop.ended[0].request is False
    client.close()


def test_a_request_without_a_key_gets_a_502_naming_the_reason(loop: FakeLoop, node: Backend) -> None:
    _session, client = open_session(loop, static_routing(node.node))
    client.sendall(uwsgi_packet(request_vars(host="", SERVER_NAME="")))
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert answer.endswith(b"the request names no host\n")
    client.close()


def test_a_refused_node_is_marked_and_the_next_one_answers(loop: FakeLoop, node: Backend, tmp_path: Path) -> None:
    gone = make_node(str(tmp_path / "gone.sock"))
    _session, client = open_session(loop, static_routing(gone, node.node))
    client.sendall(GET)
    loop.step(0.5)
    conn = node.accept()
    assert recv_exactly(conn, len(GET)) == GET
    assert gone.dead_until == loop.now + 30.0, "the refused node sits out its grace time"
    assert gone.stats.failures == 1
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    client.close()


def test_when_every_node_refuses_the_client_gets_a_502(loop: FakeLoop, tmp_path: Path) -> None:
    nodes = [make_node(str(tmp_path / f"gone{n}.sock")) for n in range(2)]
    _session, client = open_session(loop, static_routing(*nodes))
    client.sendall(GET)
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"no node could be reached for key example.com" in answer
    client.close()


def test_a_get_whose_node_breaks_without_answering_goes_to_the_next_node(
    loop: FakeLoop, node: Backend, tmp_path: Path
) -> None:
    second = backend(tmp_path, "second.sock")
    try:
        session, client = open_session(loop, static_routing(node.node, second.node))
        client.sendall(GET)
        loop.step(0.5)
        first = node.accept()
        recv_exactly(first, len(GET))
        first.close()  # breaks without a byte of answer
        loop.run_until(lambda: session.resends)
        conn = second.accept()
        assert recv_exactly(conn, len(GET)) == GET
        conn.sendall(ANSWER)
        conn.close()
        assert read_to_end(client, loop) == ANSWER
        client.close()
    finally:
        second.close()


def test_a_post_whose_node_breaks_gets_a_502(loop: FakeLoop, node: Backend, tmp_path: Path) -> None:
    second = backend(tmp_path, "second.sock")
    try:
        post = uwsgi_packet(request_vars(method="POST", body_len=4)) + b"body"
        session, client = open_session(loop, static_routing(node.node, second.node))
        client.sendall(post)
        loop.step(0.5)
        first = node.accept()
        recv_exactly(first, len(post))
        first.close()
        answer = read_to_end(client, loop)
        assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
        assert not session.resends
        client.close()
    finally:
        second.close()


def test_a_node_that_answers_faster_than_the_client_reads_is_no_longer_read(loop: FakeLoop, node: Backend) -> None:
    settings = Settings(high_water=4096)
    session, client = open_session(loop, static_routing(node.node), settings)
    client.sendall(GET)
    loop.step(0.5)
    conn = node.accept()
    recv_exactly(conn, len(GET))
    conn.setblocking(False)
    pushed = 0
    for _ in range(400):  # bounded: the node pushes until the router stops taking
        try:
            pushed += conn.send(b"x" * 65536)
        except BlockingIOError:
            pass
        loop.step(0.001)
    backend_peer = session.backend
    assert backend_peer is not None
    assert not backend_peer.mask & select.EPOLLIN, "the node is not read while the client lags"
    assert len(session.client.out) < settings.high_water + settings.read_size
    # once the client reads, the rest flows
    client.setblocking(False)
    got = 0
    for _ in range(5000):
        loop.step(0.001)
        try:
            got += len(client.recv(1 << 20))
        except BlockingIOError:
            pass
        if got == pushed:
            break
    assert got == pushed
    conn.close()
    client.close()
    session.close()


def test_a_client_that_half_closes_passes_its_end_of_input_to_the_node_and_still_gets_the_answer(
    loop: FakeLoop, node: Backend
) -> None:
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET)
    client.shutdown(socket.SHUT_WR)
    loop.step(0.5)
    conn = node.accept()
    assert recv_exactly(conn, len(GET)) == GET
    loop.run_until(lambda: session.client.eof)
    for _ in range(50):
        loop.step(0.01)
    assert conn.recv(10) == b"", "the node sees the end of input"
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    client.close()


def test_a_head_that_never_completes_is_closed_at_the_timeout_without_an_answer(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET[:5])
    loop.step(0.2)
    loop.now += 31
    session.timed_out()
    assert session.state == DONE
    assert client.recv(10) == b""
    client.close()


def test_a_node_that_does_not_answer_in_time_gets_the_client_a_504(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET)
    loop.step(0.5)
    conn = node.accept()
    session.timed_out()
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout")
    conn.close()
    client.close()


def test_a_node_silent_mid_answer_is_cut_at_the_timeout(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET)
    loop.step(0.5)
    conn = node.accept()
    conn.sendall(ANSWER[:10])
    loop.run_until(lambda: session.replied)
    session.timed_out()
    assert read_to_end(client, loop) == ANSWER[:10]
    conn.close()
    client.close()


def test_a_router_shutting_down_answers_503(loop: FakeLoop, node: Backend) -> None:
    loop.shutting_down = True
    _session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET)
    assert read_to_end(client, loop).startswith(b"HTTP/1.1 503 Service Unavailable")
    client.close()


def test_a_post_buffered_body_reaches_the_node_with_its_head_in_one_piece(loop: FakeLoop, node: Backend) -> None:
    body = b"b" * 10000
    post = uwsgi_packet(request_vars(method="POST", body_len=len(body)))
    session, client = open_session(loop, static_routing(node.node), Settings(post_buffering=65536))
    client.sendall(post + body[:5000])
    loop.step(0.2)
    assert session.backend is None, "no node is connected before the body is complete"
    client.sendall(body[5000:])
    loop.run_until(lambda: session.state == RELAY)
    conn = node.accept()
    assert recv_exactly(conn, len(post) + len(body)) == post + body
    conn.close()
    client.close()
    session.close()


def test_a_spilled_body_is_sent_from_its_file(loop: FakeLoop, node: Backend, tmp_path: Path) -> None:
    body = bytes(range(256)) * 1000
    post = uwsgi_packet(request_vars(method="POST", body_len=len(body)))
    settings = Settings(post_buffering=1024, post_buffering_dir=str(tmp_path))
    session, client = open_session(loop, static_routing(node.node), settings)
    send_stepping(client, post + body, loop)
    loop.run_until(lambda: session.state == RELAY)
    conn = node.accept()
    conn.setblocking(False)
    got = bytearray()
    for _ in range(5000):
        loop.step(0.001)
        try:
            got += conn.recv(1 << 20)
        except BlockingIOError:
            pass
        if len(got) == len(post) + len(body):
            break
    assert bytes(got) == post + body
    conn.close()
    client.close()
    session.close()


def test_the_transition_table_refuses_a_move_it_does_not_have(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    session.close()
    assert session.state == DONE
    with pytest.raises(InvalidTransition, match="'close' in state DONE"):
        session._enter(CLOSE)
    assert (CLOSING, CLOSE) in TRANSITIONS and (DONE, CLOSE) not in TRANSITIONS
    client.close()


def test_a_node_that_is_the_router_itself_is_skipped(loop: FakeLoop, node: Backend, tmp_path: Path) -> None:
    itself = make_node(str(tmp_path / "router.sock"))
    routing = static_routing(itself, node.node, own_addresses=frozenset({itself.sockaddr}))
    session, client = open_session(loop, routing)
    client.sendall(GET)
    loop.step(0.5)
    assert recv_exactly(node.accept(), len(GET)) == GET
    assert session.tried == [itself, node.node]
    client.close()
    session.close()


def test_session_module_has_no_worker_import() -> None:
    """The session talks to its loop through loop.Loop only (issue 12): it never imports the worker."""
    source = (Path(__file__).resolve().parents[2] / "uwsgirouter" / "router" / "session.py").read_text()
    assert "router.worker" not in source and "router.core" not in source
    assert "def __init__(self, loop: Loop," in source
