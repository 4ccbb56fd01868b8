"""The log file followed by name, its rotation, and which request lines are written (uwsgirouter.logs).

A ``LogFile`` here writes onto a spare descriptor instead of 1 and 2, so pytest's own output is untouched.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uwsgirouter.config import load_config
from uwsgirouter.config.log_options import CTIME_FORMAT, LOG_DATE
from uwsgirouter.logs import LogFile, RequestLog


@pytest.fixture
def spare_fd() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def write(fd: int, log: LogFile, line: str) -> None:
    log.follow()
    os.write(fd, line.encode() + b"\n")


def test_a_renamed_log_file_is_replaced_at_the_next_line(tmp_path: Path, spare_fd: int) -> None:
    path = tmp_path / "router.log"
    log = LogFile(str(path), (spare_fd,))
    log.open()
    write(spare_fd, log, "first")
    path.rename(tmp_path / "router.log.1")
    write(spare_fd, log, "second")
    assert (tmp_path / "router.log.1").read_text() == "first\n"
    assert path.read_text() == "second\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)  # as uWSGI creates it


def test_a_relative_name_is_followed_from_where_it_was_opened(
    tmp_path: Path, spare_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = LogFile("router.log", (spare_fd,))
    log.open()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # as --chdir does after the log is open
    write(spare_fd, log, "line")
    assert (tmp_path / "router.log").read_text() == "line\n"
    assert not (tmp_path / "elsewhere" / "router.log").exists()


def test_a_removed_log_file_is_created_again(tmp_path: Path, spare_fd: int) -> None:
    path = tmp_path / "router.log"
    log = LogFile(str(path), (spare_fd,))
    log.open()
    path.unlink()
    write(spare_fd, log, "after")
    assert path.read_text() == "after\n"


def test_a_log_file_that_cannot_be_opened_again_is_kept_and_said_once(tmp_path: Path, spare_fd: int) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = LogFile(str(logs / "router.log"), (spare_fd,))
    log.open()
    kept = tmp_path / "kept.log"
    (logs / "router.log").rename(kept)
    logs.rmdir()  # the name now leads nowhere and cannot be created
    for n in range(3):
        write(spare_fd, log, f"line {n}")
    text = kept.read_text()
    assert text.count(f"cannot open the log file {logs / 'router.log'} again") == 1, text
    assert text.endswith("line 0\nline 1\nline 2\n")
    logs.mkdir()  # once the name can be opened again, it is
    write(spare_fd, log, "back")
    assert (logs / "router.log").read_text() == "back\n"


def test_rotation_renames_to_the_backup_name_or_to_a_timestamp(tmp_path: Path, spare_fd: int) -> None:
    path = tmp_path / "router.log"
    log = LogFile(str(path), (spare_fd,))
    log.open()
    write(spare_fd, log, "one")
    assert log.rotate(str(tmp_path / "router.old")) == str(tmp_path / "router.old")
    assert (tmp_path / "router.old").read_text() == "one\n"
    assert path.exists() and path.stat().st_size == 0
    write(spare_fd, log, "two")
    before = int(time.time())
    rotated = log.rotate(None)
    after = int(time.time())
    match = re.fullmatch(re.escape(str(path)) + r"\.(\d+)", rotated)
    assert match and before <= int(match.group(1)) <= after, rotated
    assert Path(rotated).read_text() == "two\n"
    write(spare_fd, log, "three")
    assert path.read_text() == "three\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {200, 404, 500}),
        (["--disable-logging"], set()),
        (["--disable-logging", "--log-4xx"], {404}),
        (["--disable-logging", "--log-5xx"], {500}),
        (["-L", "--log-4xx", "--log-5xx"], {404, 500}),
    ],
)
def test_request_lines_by_status(argv: list[str], expected: set[int]) -> None:
    wanted = RequestLog(load_config(argv, {}))
    assert {status for status in (200, 404, 500) if wanted.wants(status, 0.0)} == expected


def test_log_4xx_and_5xx_cover_their_whole_range() -> None:
    wanted = RequestLog(load_config(["--disable-logging", "--log-4xx", "--log-5xx"], {}))
    assert [s for s in (399, 400, 499, 500, 599, 600) if wanted.wants(s, 0.0)] == [400, 499, 500, 599]


def test_slow_requests_are_logged_with_log_slow() -> None:
    wanted = RequestLog(load_config(["--disable-logging", "--log-slow", "200"], {}))
    assert not wanted.wants(200, 0.199)
    assert wanted.wants(200, 0.2)
    assert not RequestLog(load_config(["--disable-logging"], {})).wants(200, 60.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", CTIME_FORMAT),
        ("1", CTIME_FORMAT),
        ("Yes", CTIME_FORMAT),
        ("false", None),
        ("off", None),
        ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S"),
    ],
)
def test_logdate_values(raw: str, expected: str | None) -> None:
    assert LOG_DATE(raw) == expected


def test_logdate_alone_on_the_command_line_is_uwsgi_s_date() -> None:
    assert load_config(["--logdate"], {}).logdate == CTIME_FORMAT
    assert load_config(["--log-date=%H"], {}).logdate == "%H"
    assert load_config([], {}).logdate is None
    assert time.strftime(CTIME_FORMAT, time.localtime(0)) == time.ctime(0)
