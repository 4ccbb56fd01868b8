"""The PEP 3333 environ built from raw uwsgi bytes, and start_response/write semantics on a socketpair."""

from __future__ import annotations

import socket
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.types import StartResponse
from wsgiref.validate import validator

import pytest

from uwsgirouter.protocol import RequestHead, RequestReader, encode_packet
from uwsgirouter.workers.response import Response
from uwsgirouter.workers.wsgi import ClientDisconnected, FileWrapper, InputStream, build_environ


def head_from_wire(pairs: list[tuple[bytes, bytes]], modifier1: int = 0) -> tuple[RequestHead, bytes]:
    reader = RequestReader()
    reader.receive_data(encode_packet(pairs, modifier1) + b"BODY")
    head = reader.next_event()
    assert isinstance(head, RequestHead)
    rest = reader.next_event()
    return head, getattr(rest, "data", b"")


BASE = [
    (b"REQUEST_METHOD", b"POST"),
    (b"REQUEST_URI", b"/p?q=1"),
    (b"PATH_INFO", b"/p"),
    (b"QUERY_STRING", b"q=1"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"SERVER_NAME", b"localhost"),
    (b"SERVER_PORT", b"80"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"CONTENT_LENGTH", b"4"),
    (b"HTTP_HOST", b"example.com"),
]


def environ_for(pairs: list[tuple[bytes, bytes]], modifier1: int = 0) -> dict[str, Any]:
    head, rest = head_from_wire(pairs, modifier1)
    return build_environ(head, InputStream(lambda n: b"", rest, 4), b"node1")


def test_environ_has_the_vars_and_the_keys_uwsgi_sets() -> None:
    env = environ_for(BASE)
    for key, value in BASE:
        assert env[key.decode()] == value.decode()
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is False
    assert env["wsgi.errors"] is sys.stderr
    assert env["wsgi.file_wrapper"] is FileWrapper
    assert env["uwsgi.version"] == b"2.0.31"
    assert env["uwsgi.node"] == b"node1"
    assert "uwsgi.modifier1" not in env  # uWSGI 2.0.31 does not set it either
    assert env["wsgi.input"].read() == b"BODY"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        passes_wsgiref_validator(env)


