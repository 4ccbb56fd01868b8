"""uWSGI's configuration logic in INI files and on the command line: ``if-*``/``for*`` blocks, ``%(_)``, no
nesting (as uWSGI 2.0.31, checked against the real binary with ``--get``), and ``include = FILE.ini``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from uwsgirouter.config import load_config
from uwsgirouter.errors import ConfigError

UWSGI = Path(sys.executable).with_name("uwsgi")
BLOCKS = """[uwsgi]
if-env = FOO
socket = %(_)
endif =
if-not-env = BAR
master-fifo = notbar
endif =
if-exists = {tmp}
chdir = %(_)
endif =
if-env = FOO=xyz
processes = 7
endif =
if-not-opt = listen
listen = 50
threads = 3
endif =
for = a b
fastrouter-to = /run/%(_).sock
endfor =
for-times = 2
procname-append = -%(_)
endfor =
if-not-dir = {tmp}/nope
pidfile = %(_)
end-if =
"""
GETS = [
    "socket",
    "master-fifo",
    "chdir",
    "processes",
    "listen",
    "threads",
    "fastrouter-to",
    "procname-append",
    "pidfile",
]


def gets(tool: list[str], path: Path, env: dict[str, str]) -> str:
    argv = [*tool, "--ini", str(path)]
    for name in GETS:
        argv += ["--get", name]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)
    return result.stdout


@pytest.mark.skipif(not UWSGI.is_file(), reason=f"no uWSGI binary at {UWSGI}")
@pytest.mark.parametrize("env", [{"FOO": "hello"}, {"FOO": "xyz", "BAR": "1"}, {}])
def test_blocks_give_what_real_uwsgi_gives(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "blocks.ini"
    path.write_text(BLOCKS.format(tmp=tmp_path))
    ours = gets([sys.executable, "-m", "uwsgirouter"], path, env)
    assert ours == gets([str(UWSGI)], path, env)
    assert ours  # the comparison saw values


def config_of(
    text: str, tmp_path: Path, *argv: str, environ: dict[str, str] | None = None
) -> tuple[dict[str, list[str | None]], list[str]]:
    path = tmp_path / "c.ini"
    path.write_text(text)
    warnings: list[str] = []
    config = load_config([str(path), *argv], environ or {}, warn=warnings.append)
    values: dict[str, list[str | None]] = {}
    for entry in config.entries:
        values.setdefault(entry.key, []).append(entry.value)
    return values, warnings


def test_a_matched_block_adds_its_lines_with_the_matched_value(tmp_path: Path) -> None:
    values, warnings = config_of(
        "[uwsgi]\nif-env = PORT\nfastrouter = 127.0.0.1:%(_)\nendif =\nif-env = NOPE\nprocesses = 9\nendif =\n",
        tmp_path,
        environ={"PORT": "3017"},
    )
    assert values["fastrouter"] == ["127.0.0.1:3017"]
    assert "processes" not in values
    assert warnings == []


def test_for_repeats_each_line_per_item(tmp_path: Path) -> None:
    values, _ = config_of("[uwsgi]\nfor = x y z\nfastrouter-to = /run/%(_).sock\nendfor =\n", tmp_path)
    assert values["fastrouter-to"] == ["/run/x.sock", "/run/y.sock", "/run/z.sock"]


def test_blocks_work_on_the_command_line_and_span_files(tmp_path: Path) -> None:
    values, warnings = config_of("[uwsgi]\nif-env = HOME\n", tmp_path, "--processes", "4", environ={"HOME": "/h"})
    assert values["processes"] == ["4"]
    assert warnings == [
        f"if-env = HOME ({tmp_path / 'c.ini'} [uwsgi]) has no endif: it applies to every option after it"
    ]
    config = load_config(["--if-env", "HOME", "--chdir", "%(_)", "--endif"], {"HOME": "/h"}, warn=lambda _: None)
    assert config.chdir == "/h"


def test_nested_blocks_fail_when_the_outer_one_holds_as_in_uwsgi(tmp_path: Path) -> None:
    text = "[uwsgi]\nif-env = A\nif-env = B\nprocesses = 2\nendif =\nthreads = 3\nendif =\n"
    with pytest.raises(ConfigError, match="recursive logic in options is not supported"):
        config_of(text, tmp_path, environ={"A": "1", "B": "1"})
    values, warnings = config_of(text, tmp_path, environ={"B": "1"})
    # the inner opener is dropped and the first endif closes the outer block: threads applies, as in uWSGI
    assert "processes" not in values and values["threads"] == ["3"]
    assert len(warnings) == 1 and "blocks do not nest" in warnings[0]


def test_include_reads_an_ini_file_in_place(tmp_path: Path) -> None:
    (tmp_path / "site.ini").write_text("[uwsgi]\npublic_ip = 127.0.0.2\nprocesses = 5\n")
    values, warnings = config_of(
        f"[uwsgi]\ninclude = {tmp_path}/site.ini\nfastrouter = %(public_ip):3017\nprocesses = 2\n", tmp_path
    )
    assert values["fastrouter"] == ["127.0.0.2:3017"] and values["processes"] == ["5", "2"]
    assert warnings == []
    with pytest.raises(ConfigError, match="includes INI files only"):
        config_of("[uwsgi]\ninclude = site.xml\n", tmp_path)
