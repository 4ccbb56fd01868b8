"""One side of a session (router/peer.py) over real socket pairs: what the other end receives, in which order, and
what the peer says when there is nothing to read, no room to write, or the connection broke."""

from __future__ import annotations

import os
import select
import socket
import stat
from collections.abc import Iterator

import pytest

from uwsgirouter.router.peer import Peer


@pytest.fixture
def pair() -> Iterator[tuple[Peer, socket.socket]]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    ours.setblocking(False)
    peer = Peer(ours.detach(), select.EPOLLIN)
    yield peer, theirs
    peer.close()
    theirs.close()


def fill(peer: Peer) -> int:
    """Write until the socket takes nothing more; how many bytes it took."""
    taken = 0
    for _ in range(10000):
        before = peer.written
        assert peer.write(b"f" * 65536)
        taken += peer.written - before
        if peer.out:
            return taken
    raise AssertionError("the socket never filled")


def drain(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed early"
        data += chunk
    return bytes(data)


def test_a_new_peer_knows_its_descriptor_and_mask(pair: tuple[Peer, socket.socket]) -> None:
    peer, _ = pair
    assert stat.S_ISSOCK(os.fstat(peer.fd).st_mode)
    assert peer.mask == select.EPOLLIN
    assert (peer.out, peer.eof, peer.failure, peer.received, peer.written) == (bytearray(), False, "", 0, 0)


def test_read_gives_what_arrived_and_counts_it(pair: tuple[Peer, socket.socket]) -> None:
    peer, theirs = pair
    theirs.sendall(b"hello world")
    assert peer.read(5) == b"hello"
    assert peer.read(100) == b" world"
    assert peer.received == 11


def test_read_with_nothing_there_is_none_without_a_failure(pair: tuple[Peer, socket.socket]) -> None:
    peer, _ = pair
    assert peer.read(100) is None
    assert peer.failure == ""


def test_read_at_the_end_of_input_is_empty(pair: tuple[Peer, socket.socket]) -> None:
    peer, theirs = pair
    theirs.sendall(b"x")
    theirs.shutdown(socket.SHUT_WR)
    assert peer.read(100) == b"x"
    assert peer.read(100) == b""
    assert peer.failure == ""


def test_read_on_a_reset_connection_says_why(pair: tuple[Peer, socket.socket]) -> None:
    peer, theirs = pair
    os.write(peer.fd, b"unread")  # the other end closes with this unread: our side is reset
    theirs.close()
    assert peer.read(100) is None
    assert peer.failure == "Connection reset by peer"


def test_write_sends_at_once_when_the_socket_takes_it(pair: tuple[Peer, socket.socket]) -> None:
    peer, theirs = pair
    assert peer.write(b"abc") is True
    assert peer.out == b""
    assert peer.written == 3
    assert theirs.recv(10) == b"abc"


def test_write_queues_what_the_socket_does_not_take_and_flush_sends_it_in_order(
    pair: tuple[Peer, socket.socket],
) -> None:
    peer, theirs = pair
    taken = fill(peer)
    queued = len(peer.out)
    assert queued > 0 and peer.written == taken
    # once something is queued, newer bytes go behind it, even if the socket could take them now
    assert drain(theirs, 4096) == b"f" * 4096
    assert peer.write(b"LAST") is True
    assert peer.written == taken, "nothing was sent past the queue"
    assert peer.out.endswith(b"LAST") and len(peer.out) == queued + 4
    got = bytearray(b"f" * 4096)
    for _ in range(10000):
        assert peer.flush() is True
        theirs.setblocking(False)
        try:
            got += theirs.recv(1 << 20)
        except BlockingIOError:
            pass
        if not peer.out and got.endswith(b"LAST"):
            break
    assert bytes(got) == b"f" * (taken + queued) + b"LAST"
    assert peer.written == taken + queued + 4


def test_write_of_a_partly_taken_piece_queues_exactly_the_rest(pair: tuple[Peer, socket.socket]) -> None:
    peer, _theirs = pair
    view = socket.socket(fileno=peer.fd)
    view.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    view.detach()
    data = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
    assert peer.write(data) is True
    sent = peer.written
    assert 0 < sent < len(data)
    assert peer.out == data[sent:]


def test_write_when_the_socket_takes_nothing_queues_it_all(pair: tuple[Peer, socket.socket]) -> None:
    peer, _ = pair
    fill(peer)
    peer.out.clear()  # the socket is full, the queue empty: the next write finds EAGAIN
    written = peer.written
    assert peer.write(b"later") is True
    assert peer.out == b"later"
    assert peer.written == written


def test_flush_with_a_full_socket_keeps_the_queue(pair: tuple[Peer, socket.socket]) -> None:
    peer, _ = pair
    fill(peer)
    queued = bytes(peer.out)
    written = peer.written
    assert peer.flush() is True
    assert peer.out == queued and peer.written == written


def test_flush_of_an_empty_queue_sends_nothing(pair: tuple[Peer, socket.socket]) -> None:
    peer, theirs = pair
    assert peer.flush() is True
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(10)


def test_write_and_flush_to_a_closed_peer_fail_with_the_reason(pair: tuple[Peer, socket.socket]) -> None:
    peer, theirs = pair
    theirs.close()
    assert peer.write(b"x") is False
    assert peer.failure == "Broken pipe"
    peer.failure = ""
    peer.out += b"queued"
    assert peer.flush() is False
    assert peer.failure == "Broken pipe"
    assert peer.out == b"queued"


def test_shutdown_write_gives_the_other_end_its_end_of_input_and_it_may_still_answer(
    pair: tuple[Peer, socket.socket],
) -> None:
    peer, theirs = pair
    peer.shutdown_write()
    assert theirs.recv(10) == b""
    theirs.sendall(b"answer")
    assert peer.read(10) == b"answer"


def test_shutdown_write_of_an_unconnected_socket_is_no_error() -> None:
    fd = socket.socket(socket.AF_INET, socket.SOCK_STREAM).detach()
    peer = Peer(fd, 0)
    peer.shutdown_write()  # ENOTCONN is swallowed
    peer.close()
    assert peer.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    peer.close()  # a second close is nothing
