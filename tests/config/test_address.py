"""``parse_address``: every form users write, the errors they get, and the text round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from uwsgirouter.address import (
    MAX_ABSTRACT_NAME_BYTES,
    MAX_UNIX_PATH_BYTES,
    AbstractAddress,
    Address,
    FdAddress,
    SharedSocketRef,
    TcpAddress,
    UnixAddress,
    parse_address,
)

FAST = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3031", TcpAddress("127.0.0.1", 3031)),
        ("example.com:80", TcpAddress("example.com", 80)),
        ("localhost:0", TcpAddress("localhost", 0)),
        ("*:3031", TcpAddress("*", 3031)),
        (":3031", TcpAddress("", 3031)),
        (":0", TcpAddress("", 0)),
        ("0.0.0.0:65535", TcpAddress("0.0.0.0", 65535)),
        ("[::1]:3031", TcpAddress("::1", 3031)),
        ("[fe80::1:2]:80", TcpAddress("fe80::1:2", 80)),
        ("/tmp/uwsgi.sock", UnixAddress("/tmp/uwsgi.sock")),
        ("/tmp/with:colon.sock", UnixAddress("/tmp/with:colon.sock")),
        ("./rel.sock", UnixAddress("./rel.sock")),
        ("../up/rel.sock", UnixAddress("../up/rel.sock")),
        ("rel.sock", UnixAddress("rel.sock")),
        ("@foobar", AbstractAddress("foobar")),
        ("@with:colon", AbstractAddress("with:colon")),
        ("=0", SharedSocketRef(0)),
        ("=12", SharedSocketRef(12)),
        ("fd://3", FdAddress(3)),
        ("fd://0", FdAddress(0)),
    ],
)
def test_parse_address_forms(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the address is empty"),
        (":99999", r"invalid port '99999' in address ':99999' \(expected 0-65535\)"),
        ("1.2.3.4:65536", "invalid port '65536'"),
        ("host:abc", "invalid port 'abc' in address 'host:abc'"),
        ("host:", "invalid port ''"),
        ("host:-1", "invalid port '-1'"),
        (":\u0663\u0660", "invalid port"),
        ("bad host:80", "invalid host 'bad host' in address 'bad host:80'"),
        ("-bad:80", "invalid host '-bad'"),
        ("a:b:c", "invalid port 'b:c'"),
        ("[::1]3031", r"IPv6 address '\[::1\]3031' must look like \[::1\]:3031"),
        ("[]:80", "IPv6 address"),
        ("[::1]:", "invalid port ''"),
        ("=x", "the shared socket index in '=x' must be a non-negative number"),
        ("=", "the shared socket index in '=' must be a non-negative number"),
        ("=-1", "the shared socket index"),
        ("fd://", "the file descriptor in 'fd://' must be a non-negative number"),
        ("fd://x", "the file descriptor in 'fd://x'"),
        ("@", "an abstract socket needs a name after '@'"),
    ],
)
def test_parse_address_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(text)


def test_unix_path_limit_is_107_bytes() -> None:
    assert MAX_UNIX_PATH_BYTES == 107
    longest = "/" + "a" * 106
    assert parse_address(longest) == UnixAddress(longest)
    with pytest.raises(ValueError, match="is longer than 107 bytes"):
        parse_address(longest + "a")  # 108 bytes: no room left for sun_path's NUL
    with pytest.raises(ValueError, match="UNIX socket path"):
        parse_address("/" + "é" * 54)  # 109 bytes in 55 characters: the limit counts bytes


def test_abstract_name_limit_is_106_bytes() -> None:
    assert MAX_ABSTRACT_NAME_BYTES == 106
    longest = "n" * 106
    assert parse_address("@" + longest) == AbstractAddress(longest)
    assert len(AbstractAddress(longest).sockaddr) == 108
    with pytest.raises(ValueError, match=r"abstract socket name .* is longer than 106 bytes"):
        parse_address("@" + longest + "n")
    with pytest.raises(ValueError, match="abstract socket name"):
        parse_address("@" + "é" * 54)


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:3031",
        ":3031",
        "*:0",
        "[::1]:3031",
        "/tmp/uwsgi.sock",
        "./rel.sock",
        "rel.sock",
        "@foobar",
        "=0",
        "=7",
        "fd://3",
    ],
)
def test_str_round_trip(text: str) -> None:
    address = parse_address(text)
    assert str(address) == text
    assert parse_address(str(address)) == address


def test_abstract_sockaddr_has_leading_and_trailing_nul() -> None:
    address = parse_address("@foobar")
    assert isinstance(address, AbstractAddress)
    assert address.sockaddr == b"\0foobar\0"
    assert AbstractAddress("é").sockaddr == b"\0\xc3\xa9\0"


def test_addresses_are_hashable_values() -> None:
    assert len({parse_address(":3031"), parse_address(":3031"), TcpAddress("", 3031)}) == 1
    assert parse_address("=0") != parse_address("fd://0")


hosts = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9.\-_]{0,20}[A-Za-z0-9])?\Z")


@FAST
@given(host=st.one_of(st.just(""), hosts), port=st.integers(0, 65535))
def test_tcp_round_trip_property(host: str, port: int) -> None:
    address = TcpAddress(host, port)
    assert parse_address(str(address)) == address


@FAST
@given(index=st.integers(0, 10**6))
def test_shared_socket_and_fd_round_trip_property(index: int) -> None:
    assert parse_address(str(SharedSocketRef(index))) == SharedSocketRef(index)
    assert parse_address(str(FdAddress(index))) == FdAddress(index)


@FAST
@given(port=st.integers(65536, 10**9))
def test_ports_above_65535_are_refused(port: int) -> None:
    with pytest.raises(ValueError, match="expected 0-65535"):
        parse_address(f"127.0.0.1:{port}")
