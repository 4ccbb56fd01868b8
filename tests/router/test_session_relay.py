"""The session's relay in process: both directions, backpressure both ways, half-close, broken peers on either side,
the end of an answer, and the resend rules. Client and node are sockets the test plays."""

from __future__ import annotations

import logging
import os
import select
import socket
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.router.conftest import (
    messages,
    read_to_end,
    recv_stepping,
    reset,
    send_stepping,
    steps,
)
from tests.router.fakeloop import Backend, FakeLoop, handed, open_session, routing_for, static_routing
from tests.support import recv_exactly, request_vars, uwsgi_packet
from uwsgirouter.router.loop import Settings
from uwsgirouter.router.mappers import Mapper
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.router.session import CLOSING, DONE, RELAY, Session

GET = uwsgi_packet(request_vars(host="example.com", path="/x"))
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def relayed(
    loop: FakeLoop, played: Backend, settings: Settings | None = None, request: bytes = GET, *more: Backend
) -> tuple[Session, socket.socket, socket.socket]:
    """A session whose request reached ``played``: the session, the client's socket, the node's connection."""
    session, client = open_session(loop, static_routing(played.node, *(m.node for m in more)), settings)
    client.sendall(request)
    loop.step(0.5)
    conn = played.accept()
    assert recv_exactly(conn, len(request)) == request
    assert session.state == RELAY
    return session, client, conn


def test_the_client_socket_is_registered_for_input_and_both_are_unregistered_at_the_end(
    loop: FakeLoop, node: Backend
) -> None:
    session, client, conn = relayed(loop, node)
    backend = session.backend
    assert backend is not None
    assert loop.masks == {
        session.client.fd: select.EPOLLIN,
        backend.fd: select.EPOLLIN | select.EPOLLRDHUP,
    }
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    assert loop.masks == {} and len(loop.ended) == 1
    assert loop.ended[0].started == 1000.0
    client.close()


def test_a_body_sent_after_the_head_is_relayed_to_the_node(loop: FakeLoop, node: Backend) -> None:
    body = bytes(range(256)) * 2048  # 512 KiB, more than the sockets hold
    post = uwsgi_packet(request_vars(method="POST", body_len=len(body)))
    session, client, conn = relayed(loop, node, None, post)
    client.setblocking(False)
    view = memoryview(body)
    got = bytearray()
    conn.setblocking(False)
    for _ in range(20000):
        if view:
            try:
                view = view[client.send(view) :]
            except BlockingIOError:
                pass
        loop.step(0.001)
        try:
            got += conn.recv(1 << 20)
        except BlockingIOError:
            pass
        if len(got) == len(body):
            break
    assert bytes(got) == body
    assert session.client.received == len(post) + len(body)
    client.close()
    session.close()


def test_a_slow_node_stops_the_client_being_read(loop: FakeLoop, node: Backend) -> None:
    settings = Settings(high_water=8192)
    session, client, conn = relayed(loop, node, settings)
    client.setblocking(False)
    pushed = 0
    for _ in range(400):  # bounded: the client pushes until the router stops taking
        try:
            pushed += client.send(b"u" * 65536)
        except BlockingIOError:
            pass
        loop.step(0.001)
    backend = session.backend
    assert backend is not None
    assert backend.queued() >= settings.high_water
    assert backend.queued() < settings.high_water + settings.read_size
    assert not session.client.mask & select.EPOLLIN, "the client is not read while the node lags"
    assert backend.mask & select.EPOLLOUT, "the router waits to flush to the node"
    assert session.client.received < pushed, "the client's bytes wait in its own socket"
    # once the node reads, everything flows in order
    assert recv_stepping(conn, pushed, loop) == b"u" * pushed
    assert session.client.mask & select.EPOLLIN
    assert not backend.pending() and not backend.mask & select.EPOLLOUT
    client.close()
    session.close()


