"""The Emperor's stats server (--emperor-stats, issue 13): uWSGI's Emperor document, checked against real
uWSGI 2.0.31's Emperor governing the same vassal files, and uwsgitop showing the vassals.

Both Emperors run real uWSGI vassals, so that only the Emperor differs: one that runs, one on demand
(waiting for its first connection) and one that cannot start (blacklisted).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.test_emperor import vassal_ini
from tests.integration.test_stats_server import stats_json, uwsgitop
from tests.support import ROUTER, UWSGI, Proc, ProcessManager, free_port, short_unix_dir, uwsgi_request, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not UWSGI, reason="uWSGI 2.0.31 is not installed")]


def vassal_files(directory: Path) -> int:
    """run.ini runs, lazy.ini waits for a connection on the returned port, broken.ini dies at once."""
    directory.mkdir()
    port = free_port()
    (directory / "run.ini").write_text(vassal_ini("run", free_port()))
    (directory / "lazy.ini").write_text(vassal_ini("lazy", None))
    (directory / "lazy.ini.socket").write_text(f"127.0.0.1:{port}\n")
    (directory / "broken.ini").write_text("[uwsgi]\nstrict = true\nno-such-option = 1\n")
    return port


def emperor_args(directory: Path, stats: str) -> list[str]:
    return [
        f"--emperor={directory}",
        "--emperor-freq=1",
        f"--emperor-stats={stats}",
        "--emperor-on-demand-extension=.socket",
        "--emperor-throttle=100",
    ]


def settled(address: tuple[str, int] | str) -> dict[str, Any] | None:
    """The document once the running vassal accepts and the broken one is blacklisted."""
    try:
        doc = stats_json(address)
    except (OSError, ValueError):
        return None
    vassals = {v["id"]: v for v in doc["vassals"]}
    run = vassals.get("run.ini")
    if run and run["accepting"] and "lazy.ini" in vassals and doc["blacklist"]:
        return doc
    return None


def shape(value: Any) -> Any:
    """Keys in order and value types: what a reader of the document relies on."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def start_ours(procs: ProcessManager, directory: Path, stats: str) -> Proc:
    assert UWSGI is not None
    return procs.start([*ROUTER, *emperor_args(directory, stats), f"--binary-path={UWSGI}"], "emperor")


def test_the_emperor_document_has_uwsgis_keys_types_and_values(procs: ProcessManager, tmp_path: Path) -> None:
    assert UWSGI is not None
    theirs_stats, ours_stats = free_port(), free_port()
    theirs_dir, ours_dir = tmp_path / "theirs", tmp_path / "ours"
    vassal_files(theirs_dir)
    lazy_port = vassal_files(ours_dir)
    procs.start([UWSGI, *emperor_args(theirs_dir, f"127.0.0.1:{theirs_stats}")], "uwsgi-emperor")
    master = start_ours(procs, ours_dir, f"127.0.0.1:{ours_stats}")
    theirs = wait_until(lambda: settled(("127.0.0.1", theirs_stats)), 30, what="uWSGI's Emperor document")
    ours = wait_until(lambda: settled(("127.0.0.1", ours_stats)), 30, what="our Emperor document")
    assert shape(ours) == shape(theirs)
    for doc, directory in ((ours, ours_dir), (theirs, theirs_dir)):
        assert doc["emperor"] == [str(directory)]
        vassals = {v["id"]: v for v in doc["vassals"]}
        assert {"run.ini", "lazy.ini"} <= set(vassals)  # and broken.ini between a spawn and its death
        assert vassals["lazy.ini"]["pid"] == -1 and vassals["lazy.ini"]["on_demand"].startswith("127.0.0.1:")
        assert vassals["run.ini"]["pid"] > 0 and vassals["run.ini"]["on_demand"] == ""
        assert {v["monitor"] for v in vassals.values()} == {str(directory)}
        assert [b["id"] for b in doc["blacklist"]] == ["broken.ini"]
        born = int((directory / "run.ini").stat().st_mtime)
        assert vassals["run.ini"]["born"] == vassals["run.ini"]["last_mod"] == born  # the file's time, as uWSGI
    assert ours["pid"] == master.pid
    # uWSGI's Emperor works in the directory it watches; ours is the master, which stays where it was started
    assert theirs["cwd"] == str(theirs_dir) and ours["cwd"] == psutil.Process(master.pid).cwd() != str(ours_dir)
    assert uwsgi_request(("127.0.0.1", lazy_port), timeout=30).status == 200  # woken: now it has a pid
    woken = wait_until(
        lambda: next(v for v in stats_json(("127.0.0.1", ours_stats))["vassals"] if v["id"] == "lazy.ini")["pid"] > 0,
        10,
    )
    assert woken


def test_uwsgitop_shows_the_emperors_vassals(procs: ProcessManager, tmp_path: Path) -> None:
    directory = tmp_path / "vassals"
    vassal_files(directory)
    sockdir = short_unix_dir()
    stats = str(sockdir / "emperor-stats.sock")
    try:
        start_ours(procs, directory, stats)
        doc = wait_until(lambda: settled(stats), 30, what="the vassals in the document")
        pids = {v["id"]: v["pid"] for v in doc["vassals"]}
        with uwsgitop(stats) as top:
            screen = top.wait_for(lambda s: "VASSAL" in s and "lazy.ini" in s, "the vassal list")
            assert f"emperor: ['{directory}'] - tyrant: 0" in screen  # uwsgitop's header for an Emperor
            rows = {cells[0]: cells[1] for line in screen.splitlines() if len(cells := line.split()) == 2}
            assert rows.pop("VASSAL") == "PID"
            # run.ini's pid and lazy.ini's -1 are steady; broken.ini dies and comes back (its pid changes, and
            # between two lives it is on the blacklist), so it is only checked to be a pid when it is shown
            steady = {name: str(pid) for name, pid in pids.items() if name != "broken.ini"}
            assert {name: rows.get(name) for name in steady} == steady
            assert set(rows) - set(steady) <= {"broken.ini"} and rows.get("broken.ini", "1").lstrip("-").isdigit()
            assert top.quit() == 0
            assert b"Traceback" not in top.output
    finally:
        for path in sockdir.iterdir():
            path.unlink()
        sockdir.rmdir()


def test_emperor_stats_over_http_and_minified(procs: ProcessManager, tmp_path: Path) -> None:
    directory = tmp_path / "vassals"
    directory.mkdir()
    (directory / "lazy.ini").write_text(vassal_ini("lazy", None))
    (directory / "lazy.ini.socket").write_text(f"127.0.0.1:{free_port()}")
    port = free_port()
    procs.start([*ROUTER, *emperor_args(directory, f"127.0.0.1:{port}"), "--stats-http", "--stats-minified"], "e")

    def reply() -> bytes | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data if b"lazy.ini" in data else None
        except OSError:
            return None

    raw = wait_until(reply, 15, what="the document over HTTP")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") and b"Content-Type: application/json" in head
    assert b"\n" not in body and json.loads(body)["vassals"][0]["id"] == "lazy.ini"
