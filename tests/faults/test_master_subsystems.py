"""The master does not die of one subsystem: --fastrouter-resubscribe to every datagram address form, and
an unexpected exception in a master-side handler is logged and survived."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from tests.support import ProcessManager, free_port, uwsgi_packet, wait_until
from uwsgirouter.master import Master
from uwsgirouter.ratelog import LogLimiter

LOOPBACK = "127.0.0.1"


def announce(key: str, address: str) -> bytes:
    return uwsgi_packet({"key": key, "address": address, "modifier1": "0", "modifier2": "0"}, modifier1=224)


@pytest.mark.integration
@pytest.mark.parametrize("form", ["unix-path", "abstract", "udp"])
def test_resubscribe_to_every_datagram_address_form(procs: ProcessManager, unix_dir: Path, form: str) -> None:
    """(The master died on the first subscription with a UNIX path: sendto() on an AF_INET socket.)"""
    port, sub_port = free_port(), free_port(socket.SOCK_DGRAM)
    family = socket.AF_INET if form == "udp" else socket.AF_UNIX
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    if form == "unix-path":
        target: str = str(unix_dir / "upstream.sock")
        receiver.bind(target)
    elif form == "abstract":
        target = f"@ur-test-{port}"
        receiver.bind(b"\0" + target[1:].encode() + b"\0")  # uWSGI's abstract names carry a trailing NUL
    else:
        receiver.bind((LOOPBACK, 0))
        target = f"{LOOPBACK}:{receiver.getsockname()[1]}"
    with receiver:
        receiver.settimeout(10)
        router = procs.router("--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-subscription-server",
                              f"{LOOPBACK}:{sub_port}", "--fastrouter-resubscribe", target,
                              wait_for=(LOOPBACK, port))  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(announce("example.com", f"{LOOPBACK}:9"), (LOOPBACK, sub_port))
        forwarded = receiver.recv(4096)
        assert b"example.com" in forwarded and f"{LOOPBACK}:{port}".encode() in forwarded
        wait_until(lambda: "new node" in router.log(), 5, what="the node")
        assert router.alive() and "Traceback" not in router.log(), router.log()


def test_an_unexpected_error_in_a_master_handler_is_logged_once_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    master = Master.__new__(Master)  # only the guard is exercised here
    master.handler_errors = {}
    master.handler_notes = LogLimiter(logging.getLogger("uwsgirouter.master"), per_second=1)
    calls = []

    def broken(value: int) -> None:
        calls.append(value)
        raise TypeError("sendto(): AF_INET address must be tuple, not str")

    with caplog.at_level(logging.INFO, logger="uwsgirouter.master"):
        for value in range(5):
            master._guarded("the subscription server", broken, value)
    assert calls == [0, 1, 2, 3, 4], "every call ran; none escaped"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "the subscription server" in tracebacks[0].getMessage()
    assert any("again (2 times)" in r.getMessage() for r in caplog.records)
    assert master.handler_errors == {("the subscription server", "TypeError"): 5}
