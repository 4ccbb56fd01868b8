"""The master fifo's command table and reading, and the touch files, against a recording stand-in for the
master (real fifos and files in tmp_path, no process)."""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest

from uwsgirouter.errors import ConfigError
from uwsgirouter.services.fifo import MasterFifo
from uwsgirouter.services.touch import TouchFile


class Recorder:
    """Every ``MasterControl`` call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def request_reload(self, brutal: bool = False) -> None:
        self.calls.append(("reload", brutal))

    def request_reload_workers(self, brutal: bool) -> None:
        self.calls.append(("reload_workers", brutal))

    def request_stop(self, graceful: bool) -> None:
        self.calls.append(("stop", graceful))

    def request_log_reopen(self) -> None:
        self.calls.append(("log_reopen", None))

    def request_log_rotate(self) -> None:
        self.calls.append(("log_rotate", None))

    def request_block_subscriptions(self, blocked: bool | None) -> None:
        self.calls.append(("block_subscriptions", blocked))

    def request_update_pidfiles(self) -> None:
        self.calls.append(("update_pidfiles", None))

    def request_stats_log(self) -> None:
        self.calls.append(("stats_log", None))

    def request_emperor_rescan(self) -> None:
        self.calls.append(("emperor_rescan", None))

    def request_cheap(self, cheap: bool) -> None:
        self.calls.append(("cheap", cheap))

    def request_pause(self, paused: bool | None) -> None:
        self.calls.append(("pause", paused))


def write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[MasterFifo, Recorder]]:
    recorder = Recorder()
    service = MasterFifo([str(tmp_path / "a.fifo"), str(tmp_path / "b.fifo")], recorder, vacuum=True)
    yield service, recorder
    service.close()


@pytest.mark.parametrize(
    ("command", "call"),
    [
        ("q", ("stop", True)),
        ("Q", ("stop", False)),
        ("r", ("reload", False)),
        ("R", ("reload", True)),
        ("w", ("reload_workers", False)),
        ("W", ("reload_workers", True)),
        ("c", ("reload_workers", False)),
        ("l", ("log_reopen", None)),
        ("L", ("log_rotate", None)),
        ("s", ("stats_log", None)),
        ("S", ("block_subscriptions", None)),
        ("P", ("update_pidfiles", None)),
        ("C", ("cheap", True)),
        ("p", ("pause", None)),
    ],
)
def test_each_command_asks_the_master_for_its_action(
    fifo: tuple[MasterFifo, Recorder], command: str, call: tuple[str, object]
) -> None:
    service, recorder = fifo
    write(Path(service.active), command + "\n")
    service.on_readable(service.fd, 0.0)
    assert recorder.calls == [call]


def test_a_burst_runs_in_order_and_whitespace_is_skipped(fifo: tuple[MasterFifo, Recorder]) -> None:
    service, recorder = fifo
    write(Path(service.active), "l \t\r\nr\n")
    service.on_readable(service.fd, 0.0)
    assert recorder.calls == [("log_reopen", None), ("reload", False)]


def test_e_asks_the_emperor_to_rescan(fifo: tuple[MasterFifo, Recorder]) -> None:
    service, recorder = fifo
    write(Path(service.active), "E")
    service.on_readable(service.fd, 0.0)
    assert recorder.calls == [("emperor_rescan", None)]


def test_unsupported_and_unknown_commands_are_logged_not_acted_on(
    fifo: tuple[MasterFifo, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    service, recorder = fifo
    with caplog.at_level(logging.INFO, logger="uwsgirouter.master"):
        write(Path(service.active), "fBzzzz")
        service.on_readable(service.fd, 0.0)
    assert recorder.calls == []
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is not supported" in m for m in messages) == 2
    assert "uwsgirouter's Emperor has no Broodlord mode" in "\n".join(messages)
    assert sum("unknown command 'z'" in m for m in messages) == 1  # rate-limited: one line a second
    due = service.next_due()
    assert due is not None
    with caplog.at_level(logging.INFO, logger="uwsgirouter.master"):
        service.tick(due)
    assert "3 more lines like these in the last second were left out" in caplog.records[-1].getMessage()
    assert service.next_due() is None


def test_a_digit_switches_fifo_when_the_writer_closes(fifo: tuple[MasterFifo, Recorder], tmp_path: Path) -> None:
    service, recorder = fifo
    first, second = tmp_path / "a.fifo", tmp_path / "b.fifo"
    assert not second.exists()
    write(first, "1r")
    service.on_readable(service.fd, 0.0)
    assert recorder.calls == [("reload", False)]  # the rest of this write still counts, as in uWSGI
    assert service.active == str(first)
    service.on_readable(service.fd, 0.0)  # end of file: the writer closed
    assert service.active == str(second) and second.exists()
    write(second, "q")
    service.on_readable(service.fd, 0.0)
    assert recorder.calls[-1] == ("stop", True)


def test_end_of_file_opens_the_same_fifo_again(fifo: tuple[MasterFifo, Recorder]) -> None:
    service, recorder = fifo
    for _ in range(3):
        write(Path(service.active), "r")
        service.on_readable(service.fd, 0.0)
        service.on_readable(service.fd, 0.0)  # end of file
        # opened again: not readable until the next writer (a descriptor left at end of file would be, always)
        assert select.select([service.fd], [], [], 0)[0] == []
    assert recorder.calls == [("reload", False)] * 3


def test_vacuum_removes_only_the_fifos_it_created(tmp_path: Path) -> None:
    existing = tmp_path / "existing.fifo"
    os.mkfifo(existing)
    kept = MasterFifo([str(existing)], Recorder(), vacuum=True)
    kept.close()
    assert existing.exists()  # reused, not ours to remove
    made = MasterFifo([str(tmp_path / "new.fifo")], Recorder(), vacuum=True)
    made.close()
    assert not (tmp_path / "new.fifo").exists()


def test_a_path_that_is_not_a_fifo_is_refused_not_deleted(tmp_path: Path) -> None:
    regular = tmp_path / "data.txt"
    regular.write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a fifo"):
        MasterFifo([str(regular)], Recorder())
    assert regular.read_text() == "keep me"


def test_a_touch_is_a_later_mtime_an_appearance_or_a_disappearance(tmp_path: Path) -> None:
    path = tmp_path / "touch.me"
    watched = TouchFile(str(path))
    assert not watched.touched()  # missing at start, still missing
    path.touch()
    assert watched.touched()  # appeared
    assert not watched.touched()
    mtime = os.stat(path).st_mtime_ns
    os.utime(path, ns=(mtime + 1000, mtime + 1000))
    assert watched.touched()
    os.utime(path, ns=(mtime, mtime))  # moved back in time: not a touch
    assert not watched.touched()
    path.unlink()
    assert watched.touched()  # disappeared
