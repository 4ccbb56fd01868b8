"""The router core's small parts in process: node addresses (router/nodes.py), the post-buffering body store
(router/postbuffer.py) and the error pages (router/responses.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from uwsgirouter.router import nodes
from uwsgirouter.router.nodes import MAX_CACHED_ADDRESSES, MAX_UNIX_PATH_BYTES, Node, NodeStats, make_node, resolve
from uwsgirouter.router.postbuffer import BodyBuffer
from uwsgirouter.router.responses import error_response

# -- node addresses -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family", "sockaddr"),
    [
        ("/run/app.sock", socket.AF_UNIX, b"/run/app.sock"),
        ("./app:1.sock", socket.AF_UNIX, b"./app:1.sock"),
        ("/run/a:b", socket.AF_UNIX, b"/run/a:b"),
        ("app.sock", socket.AF_UNIX, b"app.sock"),
        ("@name", socket.AF_UNIX, b"\0name\0"),
        ("127.0.0.1:3031", socket.AF_INET, ("127.0.0.1", 3031)),
        (":3031", socket.AF_INET, ("0.0.0.0", 3031)),
        ("[::1]:3031", socket.AF_INET6, ("::1", 3031)),
        ("127.0.0.1:65535", socket.AF_INET, ("127.0.0.1", 65535)),
        ("s", socket.AF_UNIX, b"s"),
        ("@a:1", socket.AF_UNIX, b"\0a:1\0"),
        ("/run/\udcff.sock", socket.AF_UNIX, b"/run/\xff.sock"),
    ],
)
def test_node_addresses_follow_uwsgis_rules(name: str, family: int, sockaddr: object) -> None:
    assert resolve(name) == (family, sockaddr)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", "empty node address"),
        ("[::1:3031", "invalid IPv6 node address"),
        ("127.0.0.1:http", "invalid port in node address"),
        ("127.0.0.1:65536", "invalid port in node address"),
        ("127.0.0.1:", "invalid port in node address"),
        ("example.com:80", "'example.com' is not a numeric address"),
        ("X:1", "'X' is not a numeric address"),
        ("a@b:1", "'a@b' is not a numeric address"),
        ("1.2.3.4:5:6", "invalid port in node address '1.2.3.4:5:6'"),
        ("[::1]:80]:1", "invalid port in node address '[::1]:80]:1'"),
        ("/" + "x" * MAX_UNIX_PATH_BYTES, f"UNIX socket path longer than {MAX_UNIX_PATH_BYTES} bytes"),
    ],
)
def test_what_is_not_a_node_address_is_said(name: str, error: str) -> None:
    with pytest.raises(ValueError) as refused:
        resolve(name)
    assert str(refused.value).startswith(error)


def test_the_longest_unix_path_is_accepted() -> None:
    longest = "/" + "x" * (MAX_UNIX_PATH_BYTES - 1)
    assert resolve(longest) == (socket.AF_UNIX, longest.encode())
    assert resolve("@" + "a" * (MAX_UNIX_PATH_BYTES - 2))[1] == b"\0" + b"a" * (MAX_UNIX_PATH_BYTES - 2) + b"\0"
    with pytest.raises(ValueError, match="longer than"):
        resolve("@" + "a" * (MAX_UNIX_PATH_BYTES - 1))


def test_host_names_are_looked_up_only_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[tuple[object, ...]] = []

    def getaddrinfo(*args: object) -> list[tuple[object, ...]]:
        looked_up.append(args)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 8000))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert resolve("lookup-allowed.test:8000", allow_dns=True) == (socket.AF_INET, ("10.1.2.3", 8000))
    assert looked_up == [("lookup-allowed.test", 8000, socket.AF_INET, socket.SOCK_STREAM)]
    with pytest.raises(ValueError, match="is not a numeric address"):
        resolve("lookup-refused.test:8000")


def test_a_name_that_does_not_resolve_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(*args: object) -> list[tuple[object, ...]]:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ValueError, match=r"cannot resolve 'unknown-name\.test': .*Name or service not known"):
        resolve("unknown-name.test:80", allow_dns=True)


def test_resolved_addresses_are_cached_and_the_cache_is_bounded() -> None:
    nodes._cache.clear()
    assert resolve("/run/cached.sock") == resolve("/run/cached.sock")
    assert nodes._cache["/run/cached.sock"] == (socket.AF_UNIX, b"/run/cached.sock")
    for number in range(MAX_CACHED_ADDRESSES - 1):
        resolve(f"/run/n{number}.sock")
    assert len(nodes._cache) == MAX_CACHED_ADDRESSES
    resolve("/run/one-more.sock")
    assert list(nodes._cache) == ["/run/one-more.sock"], "a full cache starts again"
    nodes._cache.clear()


def test_a_node_carries_its_modifiers_and_fresh_counters() -> None:
    node = make_node("127.0.0.1:3031", 5, 9)
    assert (node.name, node.family, node.sockaddr, node.modifier1, node.modifier2) == (
        "127.0.0.1:3031",
        socket.AF_INET,
        ("127.0.0.1", 3031),
        5,
        9,
    )
    assert node.stats == NodeStats(0, 0, 0, 0) and node.dead_until == 0.0
    other = make_node("127.0.0.1:3031")
    assert other.stats is not node.stats, "each node counts for itself"
    assert other != node, "nodes are told apart by identity"
    assert Node("n", socket.AF_UNIX, b"n").modifier1 == 0


# -- post-buffering -----------------------------------------------------------------------------------------------


def test_a_body_up_to_the_limit_stays_in_memory() -> None:
    body = BodyBuffer(10, 10)
    assert not body.complete and not body.spilled
    assert body.feed(b"01234") == b""
    assert body.left == 5
    assert body.feed(b"56789next") == b"next", "what comes after the body is handed back"
    assert body.complete and not body.spilled
    assert body.memory == b"0123456789"
    body.close()


def test_a_body_beyond_the_limit_goes_to_a_file_read_back_in_order(tmp_path: Path) -> None:
    body = BodyBuffer(25, 10, str(tmp_path))
    assert body.feed(b"0123456789") == b""
    assert not body.spilled
    assert body.feed(b"abcde") == b""
    assert body.spilled and body.memory == b""
    assert body.feed(b"fghijklmnoXYZ") == b"XYZ"
    assert body.complete
    assert list(tmp_path.iterdir()) == [], "the file has no name on disk"
    assert body.next_chunk(7) == b"0123456"
    assert body.next_chunk(100) == b"789abcdefghijklmno"
    assert body.next_chunk(100) == b""
    file = body.file
    body.close()
    assert body.file is None and file is not None and file.closed
    body.close()  # twice is fine


def test_a_body_bigger_than_the_limit_in_one_piece_spills_at_once(tmp_path: Path) -> None:
    body = BodyBuffer(20, 4, str(tmp_path))
    assert body.feed(b"x" * 20) == b""
    assert body.spilled and body.next_chunk(100) == b"x" * 20
    body.close()


def test_a_missing_directory_fails_the_feed_with_the_os_error(tmp_path: Path) -> None:
    body = BodyBuffer(20, 4, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        body.feed(b"x" * 20)
    body.close()


class _FailingClose:
    def close(self) -> None:
        raise OSError("close failed")


def test_closing_a_body_never_raises() -> None:
    body = BodyBuffer(20, 4)
    body.file = _FailingClose()  # type: ignore[assignment]
    body.close()
    assert body.file is None


# -- error pages --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "Bad Request"),
        (431, "Request Header Fields Too Large"),
        (502, "Bad Gateway"),
        (503, "Service Unavailable"),
        (504, "Gateway Timeout"),
        (599, "Error"),
    ],
)
def test_an_error_page_is_a_complete_response(status: int, reason: str) -> None:
    page = error_response(status, "why", b"HTTP/1.1")
    head, _, body = page.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        f"HTTP/1.1 {status} {reason}".encode(),
        b"Content-Type: text/plain",
        f"Content-Length: {len(body)}".encode(),
        b"Connection: close",
    ]
    assert body == f"{status} {reason}: why\n".encode()


def test_an_error_page_speaks_http_1_0_unless_the_request_said_1_x() -> None:
    assert error_response(502, "x", b"HTTP/1.0").startswith(b"HTTP/1.0 502 ")
    assert error_response(502, "x").startswith(b"HTTP/1.0 502 ")
    assert error_response(502, "x", b"HTTP/2").startswith(b"HTTP/1.0 502 ")
    assert error_response(502, "x", b"GARBAGE\r\n").startswith(b"HTTP/1.0 502 ")


def test_an_error_page_body_is_ascii() -> None:
    page = error_response(502, "no node for key caf\u00e9")
    assert page.endswith(b"no node for key caf?\n")
    assert b"Content-Length: 38\r\n" in page


def test_make_node_never_looks_a_name_up_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def getaddrinfo(*args: object) -> list[tuple[object, ...]]:
        calls.append(args)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 1))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ValueError, match="is not a numeric address"):
        make_node("lookup.test:1")
    assert make_node("lookup.test:1", allow_dns=True).sockaddr == ("10.0.0.1", 1)
    assert make_node("lookup.test:1", allow_dns=True).sockaddr == ("10.0.0.1", 1)
    assert len(calls) == 1, "looked up once, then taken from the cache"
    nodes._cache.clear()


def test_a_spilled_body_that_hits_a_file_size_limit_fails_the_feed_that_hit_it(tmp_path: Path) -> None:
    import resource
    import signal

    body = BodyBuffer(3000, 10, str(tmp_path))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        body.feed(b"a" * 990)
        with pytest.raises(OSError, match="File too large"):
            body.feed(b"b" * 20)  # written at once (no buffer), so the error is this feed's
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
        body.close()


def test_the_loop_interface_starts_its_clock_at_zero_and_leaves_the_work_to_the_loop() -> None:
    from uwsgirouter.router.loop import Callback, Loop, Watcher

    base = Loop()
    assert base.now == 0.0 and base.shutting_down is False
    assert Loop(5.0).now == 5.0
    calls: list[Callable[[], None]] = [
        lambda: base.register(0, Callback(lambda events: None), 0),
        lambda: Watcher().ready(0, 0),
        lambda: base.modify(0, 0),
        lambda: base.unregister(0),
        lambda: base.wait_for_descriptor(lambda: None),
        lambda: base.session_ended(None, False, 0, 0.0),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(NotImplementedError):
            call()
