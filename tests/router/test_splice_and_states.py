"""splice(2) relaying (router/peer.py's pipe) and the state machine's table (router/states.py), in process."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator

import pytest

from tests.router.conftest import descriptors_left, read_to_end, recv_stepping
from tests.router.fakeloop import Backend, FakeLoop, open_session, static_routing
from tests.support import recv_exactly, request_vars, uwsgi_packet
from uwsgirouter.router.loop import Settings
from uwsgirouter.router.peer import NOTHING, PIPE_SIZE, SINK_FAILED, SOURCE_FAILED, Peer
from uwsgirouter.router.session import RELAY
from uwsgirouter.router.states import (
    BUFFER,
    BUFFERING,
    CLOSE,
    CLOSE_AFTER_FLUSH,
    CLOSING,
    CONNECT_STARTED,
    CONNECTED,
    CONNECTING,
    DONE,
    EVENT_NAMES,
    HEAD,
    NO_DESCRIPTOR,
    STATE_NAMES,
    TRANSITIONS,
    WAITING,
    InvalidTransition,
    next_state,
)

GET = uwsgi_packet(request_vars(host="example.com", path="/x"))
Pairs = tuple[Peer, socket.socket, Peer, socket.socket]

# -- the table -----------------------------------------------------------------------------------------------------

ROUTING = (HEAD, BUFFERING, WAITING, CONNECTING, RELAY)
EXPECTED = {
    (HEAD, BUFFER): BUFFERING,
    **{(s, CONNECT_STARTED): CONNECTING for s in ROUTING},
    **{(s, CONNECTED): RELAY for s in ROUTING},
    **{(s, NO_DESCRIPTOR): WAITING for s in ROUTING},
    **{(s, CLOSE_AFTER_FLUSH): CLOSING for s in ROUTING},
    **{(s, CLOSE): DONE for s in (*ROUTING, CLOSING)},
}


def test_the_table_is_the_documented_one() -> None:
    assert TRANSITIONS == EXPECTED
    assert STATE_NAMES == ("HEAD", "BUFFERING", "WAITING", "CONNECTING", "RELAY", "CLOSING", "DONE")
    assert EVENT_NAMES == ("buffer", "connecting", "connected", "no_descriptor", "closing", "close")
    assert list(range(7)) == [HEAD, BUFFERING, WAITING, CONNECTING, RELAY, CLOSING, DONE]
    assert list(range(6)) == [BUFFER, CONNECT_STARTED, CONNECTED, NO_DESCRIPTOR, CLOSE_AFTER_FLUSH, CLOSE]


@pytest.mark.parametrize("state", range(len(STATE_NAMES)), ids=STATE_NAMES)
@pytest.mark.parametrize("event", range(len(EVENT_NAMES)), ids=EVENT_NAMES)
def test_every_move_is_the_tables_or_refused(state: int, event: int) -> None:
    if (state, event) in EXPECTED:
        assert next_state(state, event) == EXPECTED[state, event]
    else:
        with pytest.raises(InvalidTransition) as refused:
            next_state(state, event)
        assert str(refused.value) == f"{EVENT_NAMES[event]!r} in state {STATE_NAMES[state]}"


# -- a peer's pipe ---------------------------------------------------------------------------------------------------


@pytest.fixture
def pairs() -> Iterator[Pairs]:
    """A source peer (the test writes on its far end) and a sink peer (the test reads on its far end)."""
    source_sock, source_far = socket.socketpair()
    sink_sock, sink_far = socket.socketpair()
    source_far.settimeout(5)
    sink_far.settimeout(5)
    source_sock.setblocking(False)
    sink_sock.setblocking(False)
    source, sink = Peer(source_sock.detach(), select.EPOLLIN), Peer(sink_sock.detach(), 0)
    yield source, source_far, sink, sink_far
    for peer in (source, sink):
        peer.close()
    source_far.close()
    sink_far.close()


def test_a_splicing_peer_gets_a_pipe_that_never_blocks(
    pairs: Pairs,
) -> None:
    _, _, sink, _ = pairs
    assert sink.pipe_r == sink.pipe_w == -1
    assert sink.start_splicing() is True
    assert sink.pipe_r >= 0 and sink.pipe_w >= 0
    for fd in (sink.pipe_r, sink.pipe_w):
        assert not os.get_blocking(fd), "the pipe never blocks the loop"
        assert not os.get_inheritable(fd), "nor leaks into a child process"
    pipe_r, pipe_w = sink.pipe_r, sink.pipe_w
    sink.close()
    assert sink.pipe_r == sink.pipe_w == -1
    for fd in (pipe_r, pipe_w):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_no_pipe_to_be_had_keeps_the_copy_path(pairs: Pairs) -> None:
    _, _, sink, _ = pairs
    with descriptors_left(0):
        assert sink.start_splicing() is False
    assert sink.pipe_r == sink.pipe_w == -1


def test_a_peer_on_descriptor_0_closes_it_and_its_pipe_on_0_too() -> None:
    """0 is a descriptor like any other (a router whose stdin was closed accepts on it): closing must not skip it."""
    saved = os.dup(0)
    ours, theirs = socket.socketpair()
    other, far = socket.socketpair()  # made now: once 0 is free, a new descriptor would take it
    try:
        os.dup2(ours.fileno(), 0)
        ours.close()
        peer = Peer(0, 0)
        peer.close()
        with pytest.raises(OSError):
            os.fstat(0)
        # with 0 free, a splicing peer's pipe gets it
        sink = Peer(other.detach(), 0)
        assert sink.start_splicing() and 0 in (sink.pipe_r, sink.pipe_w)
        pipe = (sink.pipe_r, sink.pipe_w)
        sink.close()
        for fd in pipe:
            with pytest.raises(OSError):
                os.fstat(fd)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        theirs.close()
        far.close()
        other.close()


def test_splice_in_moves_bytes_from_one_socket_to_the_other(
    pairs: Pairs,
) -> None:
    source, source_far, sink, sink_far = pairs
    assert sink.start_splicing()
    assert sink.splice_in(source) == NOTHING, "nothing to move yet"
    source_far.sendall(b"hello")
    assert sink.splice_in(source) == 5
    assert (source.received, sink.written, sink.piped) == (5, 5, 0)
    assert not sink.pending() and sink.queued() == 0
    assert sink_far.recv(10) == b"hello"
    source_far.sendall(b"again")
    assert sink.splice_in(source) == 5
    assert (source.received, sink.written) == (10, 10), "the counts add up over splices"
    assert sink_far.recv(10) == b"again"
    source_far.shutdown(socket.SHUT_WR)
    assert sink.splice_in(source) == 0
    assert source.eof


def test_what_the_sink_does_not_take_waits_in_its_pipe_behind_its_queue(
    pairs: Pairs,
) -> None:
    source, source_far, sink, sink_far = pairs
    for _ in range(1000):  # the sink's socket is full
        assert sink.write(b"q" * 65536)
        if sink.out:
            break
    queued = len(sink.out)
    assert sink.start_splicing()
    source_far.setblocking(False)
    sent = 0
    for _ in range(100):
        try:
            sent += source_far.send(b"s" * 65536)
        except BlockingIOError:
            break
    moved = sink.splice_in(source)
    assert moved == PIPE_SIZE, "the pipe takes what it holds"
    assert sink.piped == PIPE_SIZE and sink.pending() and sink.queued() == queued + PIPE_SIZE
    assert sink.splice_in(source) == NOTHING, "a full pipe takes nothing more"
    assert sink.flush() is True and sink.piped == PIPE_SIZE, "nothing moves while the socket is full"
    # the far end reads: the queue first, then the pipe, in order
    got = bytearray()
    sink_far.setblocking(False)
    for _ in range(100000):
        try:
            got += sink_far.recv(1 << 20)
        except BlockingIOError:
            pass
        assert sink.flush()
        if not sink.pending() and len(got) == sink.written:
            break
    assert got.endswith(b"s" * PIPE_SIZE)
    assert got[:-PIPE_SIZE].rstrip(b"q") == b"", "the queue's bytes came first"
    assert sent >= PIPE_SIZE


def test_a_source_that_resets_fails_the_splice(pairs: Pairs) -> None:
    source, source_far, sink, _ = pairs
    assert sink.start_splicing()
    os.write(source.fd, b"unread")
    source_far.close()
    assert sink.splice_in(source) == SOURCE_FAILED
    assert source.failure == "Connection reset by peer"


def test_a_sink_that_is_gone_fails_the_splice(pairs: Pairs) -> None:
    source, source_far, sink, sink_far = pairs
    assert sink.start_splicing()
    sink_far.close()
    source_far.sendall(b"data")
    assert sink.splice_in(source) == SINK_FAILED
    assert sink.failure == "Broken pipe"


# -- a session that splices ------------------------------------------------------------------------------------------


def test_a_long_answer_is_copied_to_the_client_never_spliced_and_arrives_whole(loop: FakeLoop, node: Backend) -> None:
    """Answers are copied: spliced, a client that stops reading would make the kernel hold more of them."""
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(GET)
    loop.step(0.5)
    conn = node.accept()
    recv_exactly(conn, len(GET))
    answer = bytes(range(256)) * 8192  # 2 MiB
    conn.setblocking(False)
    view = memoryview(answer)
    got = bytearray()
    client.setblocking(False)
    spliced = False
    for _ in range(100000):
        if view:
            try:
                view = view[conn.send(view) :]
            except BlockingIOError:
                pass
        elif conn.fileno() >= 0:
            conn.close()
        loop.step(0.0)
        spliced = spliced or session.client.pipe_w >= 0
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        got += chunk
    assert bytes(got) == answer
    assert not spliced, "the answer was copied"
    assert node.node.stats.bytes_from_node == len(answer)
    assert loop.ended[0].sent == len(answer)
    client.close()


def test_a_long_upload_is_spliced_to_the_node_and_arrives_whole(loop: FakeLoop, node: Backend) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    post = uwsgi_packet(request_vars(method="POST", body_len=len(body)))
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(post)
    loop.step(0.5)
    conn = node.accept()
    assert recv_exactly(conn, len(post)) == post
    assert session.state == RELAY
    conn.setblocking(False)
    client.setblocking(False)
    view = memoryview(body)
    got = bytearray()
    spliced = False
    for _ in range(100000):
        if view:
            try:
                view = view[client.send(view) :]
            except BlockingIOError:
                pass
        loop.step(0.0)
        backend = session.backend
        spliced = spliced or (backend is not None and backend.pipe_w >= 0)
        try:
            got += conn.recv(1 << 20)
        except BlockingIOError:
            pass
        if len(got) == len(body):
            break
    assert bytes(got) == body
    assert spliced, "the upload went through the node's pipe"
    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    conn.close()
    assert read_to_end(client, loop) == b"HTTP/1.1 200 OK\r\n\r\n"
    client.close()


def test_splicing_is_off_when_the_buffer_size_exceeds_a_pipe_or_settings_say_so(loop: FakeLoop, node: Backend) -> None:
    body = b"a" * (1 << 20)
    post = uwsgi_packet(request_vars(method="POST", body_len=len(body)))
    for settings in (Settings(high_water=PIPE_SIZE + 1), Settings(splice=False)):
        session, client = open_session(loop, static_routing(node.node), settings)
        client.sendall(post)
        loop.step(0.5)
        conn = node.accept()
        recv_exactly(conn, len(post))
        client.setblocking(False)
        conn.setblocking(False)
        view = memoryview(body)
        got = 0
        for _ in range(100000):
            if view:
                try:
                    view = view[client.send(view) :]
                except BlockingIOError:
                    pass
            loop.step(0.0)
            backend = session.backend
            assert backend is not None and backend.pipe_w == -1, "copied, never spliced"
            try:
                got += len(conn.recv(1 << 20))
            except BlockingIOError:
                pass
            if got == len(body):
                break
        assert got == len(body)
        conn.close()
        client.close()
        session.close()


def test_an_upload_spliced_while_the_node_lags_keeps_the_client_waiting(loop: FakeLoop, node: Backend) -> None:
    body = b"u" * (4 << 20)
    post = uwsgi_packet(request_vars(method="POST", body_len=len(body)))
    session, client = open_session(loop, static_routing(node.node))
    client.sendall(post)
    loop.step(0.5)
    conn = node.accept()
    recv_exactly(conn, len(post))
    client.setblocking(False)
    view = memoryview(body)
    for _ in range(2000):
        try:
            view = view[client.send(view) :]
        except BlockingIOError:
            pass
        loop.step(0.0)
    backend = session.backend
    assert backend is not None and view, "the client could not send it all: the node reads nothing"
    assert backend.queued() <= PIPE_SIZE + Settings().high_water + Settings().read_size
    assert recv_stepping(conn, 1000, loop) == b"u" * 1000
    conn.close()
    client.close()
    session.close()


def test_an_upload_splices_from_its_second_full_read_in_a_row(loop: FakeLoop, node: Backend) -> None:
    post = uwsgi_packet(request_vars(method="POST", body_len=1 << 20))
    session, client = open_session(loop, static_routing(node.node), Settings(read_size=1000))
    client.sendall(post)
    loop.step(0.3)
    conn = node.accept()
    recv_exactly(conn, len(post))
    backend = session.backend
    assert backend is not None

    def upload(size: int) -> None:
        client.sendall(b"a" * size)
        loop.run_until(lambda: backend.written + backend.queued() == len(post) + total + size)

    total = 0
    for size, spliced in ((1000, False), (500, False), (1000, False), (1000, True)):
        upload(size)
        total += size
        assert (backend.pipe_w >= 0) is spliced, f"after {total} bytes"
    assert recv_stepping(conn, total, loop) == b"a" * total
    conn.close()
    client.close()
    session.close()


def test_a_buffer_size_of_exactly_a_pipe_still_splices(loop: FakeLoop, node: Backend) -> None:
    post = uwsgi_packet(request_vars(method="POST", body_len=1 << 20))
    session, client = open_session(loop, static_routing(node.node), Settings(high_water=PIPE_SIZE, read_size=1000))
    client.sendall(post)
    loop.step(0.3)
    conn = node.accept()
    recv_exactly(conn, len(post))
    for _ in range(2):
        client.sendall(b"b" * 1000)
        loop.step(0.3)
    backend = session.backend
    assert backend is not None and backend.pipe_w >= 0
    assert recv_stepping(conn, 2000, loop) == b"b" * 2000
    conn.close()
    client.close()
    session.close()


def test_the_pipe_counts_every_byte_it_holds(pairs: Pairs) -> None:
    source, source_far, sink, _sink_far = pairs
    for _ in range(1000):  # the sink's socket is full: what is spliced stays in the pipe
        assert sink.write(b"q" * 65536)
        if sink.out:
            break
    sink.out.clear()
    assert sink.start_splicing()
    source_far.sendall(b"1")
    assert sink.splice_in(source) == 1
    assert sink.piped == 1 and sink.pending(), "one byte in the pipe is pending"
    source_far.sendall(b"2345")
    assert sink.splice_in(source) == 4
    assert sink.piped == 5 and sink.queued() == 5
