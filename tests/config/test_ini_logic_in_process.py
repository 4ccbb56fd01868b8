"""Every block opener of uWSGI's configuration logic, in process (test_ini_logic.py compares the common ones
with real uWSGI through subprocesses): which lines a block keeps and what %(_) becomes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from uwsgirouter.config import load_config
from uwsgirouter.config.logic import MAX_COPIES
from uwsgirouter.errors import ConfigError


def kept(block: str, tmp_path: Path, *argv: str, environ: dict[str, str] | None = None) -> list[str | None]:
    """The procname-append values a block around ``procname-append = %(_)`` keeps (uWSGI leaves %(_) as
    written when the test matched no value)."""
    opener = block.partition(" = ")[0]
    closer = "endfor" if opener.startswith("for") else "endif"
    path = tmp_path / "c.ini"
    path.write_text(f"[uwsgi]\n{block}\nprocname-append = %(_)\n{closer} =\n")
    warnings: list[str] = []
    config = load_config([str(path), *argv], environ or {}, warn=warnings.append)
    assert warnings == [] or opener == "for-readline", warnings
    return [e.value for e in config.entries if e.key == "procname-append"]


def test_path_and_host_tests(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    (tmp_path / "d").mkdir()
    f, d, gone = str(tmp_path / "f"), str(tmp_path / "d"), str(tmp_path / "gone")
    host = socket.gethostname()
    cases = [
        (f"if-exists = {f}", [f]),
        (f"if-exists = {gone}", []),
        (f"if-not-exists = {gone}", [gone]),
        (f"if-not-exists = {d}", []),
        (f"if-file = {f}", [f]),
        (f"if-file = {d}", []),
        (f"if-not-file = {d}", [d]),
        (f"if-dir = {d}", [d]),
        (f"if-dir = {f}", []),
        (f"if-not-dir = {f}", [f]),
        (f"if-hostname = {host}", [host]),
        ("if-hostname = not-this-host", []),
        ("if-not-hostname = not-this-host", ["not-this-host"]),
        (f"if-hostname-match = ^{host[:2]}", [f"^{host[:2]}"]),
        ("if-hostname-match = ^no-such-prefix", []),
        ("if-not-hostname-match = ^no-such-prefix", ["^no-such-prefix"]),
        ("if-plugin = python3", ["python3"]),
        ("if-plugin = rack", []),
        ("if-not-plugin = rack", ["rack"]),
        ("if-reload = x", []),
        ("if-not-reload = x", ["%(_)"]),  # a test that matches no value leaves %(_) as written
    ]
    for block, expected in cases:
        assert kept(block, tmp_path) == expected, block
    with pytest.raises(ConfigError) as info:
        kept("if-hostname-match = (", tmp_path)
    assert str(info.value).startswith("if-hostname-match = (: not a regular expression (")


def test_environment_and_option_tests(tmp_path: Path) -> None:
    environ = {"FOO": "xyz", "EMPTY": ""}
    assert kept("if-env = FOO", tmp_path, environ=environ) == ["xyz"]
    assert kept("if-env = FOO=xyz", tmp_path, environ=environ) == ["xyz"]
    assert kept("if-env = FOO=abc", tmp_path, environ=environ) == []
    assert kept("if-env = NOPE", tmp_path, environ=environ) == []
    assert kept("if-not-env = NOPE", tmp_path, environ=environ) == ["%(_)"]
    assert kept("if-not-env = FOO=abc", tmp_path, environ=environ) == ["xyz"]  # as uWSGI 2.0.31
    assert kept("if-not-env = FOO", tmp_path, environ=environ) == []
    assert kept("if-opt = processes", tmp_path, "--processes", "3") == ["3"]
    assert kept("if-opt = processes=3", tmp_path, "--processes", "3") == ["3"]
    assert kept("if-opt = processes=4", tmp_path, "--processes", "3") == []
    assert kept("if-opt = processes", tmp_path) == []
    assert kept("if-not-opt = processes", tmp_path) == ["%(_)"]
    assert kept("if-not-opt = processes", tmp_path, "--processes", "3") == []


def test_loops(tmp_path: Path) -> None:
    assert kept("for = a  b", tmp_path) == ["a", "b"]
    assert kept("for-times = 3", tmp_path) == ["1", "2", "3"]
    assert kept("for-times = 2x", tmp_path) == ["1", "2"]  # atoi, as uWSGI
    assert kept("for-times = x", tmp_path) == []
    assert len(kept(f"for-times = {MAX_COPIES}", tmp_path)) == MAX_COPIES
    with pytest.raises(ConfigError) as info:
        kept(f"for-times = {MAX_COPIES + 1}", tmp_path)
    assert str(info.value).startswith(f"for-times = {MAX_COPIES + 1} (")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "a.d").mkdir()
    (tmp_path / "lines").write_text("one\r\ntwo\n\nthree")
    assert kept(f"for-glob = {tmp_path}/[ab].*", tmp_path) == [f"{tmp_path}/a.d/", f"{tmp_path}/b.txt"]
    assert kept(f"for-glob = {tmp_path}/none*", tmp_path) == [f"{tmp_path}/none*"]  # no match: the pattern
    assert kept(f"for-readline = {tmp_path}/lines", tmp_path) == ["one", "two", "", "three"]
    assert kept(f"for-readline = {tmp_path}/gone", tmp_path) == []
