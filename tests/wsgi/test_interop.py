"""Same app, same requests: our worker and real uWSGI 2.0.31 must answer the same bytes."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from tests.support import (
    UWSGI,
    ProcessManager,
    can_connect,
    connect,
    free_port,
    read_all,
    request_vars,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)
from tests.wsgi import apps
from tests.wsgi.forked import WorkerFactory

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(UWSGI is None, reason="uWSGI 2.0.31 is not installed"),
]

BODY = os.urandom(70_000)
# SCRIPT_NAME is sent because uWSGI leaves it out otherwise, which trips wsgiref.validate.
CASES: list[tuple[str, dict[str, str], bytes]] = [
    ("get", request_vars(path="/hello", QUERY_STRING="a=1&b=2", SCRIPT_NAME=""), b""),
    ("http10", request_vars(path="/", SERVER_PROTOCOL="HTTP/1.0", SCRIPT_NAME=""), b""),
    ("post", request_vars(path="/post", method="POST", body_len=len(BODY), SCRIPT_NAME=""), BODY),
    ("lines", request_vars(path="/lines", method="POST", body_len=8, SCRIPT_NAME=""), b"a\nbb\nccc"),
    ("write", request_vars(path="/write", SCRIPT_NAME=""), b""),
    ("stream", request_vars(path="/stream", QUERY_STRING="n=5&size=3000", SCRIPT_NAME=""), b""),
    ("raise_late", request_vars(path="/raise_late", SCRIPT_NAME=""), b""),
    ("bare_status", request_vars(path="/raw/x"), b""),
    ("https", request_vars(path="/environ", HTTPS="on", SCRIPT_NAME=""), b""),
]


def test_responses_are_byte_identical(procs: ProcessManager, workers: WorkerFactory, tmp_path: Path) -> None:
    assert UWSGI is not None
    port = free_port()
    app_file = Path(apps.__file__)
    procs.start(
        [
            UWSGI,
            "--socket",
            f"127.0.0.1:{port}",
            "--wsgi-file",
            str(app_file),
            "--master",
            "--die-on-term",
            "--disable-logging",
        ],
        "uwsgi",
    )
    ours = workers.start(apps.application)
    theirs = ("127.0.0.1", port)
    wait_until(lambda: can_connect(theirs), 15, what="uWSGI")
    for name, vars, body in CASES:
        expected = uwsgi_request(theirs, vars, body).raw
        got = uwsgi_request(ours.address, vars, body).raw
        assert expected.startswith(b"HTTP/"), name  # a real answer, not two identical failures
        assert got == expected, name


def test_refusals_are_the_same(procs: ProcessManager, workers: WorkerFactory) -> None:
    """Oversized head, too many vars, unknown modifier: both close without a byte; ping gets the same pong."""
    assert UWSGI is not None
    port = free_port()
    argv = [UWSGI, "--socket", f"127.0.0.1:{port}", "--wsgi-file", str(Path(apps.__file__)), "--die-on-term"]
    procs.start([*argv, "--disable-logging"], "uwsgi")
    ours = workers.start(apps.application)
    theirs = ("127.0.0.1", port)
    wait_until(lambda: can_connect(theirs), 15, what="uWSGI")
    many = list(request_vars(SCRIPT_NAME="").items())
    many += [(f"HTTP_X_{i}", "v") for i in range(129 - len(many))]
    packets = [
        uwsgi_packet(request_vars(HTTP_X_BIG="x" * 5000)),
        uwsgi_packet(many),
        uwsgi_packet(request_vars(), modifier1=5),
        struct.pack("<BHB", 100, 0, 0),
    ]
    for packet in packets:
        assert exchange(ours.address, packet) == exchange(theirs, packet), packet[:8]


def exchange(address: tuple[str, int], packet: bytes) -> bytes:
    with connect(address) as sock:
        try:
            sock.sendall(packet)
            return read_all(sock)
        except ConnectionResetError:
            return b""
