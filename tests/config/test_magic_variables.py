"""The %X magic variables of an INI file, in process, and the ones a path determines compared with what real
uWSGI 2.0.31 expands for the same file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uwsgirouter import __version__
from uwsgirouter.config.ini import IniSource, apply_magic, magic_table, split_ini_spec

UWSGI = Path(sys.executable).with_name("uwsgi")
PATH_LETTERS = "opsdcenxij0123ODSPCENXIJ"


def test_a_files_magic_table(tmp_path: Path) -> None:
    ini = tmp_path / "a b" / "site.prod.ini"
    ini.parent.mkdir()
    ini.write_text("[uwsgi]\n")
    before = time.time()
    table = magic_table(IniSource(str(ini), "uwsgi", "named"))
    after = time.time()
    directory = f"{ini.parent}/"
    assert (table["o"], table["p"], table["s"], table["d"]) == (str(ini), str(ini), "site.prod.ini", directory)
    assert (table["c"], table["e"], table["n"], table["x"]) == ("a b", "ini", "site.prod", "named")
    assert table["i"] == str(os.lstat(ini).st_ino) and len(table["j"]) == 8 and table["j"] == table["j"].upper()
    assert (table["v"], table["h"], table["k"]) == (os.getcwd(), socket.gethostname(), str(os.cpu_count() or 1))
    assert before - 1 <= int(table["t"]) <= after and before * 1e6 - 1e6 <= int(table["T"]) <= after * 1e6
    assert (table["V"], table["u"], table["g"], table["b"]) == (
        __version__,
        str(os.getuid()),
        str(os.getgid()),
        "uwsgirouter",
    )
    assert (table["["], table["%"], table["("]) == ("\033", "%", "%(")
    parts = [p for p in directory.split("/") if p]
    assert [table[str(i)] for i in range(len(parts))] == parts
    assert all(table[letter] == table[letter.lower()] for letter in "ODSPCENXIJ")  # the first file is this one
    other = magic_table(IniSource(str(tmp_path / "other.ini"), "uwsgi"), first=table)
    assert other["i"] == "" and other["s"] == "other.ini" and other["S"] == "site.prod.ini" and other["x"] == ""
    assert magic_table(IniSource("/x.ini", "uwsgi"))["c"] == ""


def test_deep_directories_give_ten_numbered_parts(tmp_path: Path) -> None:
    deep = "/" + "/".join(f"p{i}" for i in range(12)) + "/x.ini"
    table = magic_table(IniSource(deep, "uwsgi"))
    assert [table[str(i)] for i in range(10)] == [f"p{i}" for i in range(10)] and "10" not in table
    assert table["c"] == "p9"


def test_apply_magic_edges() -> None:
    table = {"a": "A", "%": "%"}
    assert apply_magic("%a%a", table) == "AA"
    assert apply_magic("x%", table) == "x%"  # a % at the end stays
    assert apply_magic("%", table) == "%"
    assert apply_magic("%z.", table) == "."  # an unknown letter goes with its %
    assert apply_magic("%%a", table) == "%a"


def test_ini_specs() -> None:
    assert split_ini_spec("a.ini", None) == IniSource("a.ini", "uwsgi", "")
    assert split_ini_spec("c:/x.ini:prod", None) == IniSource("c:/x.ini", "prod", "prod")
    assert split_ini_spec(":prod", "a.ini") == IniSource("a.ini", "prod", "prod")


@pytest.mark.skipif(not UWSGI.is_file(), reason=f"no uWSGI binary at {UWSGI}")
def test_path_variables_are_uwsgis(tmp_path: Path) -> None:
    ini = tmp_path / "dir one" / "site.ini"
    ini.parent.mkdir()
    ini.write_text("[prod]\nprocname-append = " + "|".join(f"%{letter}" for letter in PATH_LETTERS) + "\n")

    def expanded(tool: list[str]) -> str:
        argv = [*tool, "--ini", f"{ini}:prod", "--get", "procname-append"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=tmp_path, check=False).stdout

    ours = expanded([sys.executable, "-m", "uwsgirouter"])
    assert ours and ours == expanded([str(UWSGI)])
