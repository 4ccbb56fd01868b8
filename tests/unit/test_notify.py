"""The sd_notify datagrams and NOTIFY_SOCKET addresses, without a master."""

from __future__ import annotations

from uwsgirouter.services import Lifecycle
from uwsgirouter.services.notify import message, notify_address


def test_ready_names_the_main_pid() -> None:
    assert message(Lifecycle.READY, "ready: 1 router", 4242) == b"READY=1\nMAINPID=4242\nSTATUS=ready: 1 router\n"
    assert message(Lifecycle.RELOADED, "ready again", 7).startswith(b"READY=1\nMAINPID=7\n")


def test_reloading_carries_the_monotonic_clock() -> None:
    sent = message(Lifecycle.RELOADING, "reloading", 1, now_usec=123456789)
    assert sent == b"RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=reloading\n"
    fields = dict(line.split("=", 1) for line in message(Lifecycle.RELOADING, "x", 1).decode().splitlines())
    assert int(fields["MONOTONIC_USEC"]) > 0


def test_stopping() -> None:
    assert message(Lifecycle.STOPPING, "stopping", 1) == b"STOPPING=1\nSTATUS=stopping\n"


def test_a_status_stays_on_one_line() -> None:
    """A newline inside STATUS would start a new assignment that systemd would read as such."""
    assert message(Lifecycle.STOPPING, "stopping\nREADY=1", 1) == b"STOPPING=1\nSTATUS=stopping READY=1\n"


def test_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == "\0abstract/name"
    assert notify_address("@") is None
    assert notify_address("relative/path") is None
    assert notify_address("vsock:2:1234") is None