def test_a_client_that_ends_its_upload_while_bytes_wait_for_the_node_passes_its_end_after_them(
    loop: FakeLoop, node: Backend
) -> None:
    body = b"p" * 600_000
    post = uwsgi_packet(request_vars(method="POST", body_len=len(body)))
    session, client, conn = relayed(loop, node, Settings(high_water=1 << 20), post)
    send_stepping(client, body, loop)
    client.shutdown(socket.SHUT_WR)
    loop.run_until(lambda: session.client.eof)
    backend = session.backend
    assert backend is not None and backend.pending(), "bytes still wait for the node"
    assert recv_stepping(conn, len(body), loop) == body
    steps(loop, 5)
    assert conn.recv(10) == b"", "the node sees the end of input once it has every byte"
    conn.sendall(ANSWER)
    conn.close()
    assert read_to_end(client, loop) == ANSWER
    client.close()


def test_an_answer_longer_than_the_client_takes_is_flushed_before_the_end(loop: FakeLoop, node: Backend) -> None:
    settings = Settings(high_water=1 << 20)
    session, client, conn = relayed(loop, node, settings)
    answer = bytes(range(256)) * 2000  # 500 KiB
    send_stepping(conn, answer, loop)
    conn.close()
    loop.run_until(lambda: session.state == CLOSING)
    assert session.backend is None, "the node's socket is closed once its answer is in"
    assert session.client.pending(), "what the client did not take yet waits"
    assert session.client.mask == select.EPOLLOUT, "nothing more is read from a closing client"
    assert read_to_end(client, loop) == answer
    assert session.state == DONE
    assert loop.ended[0].sent == len(answer)
    assert node.node.stats.bytes_from_node == len(answer)
    client.close()


