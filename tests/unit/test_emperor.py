"""The Emperor's pure parts: throttling, scanning, the vassal's command line and environment, the vassal link."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from uwsgirouter.config import load_config
from uwsgirouter.config.checks import check_config
from uwsgirouter.emperor import ondemand, protocol
from uwsgirouter.emperor.link import EmperorLink, build_emperor_link
from uwsgirouter.emperor.scanner import Scanner
from uwsgirouter.emperor.service import vassal_args
from uwsgirouter.emperor.throttle import MAXIMUM, THROTTLING, after_death, allowed_at
from uwsgirouter.emperor.vassal import vassal_environ
from uwsgirouter.errors import ConfigError
from uwsgirouter.services.base import Lifecycle
from uwsgirouter.sock import stdin_listener


def test_throttle_waits_grow_by_one_step_per_death_then_halve_at_the_maximum() -> None:
    record, notes = after_death(None, 100.0, 1000, 3000)
    assert (record.level, record.attempt, notes) == (0.001, 0, ())  # uWSGI's first level: microseconds
    assert allowed_at(record) == pytest.approx(100.001)
    levels = []
    all_notes = []
    for now in (101.0, 102.0, 103.0, 104.0, 105.0):
        record, notes = after_death(record, now, 1000, 3000)
        levels.append(round(record.level, 3))
        all_notes.append(notes)
    assert levels == [1.001, 2.001, 3.001, 1.5, 2.5]
    assert all_notes[1] == (THROTTLING,)  # the second death after the first
    assert all_notes[3] == (MAXIMUM,)
    assert record.last_attempt == 105.0 and record.first_attempt == 100.0
    assert allowed_at(None) == 0.0


def test_scanner_tells_a_directory_from_a_glob_as_uwsgi(tmp_path: Path) -> None:
    (tmp_path / "vassals" / "a").mkdir(parents=True)
    (tmp_path / "vassals" / "a" / "a.ini").write_text("[uwsgi]\n")
    (tmp_path / "vassals" / "a" / "b.xml").write_text("<uwsgi/>")
    (tmp_path / "vassals" / "a" / "notes.txt").write_text("")
    (tmp_path / "vassals" / "a" / "sub.ini").mkdir()
    directory = Scanner("vassals/a", str(tmp_path))
    assert directory.is_dir and directory.directory == str(tmp_path / "vassals" / "a")
    found, others = directory.scan()
    assert [(f.name, f.cwd) for f in found] == [("a.ini", str(tmp_path / "vassals" / "a"))]
    assert others == ["b.xml"]
    pattern = Scanner("./vassals/*/*.ini", str(tmp_path))
    assert not pattern.is_dir
    assert [(f.name, f.cwd) for f in pattern.scan()[0]] == [("./vassals/a/a.ini", str(tmp_path))]
    assert pattern.exists("./vassals/a/a.ini") and not pattern.exists("./vassals/a/gone.ini")
    assert Scanner("glob://vassals", str(tmp_path)).is_dir is False  # the scheme decides
    assert Scanner("missing/", str(tmp_path)).scan() == ([], [])
    with pytest.raises(ConfigError, match=r"--emperor pg://x: .* not uWSGI's pg:// monitors"):
        Scanner("pg://x", str(tmp_path))
    with pytest.raises(ConfigError, match=r"--emperor zmq://x: .* not uWSGI's zmq:// monitors"):
        check_config(load_config(["--emperor=zmq://x"], {}))  # --dry-run says it too


def test_vassal_command_line_is_uwsgis() -> None:
    config = load_config(
        [
            "--emperor=/v",
            "--vassals-include=inc.ini",
            "--vassals-inherit=tpl.ini",
            "--vassals-include-before=first.ini",
            "--vassal-set=a=b",
            "--binary-path=/usr/bin/uwsgi",
        ],
        {},
    )
    args = vassal_args(config)
    assert args.argv("x.ini") == [
        "/usr/bin/uwsgi",
        "--include",
        "first.ini",
        "--set",
        "a=b",
        "--ini",
        "x.ini",
        "--inherit",
        "tpl.ini",
        "--include",
        "inc.ini",
    ]
    default = vassal_args(load_config(["--emperor=/v"], {}))
    assert default.binary[1:] == ("-m", "uwsgirouter")


def test_vassal_environment_renames_uwsgi_vassal_variables() -> None:
    env = vassal_environ(
        {"UWSGI_VASSAL_PROCESSES": "4", "UWSGI_RELOADS": "3", "NOTIFY_SOCKET": "/x", "PATH": "/bin"}, 7
    )
    assert env == {"UWSGI_PROCESSES": "4", "PATH": "/bin", "UWSGI_EMPEROR_FD": "7"}


class Control:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def request_stop(self, graceful: bool) -> None:
        self.calls.append("graceful stop" if graceful else "stop")

    def request_reload(self, brutal: bool = False) -> None:
        self.calls.append("reload")


def test_vassal_link_speaks_the_emperor_protocol() -> None:
    emperor, vassal = socket.socketpair()
    control = Control()
    link = EmperorLink(vassal, control, heartbeat=5)  # type: ignore[arg-type]
    try:
        link.on_lifecycle(Lifecycle.READY)
        assert emperor.recv(16) == bytes((protocol.READY, protocol.ACCEPTING, protocol.LOYAL))
        link.tick(0.0)
        assert emperor.recv(16) == bytes((protocol.HEARTBEAT,)) and link.next_due() == 5.0
        link.on_lifecycle(Lifecycle.RELOADED)
        assert emperor.recv(16) == bytes((protocol.ACCEPTING,))
        emperor.sendall(bytes((protocol.RELOAD, protocol.GRACEFUL_STOP, protocol.STOP)))
        link.on_readable(vassal.fileno(), 0.0)
        assert control.calls == ["reload", "graceful stop", "stop"]
        emperor.close()
        link.on_readable(vassal.fileno(), 0.0)
        assert control.calls == ["reload", "graceful stop", "stop", "stop"]  # lost its Emperor: stops
        assert link.filenos() == ()
    finally:
        emperor.close()
        link.close()


def test_a_wrong_emperor_fd_is_a_configuration_error() -> None:
    assert build_emperor_link({}, Control(), 0) is None  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="UWSGI_EMPEROR_FD=x: not the descriptor of a socket"):
        build_emperor_link({"UWSGI_EMPEROR_FD": "x"}, Control(), 0)  # type: ignore[arg-type]


def test_on_demand_socket_name_is_the_first_line_of_the_extension_file_or_the_directory_socket(tmp_path: Path) -> None:
    vassal = tmp_path / "app.ini"
    assert ondemand.socket_name(str(vassal), ".socket", None) is None  # no such file: started at once
    (tmp_path / "app.ini.socket").write_bytes(b"127.0.0.1:3031\r\nignored")
    assert ondemand.socket_name(str(vassal), ".socket", None) == "127.0.0.1:3031"
    (tmp_path / "app.ini.socket").write_bytes(b"\n127.0.0.1:3031")
    assert ondemand.socket_name(str(vassal), ".socket", None) is None  # empty first line: not on demand
    assert ondemand.socket_name(str(vassal), ".socket", "/run/x") is None  # the extension wins
    assert ondemand.socket_name("vassals/app.ini", None, "/run/x") == "/run/x/app.socket"
    assert ondemand.socket_name("vassals/app.v2.ini", None, "/run/x") == "/run/x/app.v2.socket"
    assert ondemand.socket_name("vassals/app", None, "/run/x") is None  # uWSGI needs a dot


def test_on_demand_bind_refuses_what_cannot_be_bound(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="an address to bind"):
        ondemand.bind("fd://3", str(tmp_path), 10)
    listener = ondemand.bind("app.sock", str(tmp_path), 10)  # relative to the vassal's directory
    try:
        assert listener.name == "app.sock" and (tmp_path / "app.sock").is_socket()
        assert listener.sock.getblocking()  # handed over as uWSGI binds it
    finally:
        listener.close()
    assert not (tmp_path / "app.sock").exists()


@pytest.mark.parametrize("kind", ["listening", "connected"])
def test_a_listening_socket_on_fd_0_is_taken_and_a_connected_one_left_alone(kind: str) -> None:
    """An on-demand vassal's socket arrives as stdin; inetd's connected stdin is not a listener (uWSGI takes
    any socket there)."""
    saved = os.dup(0)
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    a, b = socket.socketpair()
    try:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        os.dup2((listening if kind == "listening" else a).fileno(), 0)
        found = stdin_listener()
        if kind == "listening":
            assert found is not None and found.name == f"127.0.0.1:{listening.getsockname()[1]}"
            assert found.fileno() == 0 and not found.sock.getblocking()
            found.sock.detach()
        else:
            assert found is None
            os.fstat(0)  # still open
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        for sock in (listening, a, b):
            sock.close()
