"""Every block opener of uWSGI's configuration logic, in process (test_ini_logic.py compares the common ones
with real uWSGI through subprocesses): which lines a block keeps and what %(_) becomes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from uwsgirouter.config import Entry, load_config, load_entries
from uwsgirouter.config.logic import MAX_COPIES, ConfigLogic, _path_test
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


def test_a_path_test_built_afresh_keeps_its_argument_when_the_check_holds_or_fails_as_negated() -> None:
    # The block-test table is built when logic.py is imported; building a test again shows a change to the
    # code that builds them (tools/mutation runs each mutant after the imports).
    def is_yes(arg: str) -> bool:
        return arg == "yes"

    assert _path_test(is_yes, False)(None, "yes") == ["yes"]  # type: ignore[arg-type]
    assert _path_test(is_yes, False)(None, "no") == []  # type: ignore[arg-type]
    assert _path_test(is_yes, True)(None, "no") == ["no"]  # type: ignore[arg-type]
    assert _path_test(is_yes, True)(None, "yes") == []  # type: ignore[arg-type]


def test_only_the_logic_options_open_or_close_blocks() -> None:
    assert ConfigLogic.canonical("ifenv") == "if-env" and ConfigLogic.canonical("if-directory") == "if-dir"
    assert [ConfigLogic.canonical(key) for key in ("end", "end-if", "endfor", "end-for")] == ["endif"] * 4
    # uWSGI options whose names start like a block opener but are not one
    assert [ConfigLogic.canonical(key) for key in ("force-cwd", "forkbomb-delay", "processes")] == [None] * 3
    entries = load_entries(["--force-cwd", "/x", "--processes", "2"], {}, warn=lambda _: None)
    assert [(e.key, e.value) for e in entries] == [("force-cwd", "/x"), ("processes", "2")]


def test_nested_openers_are_named_with_their_values_and_origins() -> None:
    with pytest.raises(ConfigError) as info:
        load_entries(["--if-not-reload", "--if-reload", "--processes", "2"], {})
    assert str(info.value) == (
        "if-reload =  (command line) inside the if-not-reload =  block (command line): "
        "recursive logic in options is not supported (as in uWSGI)"
    )
    with pytest.raises(ConfigError) as info:
        load_entries(["--if-env", "A", "--if-env", "B=1"], {"A": "x"})
    assert str(info.value) == (
        "if-env = B=1 (command line) inside the if-env = A block (command line): "
        "recursive logic in options is not supported (as in uWSGI)"
    )
    warnings: list[str] = []
    entries = load_entries(["--if-reload", "--if-not-reload", "--processes", "2", "--endif"], {}, warnings.append)
    assert entries == [] and warnings == [
        "if-not-reload =  (command line) inside the if-reload =  block (command line) is dropped, as uWSGI "
        "does: blocks do not nest, and the first endif closes the if-reload block"
    ]
    warnings.clear()
    load_entries(["--if-env", "A", "--if-env", "B", "--endif"], {}, warnings.append)
    assert warnings == [
        "if-env = B (command line) inside the if-env = A block (command line) is dropped, as uWSGI does: "
        "blocks do not nest, and the first endif closes the if-env block"
    ]


def test_a_file_read_inside_a_block_that_holds_is_taken_whole(tmp_path: Path) -> None:
    inner = tmp_path / "inner.ini"
    inner.write_text("[uwsgi]\nthreads = 2\nendif =\nlisten = 7\n")
    argv = ["--if-env", "A", "--ini", str(inner), "--processes", "%(_)", "--endif", "--master"]
    entries = load_entries(argv, {"A": "3"})
    # the endif inside the file neither closes the block nor becomes an option; the block goes on after it
    assert [(e.key, e.value) for e in entries] == [
        ("ini", str(inner)),
        ("threads", "2"),
        ("listen", "7"),
        ("processes", "3"),
        ("master", None),
    ]
    assert load_entries(argv, {}) == [Entry("master", None, "command line")]  # the block fails: no file read
    inner.write_text("[uwsgi]\nthreads = 2\nif-exists = /\nlisten = 7\n")
    with pytest.raises(ConfigError) as info:
        load_entries(argv, {"A": "3"})
    assert str(info.value) == (
        f"if-exists = / ({inner} [uwsgi]) inside the if-env = A block (command line): "
        "recursive logic in options is not supported (as in uWSGI)"
    )


def test_for_readline_lines_and_files_it_cannot_read(tmp_path: Path) -> None:
    lines = tmp_path / "lines"
    lines.write_bytes(b"caf\xc3\xa9 \nraw \xff\nendX\r\n")
    assert kept(f"for-readline = {lines}", tmp_path) == ["café ", "raw \udcff", "endX"]
    (tmp_path / "dir").mkdir()
    warnings: list[str] = []
    for path, reason in (
        (tmp_path / "gone", "No such file or directory"),
        (tmp_path / "dir", "Is a directory"),
        (f"{tmp_path}/nul\0", "embedded null byte"),
    ):
        warnings.clear()
        argv = ["--for-readline", str(path), "--procname-append", "%(_)", "--endfor"]
        assert load_entries(argv, {}, warnings.append) == []
        assert warnings == [f"for-readline = {path} (command line): {reason}: no lines"]


def test_for_glob_marks_directories_once(tmp_path: Path) -> None:
    (tmp_path / "a.d").mkdir()
    assert kept(f"for-glob = {tmp_path}/a.d/", tmp_path) == [f"{tmp_path}/a.d/"]
    assert kept(f"for-glob = {tmp_path}/a.*", tmp_path) == [f"{tmp_path}/a.d/"]