def test_a_closing_session_is_cut_at_the_timeout_without_a_line(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    session, client, conn = relayed(loop, node, Settings(high_water=1 << 20))
    send_stepping(conn, b"a" * 500_000, loop)
    conn.close()
    loop.run_until(lambda: session.state == CLOSING)
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session.timed_out()
    assert session.state == DONE
    assert not [m for m in messages(caplog) if "timed out" in m]
    client.close()


def test_a_short_answer_of_many_pieces_is_read_in_a_bounded_number_of_reads(loop: FakeLoop, node: Backend) -> None:
    settings = Settings(read_size=1000, splice=False)
    session, client, conn = relayed(loop, node, settings)
    conn.sendall(b"r" * 10_000)
    conn.close()
    loop.step(0.5)  # one wake-up: four reads of 1000 bytes, then the loop comes back for the rest
    assert session.backend is not None and session.backend.received == 4000
    assert read_to_end(client, loop) == b"r" * 10_000
    client.close()


def test_a_node_that_answers_and_keeps_its_connection_open_is_read_in_pieces(loop: FakeLoop, node: Backend) -> None:
    session, client, conn = relayed(loop, node, Settings(read_size=1000))
    conn.sendall(b"x" * 1500)
    loop.run_until(lambda: session.backend is not None and session.backend.received == 1500)
    assert recv_stepping(client, 1500, loop) == b"x" * 1500
    assert session.state == RELAY
    conn.close()
    assert read_to_end(client, loop) == b""
    client.close()


def test_a_client_that_leaves_while_the_answer_waits_for_it_ends_the_session(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client, conn = relayed(loop, node, Settings(high_water=1 << 20))
    conn.setblocking(False)
    for _ in range(100):
        try:
            conn.send(b"a" * 65536)
        except BlockingIOError:
            break
        loop.step(0.001)
    assert session.client.pending(), "the router holds answer bytes for the client"
    client.close()  # with unread bytes
    loop.run_until(lambda: session.state == DONE)
    assert any("session closed: client error" in m for m in messages(caplog))
    conn.setblocking(True)
    for _ in range(1000):  # the node's connection is closed too: its reads reach the end
        try:
            if not conn.recv(1 << 20):
                break
        except ConnectionResetError:
            break


def test_a_client_gone_before_the_node_answers_ends_the_session_when_the_answer_comes(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client, conn = relayed(loop, node)
    client.close()
    conn.sendall(ANSWER)
    loop.run_until(lambda: session.state == DONE)
    assert any("client error: Broken pipe" in m for m in messages(caplog))
    assert loop.handlers == {}


def test_a_half_closed_client_that_then_hangs_up_ends_the_session(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client, conn = relayed(loop, node)
    client.shutdown(socket.SHUT_WR)
    loop.run_until(lambda: session.client.eof)
    assert session.client.mask == 0, "a client at its end of input is not read"
    assert conn.recv(10) == b"", "the node got the end of input"
    client.close()
    loop.run_until(lambda: session.state == DONE)
    assert "key example.com: session closed: client connection lost" in messages(caplog)
    conn.close()


def test_a_client_that_resets_mid_relay_ends_the_session(
    loop: FakeLoop, tcp_node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    finally:
        listener.close()
    session = Session(loop, static_routing(tcp_node.node), Settings(), handed(ours))
    session.start()
    client.sendall(GET)
    loop.run_until(lambda: session.state == RELAY)
    conn = tcp_node.accept()
    reset(client)
    loop.run_until(lambda: session.state == DONE)
    assert "key example.com: session closed: client error: Connection reset by peer" in messages(caplog)
    assert conn.recv(len(GET) + 10) == GET
    assert conn.recv(10) == b""


def test_a_client_that_resets_during_its_head_is_closed_without_an_answer(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    finally:
        listener.close()
    session = Session(loop, static_routing(node.node), Settings(), handed(ours))
    session.start()
    client.sendall(GET[:6])
    loop.step(0.2)
    reset(client)
    loop.run_until(lambda: session.state == DONE)
    assert "key : session closed: client error: Connection reset by peer" in messages(caplog)
    assert loop.ended[0].request is False
    assert node.node.stats.hits == 0


def test_a_node_that_resets_mid_answer_cuts_the_client_after_what_it_sent(
    loop: FakeLoop, tcp_node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client, conn = relayed(loop, tcp_node)
    conn.sendall(ANSWER[:10])
    loop.run_until(lambda: session.replied)
    reset(conn)
    assert read_to_end(client, loop) == ANSWER[:10]
    assert not session.resends, "an answered request is never sent again"
    assert any("receive failed: Connection reset by peer" in m for m in messages(caplog))
    client.close()


def test_a_get_whose_only_node_resets_is_sent_to_it_once_more(
    loop: FakeLoop, tcp_node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client, conn = relayed(loop, tcp_node)
    reset(conn)
    loop.run_until(lambda: session.resends)
    again = tcp_node.accept()
    assert recv_exactly(again, len(GET)) == GET
    assert session.tried == [tcp_node.node]
    again.sendall(ANSWER)
    again.close()
    assert read_to_end(client, loop) == ANSWER
    assert tcp_node.node.stats.hits == 2 and tcp_node.node.stats.failures == 0, "a reset is no mark"
    assert tcp_node.node.dead_until == 0
    text = (
        f"key example.com: node {tcp_node.node.name} receive failed: Connection reset by peer; "
        "sending the request to the next node"
    )
    assert text in messages(caplog)
    client.close()


class Subscribed(Mapper):
    """One subscribed node, as the subscription table has it: a failed connect marks it dead (cheap mode then sees
    no live node)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.dead = False

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        return None if self.dead or self.node in tried else self.node

    def failed(self, node: Node, now: float) -> None:
        self.dead = True

    def live_nodes(self) -> int | None:
        return 0 if self.dead else 1


def test_a_node_killed_with_its_processes_costs_no_request_in_cheap_mode(
    loop: FakeLoop, node: Backend, nodes: Callable[[str], Backend]
) -> None:
    """kill -9 of a node's process group: the worker dies first (the request is reset), the master still holds the
    listening socket (the resend connects, then is reset as well), then the socket is gone (refused)."""
    local = nodes("local.sock")
    routing = routing_for(Subscribed(node.node), cheap=True, local=local.node)
    session, client = open_session(loop, routing)
    client.sendall(GET)
    loop.step(0.5)
    reset(node.accept())  # the worker that had the request dies
    loop.run_until(lambda: session.resends == 1)
    again = node.accept()
    assert recv_exactly(again, len(GET)) == GET
    node.listener.close()  # the master dies: the last holder of the listening socket
    reset(again)
    loop.run_until(lambda: session.resends == 2)
    served = local.accept()
    assert recv_exactly(served, len(GET)) == GET
    served.sendall(ANSWER)
    served.close()
    assert read_to_end(client, loop) == ANSWER
    assert session.tried == [node.node, local.node]
    assert node.node.stats.failures == 1, "the refused connect marked it"
    client.close()


def test_a_get_that_breaks_its_only_node_reaches_it_three_times_then_gets_502(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client, conn = relayed(loop, node)
    conn.close()
    for resends in (1, 2):
        loop.run_until(lambda: session.resends == resends)  # noqa: B023 - used at once
        again = node.accept()
        assert recv_exactly(again, len(GET)) == GET
        again.close()
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert session.resends == 2
    assert node.node.stats.hits == 3 and node.node.stats.failures == 0, "breaking on one request is no mark"
    assert node.node.dead_until == 0
    client.close()


def test_a_node_that_broke_is_tried_after_every_other_one(
    loop: FakeLoop, node: Backend, nodes: Callable[[str], Backend], tmp_path: Any
) -> None:
    gone = make_node(str(tmp_path / "gone.sock"))
    session, client = open_session(loop, static_routing(node.node, gone))
    client.sendall(GET)
    loop.step(0.5)
    first = node.accept()
    recv_exactly(first, len(GET))
    first.close()
    loop.run_until(lambda: session.resends)
    # the other node was asked (and refused), then the one that broke got the request again
    assert gone.stats.failures == 1
    again = node.accept()
    assert recv_exactly(again, len(GET)) == GET
    assert session.tried == [gone, node.node]
    again.sendall(ANSWER)
    again.close()
    assert read_to_end(client, loop) == ANSWER
    client.close()


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_are_resent_like_get(
    loop: FakeLoop, node: Backend, nodes: Callable[[str], Backend], method: str
) -> None:
    second = nodes("second.sock")
    request = uwsgi_packet(request_vars(method=method))
    session, client, conn = relayed(loop, node, None, request, second)
    conn.close()
    loop.run_until(lambda: session.resends)
    again = second.accept()
    assert recv_exactly(again, len(request)) == request
    again.sendall(ANSWER)
    again.close()
    assert read_to_end(client, loop) == ANSWER
    client.close()


@pytest.mark.parametrize(
    ("length", "resent"), [("0", True), ("", True), ("5", False)], ids=["length-0", "no-length", "body"]
)
def test_a_get_is_resent_only_without_a_body(
    loop: FakeLoop, node: Backend, nodes: Callable[[str], Backend], length: str, resent: bool
) -> None:
    second = nodes("second.sock")
    request = uwsgi_packet(request_vars(CONTENT_LENGTH=length))
    session, client, conn = relayed(loop, node, None, request, second)
    conn.close()
    answer = read_to_end(client, loop) if not resent else b""
    if resent:
        loop.run_until(lambda: session.resends)
        again = second.accept()
        again.sendall(ANSWER)
        again.close()
        answer = read_to_end(client, loop)
        assert answer == ANSWER
    else:
        assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
        assert answer.endswith(b"the node for key example.com failed\n")
    client.close()


def test_a_get_is_resent_once_only(
    loop: FakeLoop, node: Backend, nodes: Callable[[str], Backend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    second = nodes("second.sock")
    third = nodes("third.sock")
    session, client, conn = relayed(loop, node, None, GET, second, third)
    conn.close()
    loop.run_until(lambda: session.resends)
    again = second.accept()
    recv_exactly(again, len(GET))
    again.close()
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert third.node.stats.hits == 0
    assert f"key example.com: node {second.node.name} closed the connection without answering" in messages(caplog)
    client.close()


def test_a_get_with_bytes_the_node_never_took_is_not_resent(
    loop: FakeLoop, node: Backend, nodes: Callable[[str], Backend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    second = nodes("second.sock")
    session, client, conn = relayed(loop, node, None, GET, second)
    client.setblocking(False)
    for _ in range(400):  # the client sends more than the node takes
        try:
            client.send(b"z" * 65536)
        except BlockingIOError:
            pass
        loop.step(0.001)
        if session.backend is not None and session.backend.queued() >= 4096:
            break
    assert session.backend is not None and session.backend.pending()
    conn.close()  # with unread bytes
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert not session.resends and second.node.stats.hits == 0
    assert any("send failed" in m or "receive failed" in m for m in messages(caplog))
    client.close()


def test_bytes_for_a_node_that_is_gone_fail_the_request(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    post = uwsgi_packet(request_vars(method="POST", body_len=8))
    session, client, conn = relayed(loop, node, None, post)
    conn.close()
    client.sendall(b"body")
    session.on_client(select.EPOLLIN)  # the client's bytes are handled before the node's end
    assert session.state == CLOSING or session.state == DONE
    assert f"key example.com: node {node.node.name} send failed: Broken pipe" in messages(caplog)
    assert read_to_end(client, loop).startswith(b"HTTP/1.1 502 Bad Gateway")
    client.close()


def test_a_relayed_request_times_out_mid_response_with_a_line(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client, conn = relayed(loop, node)
    conn.sendall(b"partial")
    loop.run_until(lambda: session.replied)
    session.timed_out()
    assert f"key example.com: node {node.node.name} timed out mid-response" in messages(caplog)
    assert read_to_end(client, loop) == b"partial"
    conn.close()
    client.close()


def test_activity_on_either_side_moves_the_last_active_time(loop: FakeLoop, node: Backend) -> None:
    session, client, conn = relayed(loop, node)
    assert session.last_active == 1000.0
    loop.now = 1010.0
    client.sendall(b"more")
    loop.run_until(lambda: session.last_active == 1010.0)
    loop.now = 1020.0
    conn.sendall(b"answer")
    loop.run_until(lambda: session.last_active == 1020.0)
    conn.close()
    client.close()
    session.close()


def test_a_head_trickling_in_does_not_move_its_deadline(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    loop.now = 1010.0
    client.sendall(GET[:3])
    steps(loop, 5)
    assert session.last_active == 1000.0
    client.close()
    session.close()


def test_closing_twice_tells_the_loop_once(loop: FakeLoop, node: Backend) -> None:
    session, client, conn = relayed(loop, node)
    session.close()
    session.close()
    assert len(loop.ended) == 1
    assert node.node.stats.bytes_to_node == len(GET)
    assert conn.recv(len(GET) + 1) == b""
    conn.close()
    client.close()


def test_a_connection_closed_before_any_byte_is_a_silent_end(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    client.close()
    loop.run_until(lambda: session.state == DONE)
    assert [(e.request, e.sent) for e in loop.ended] == [(False, 0)]


def test_an_error_page_for_a_client_already_gone_ends_the_session(
    loop: FakeLoop, node: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.router")
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(b"\x00\x04\x00\x00\xff\xff\x00\x00")
    client.close()
    loop.run_until(lambda: session.state == DONE)
    assert any("client error: Broken pipe" in m for m in messages(caplog))


def test_an_error_page_the_client_cannot_take_at_once_is_flushed_later(loop: FakeLoop, node: Backend) -> None:
    session, client = open_session(loop, static_routing(node.node))
    filler = 0
    for _ in range(10000):  # the client reads nothing: the router's side of its connection is full
        try:
            filler += os.write(session.client.fd, b"\0" * 4096)
        except BlockingIOError:
            break
    loop.shutting_down = True
    client.sendall(GET)
    loop.step(0.5)
    assert session.state == CLOSING
    assert session.client.out.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert session.client.mask == select.EPOLLOUT
    got = read_to_end(client, loop)
    assert got[filler:].startswith(b"HTTP/1.1 503 Service Unavailable")
    assert session.state == DONE
    client.close()


@pytest.mark.parametrize("when", ["with the head", "after the head"])
def test_a_get_whose_node_took_bytes_after_its_head_is_not_resent(
    loop: FakeLoop, node: Backend, nodes: Callable[[str], Backend], when: str
) -> None:
    """Sent again, the request would reach the next node without them (a body without CONTENT_LENGTH)."""
    second = nodes("second.sock")
    session, client = open_session(loop, static_routing(node.node, second.node))
    client.sendall(GET + b"body bytes" if when == "with the head" else GET)
    loop.step(0.3)
    conn = node.accept()
    if when == "after the head":
        assert recv_exactly(conn, len(GET)) == GET
        client.sendall(b"body bytes")
    assert recv_stepping(conn, len(GET) + 10 if when == "with the head" else 10, loop).endswith(b"body bytes")
    conn.close()  # breaks without answering
    answer = read_to_end(client, loop)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert not session.resends and second.node.stats.hits == 0
    client.close()