def passes_wsgiref_validator(env: dict[str, Any]) -> None:
    """wsgiref's validator checks the environ before the app runs: a problem is a warning (an error here)."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Callable[[bytes], None]:
        return lambda data: None

    result = validator(app)(env, start_response)
    try:
        assert b"".join(result) == b""
    finally:
        if hasattr(result, "close"):
            result.close()


def test_values_are_latin1_native_strings_and_the_last_duplicate_wins() -> None:
    env = environ_for([*BASE, (b"HTTP_X_NAME", b"caf\xc3\xa9 \xff"), (b"HTTP_HOST", b"second")])
    assert env["HTTP_X_NAME"] == "caf\u00c3\u00a9 \u00ff"
    assert env["HTTP_X_NAME"].encode("latin-1") == b"caf\xc3\xa9 \xff"
    assert env["HTTP_HOST"] == "second"
    assert env["CONTENT_LENGTH"] == "4"


def test_empty_values_are_kept() -> None:
    env = environ_for([*BASE, (b"CONTENT_TYPE", b"")])
    assert env["CONTENT_TYPE"] == ""


def test_script_name_defaults_to_empty() -> None:
    assert environ_for(BASE)["SCRIPT_NAME"] == ""  # uWSGI omits it; PEP 3333 and wsgiref.validate want it
    assert environ_for([*BASE, (b"SCRIPT_NAME", b"/app")])["SCRIPT_NAME"] == "/app"


@pytest.mark.parametrize(
    ("extra", "scheme"),
    [
        ([(b"HTTPS", b"on")], "https"),
        ([(b"HTTPS", b"ON")], "https"),
        ([(b"HTTPS", b"1")], "https"),
        ([(b"HTTPS", b"off")], "http"),
        ([(b"UWSGI_SCHEME", b"ftp")], "ftp"),
        ([(b"HTTPS", b"on"), (b"UWSGI_SCHEME", b"http")], "http"),
        ([(b"REQUEST_SCHEME", b"https")], "https"),
        ([(b"REQUEST_SCHEME", b"gopher")], "http"),
        ([], "http"),
    ],
)
def test_url_scheme(extra: list[tuple[bytes, bytes]], scheme: str) -> None:
    assert environ_for([*BASE, *extra])["wsgi.url_scheme"] == scheme


def test_modifier1_30_strips_script_name_from_path_info() -> None:
    pairs = [*BASE[:2], (b"SCRIPT_NAME", b"/app"), (b"PATH_INFO", b"/app/x"), *BASE[3:]]
    assert environ_for(pairs, 30)["PATH_INFO"] == "/x"
    assert environ_for(pairs, 0)["PATH_INFO"] == "/app/x"


# -- start_response / write ----------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def sent(ours: socket.socket, peer: socket.socket) -> bytes:
    """Everything ``ours`` sent, once it is closed."""
    ours.close()
    return b"".join(iter(lambda: peer.recv(65536), b""))


def test_head_is_sent_lazily_with_the_first_non_empty_chunk(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    r = Response(ours, b"HTTP/1.1")
    write = r.start_response("200 OK", [("Content-Type", "text/plain"), ("X-A", "1")])
    write(b"")
    assert not r.head_sent
    write(b"hello")
    r.write(bytearray(b" world"))
    r.finish()
    assert sent(ours, peer) == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\nhello world"
    assert (r.body_size, r.status_code, r.head_size) == (11, 200, 53)


def test_finish_sends_the_head_of_an_empty_response(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    r = Response(ours, b"HTTP/1.0")
    r.start_response("204 No Content", [])
    r.finish()
    assert sent(ours, peer) == b"HTTP/1.0 204 No Content\r\n\r\n"


@pytest.mark.parametrize(
    ("status", "line"),
    [
        ("200", b"200 OK"),
        ("200 ", b"200 OK"),
        ("418", b"418 I'm a teapot"),
        ("308", b"308 Unknown"),
        ("299", b"299 Unknown"),
    ],
)
def test_a_bare_code_gets_uwsgi_reason_phrase(
    pair: tuple[socket.socket, socket.socket], status: str, line: bytes
) -> None:
    ours, peer = pair
    r = Response(ours, b"HTTP/1.1")
    r.start_response(status, [])
    r.finish()
    assert sent(ours, peer) == b"HTTP/1.1 " + line + b"\r\n\r\n"


def test_start_response_twice_needs_exc_info(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    r = Response(ours, b"HTTP/1.1")
    r.start_response("200 OK", [])
    with pytest.raises(RuntimeError, match="second time"):
        r.start_response("500 Oops", [])
    try:
        raise ValueError("app failed")
    except ValueError:
        r.start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())  # replaces: nothing sent yet
    r.write(b"x")
    assert peer.recv(1000).startswith(b"HTTP/1.1 500 Oops\r\n")
    try:
        raise KeyError("late")
    except KeyError:
        with pytest.raises(KeyError, match="late"):  # head already sent: re-raised
            r.start_response("500 Oops", [], sys.exc_info())


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (b"200 OK", [], ValueError),
        ("OK", [], ValueError),
        ("200OK", [], ValueError),
        ("200 OK", [("X-A", 1)], TypeError),
        ("200 OK", [("X-A", "a\r\nInjected: 1")], ValueError),
        ("200 OK", [("X:A", "1")], ValueError),
    ],
)
def test_invalid_status_or_headers_are_refused(
    pair: tuple[socket.socket, socket.socket], status: Any, headers: Any, error: type[Exception]
) -> None:
    r = Response(pair[0], b"HTTP/1.1")
    with pytest.raises(error):
        r.start_response(status, headers)


def test_body_must_be_bytes_and_follow_start_response(pair: tuple[socket.socket, socket.socket]) -> None:
    r = Response(pair[0], b"HTTP/1.1")
    with pytest.raises(RuntimeError, match="before calling start_response"):
        r.write(b"x")
    r.start_response("200 OK", [])
    with pytest.raises(TypeError, match="must be bytes"):
        r.write("text")  # type: ignore[arg-type]


def test_a_send_to_a_gone_client_raises_client_disconnected(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.close()
    r = Response(ours, b"HTTP/1.1")
    r.start_response("200 OK", [])
    with pytest.raises(ClientDisconnected):
        r.write(b"x" * 100000)
    assert r.failed
    with pytest.raises(ClientDisconnected):
        r.write(b"more")


def test_internal_error_replaces_an_unsent_response(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    r = Response(ours, b"HTTP/1.1")
    r.start_response("200 OK", [("X-A", "1")])
    r.internal_error()
    assert sent(ours, peer) == (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
        b"Internal Server Error"
    )
    assert r.status_code == 500


def test_sendfile_sends_a_real_file_from_its_position(pair: tuple[socket.socket, socket.socket], tmp_path: Any) -> None:
    ours, peer = pair
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 1000)
    r = Response(ours, b"HTTP/1.1")
    r.start_response("200 OK", [])
    with open(path, "rb") as f:
        f.seek(5)
        assert r.sendfile(FileWrapper(f))
    assert sent(ours, peer) == b"HTTP/1.1 200 OK\r\n\r\n" + (b"0123456789" * 1000)[5:]
    assert r.body_size == 9995


def test_sendfile_declines_what_is_not_a_binary_file(pair: tuple[socket.socket, socket.socket], tmp_path: Any) -> None:
    import io

    r = Response(pair[0], b"HTTP/1.1")
    r.start_response("200 OK", [])
    assert not r.sendfile(FileWrapper(io.BytesIO(b"abc")))
    (tmp_path / "t.txt").write_text("abc")
    with open(tmp_path / "t.txt") as text:
        assert not r.sendfile(FileWrapper(text))
    assert not r.head_sent
    assert list(FileWrapper(io.BytesIO(b"abcdef"), 4)) == [b"abcd", b"ef"]
