"""uWSGI's INI dialect and load order, each rule against a small file in tmp_path.

Most tests call ``load_config`` with an explicit environment; the ones about exit codes and messages go
through ``uwsgirouter.cli.main``. Expected values were checked against uWSGI 2.0.31 (``--get``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from uwsgirouter.address import TcpAddress, UnixAddress
from uwsgirouter.cli import main
from uwsgirouter.config import Config, load_config, load_entries
from uwsgirouter.config.loader import MAX_INI_DEPTH, MAX_INI_LOADS, RESERVED_ENV
from uwsgirouter.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(*argv: str | Path, environ: dict[str, str] | None = None) -> Config:
    return load_config([str(a) for a in argv], environ or {}, warn=_no_warning)


def _no_warning(message: str) -> None:
    raise AssertionError(f"unexpected warning: {message}")


def pairs(*argv: str | Path, environ: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    return [(e.key, e.value) for e in load_entries([str(a) for a in argv], environ or {}, warn=_no_warning)]


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    return write(tmp_path / "site.ini", "[uwsgi]\nprocesses = 4\nsocket = /tmp/a.sock\n")


# --- how a file is named ------------------------------------------------------------------------------------


def test_positional_file_is_read(ini: Path) -> None:
    config = load(ini)
    assert config.processes == 4
    assert config.socket == (UnixAddress("/tmp/a.sock"),)


def test_ini_option_reads_the_uwsgi_section(ini: Path) -> None:
    assert load("--ini", ini).processes == 4
    assert load(f"--ini={ini}").processes == 4


def test_ini_option_is_expanded_in_place(ini: Path) -> None:
    assert pairs("--processes", "3", "--ini", ini, "--socket", ":3031") == [
        ("processes", "3"),
        ("ini", str(ini)),
        ("processes", "4"),
        ("socket", "/tmp/a.sock"),
        ("socket", ":3031"),
    ]
    assert load("--processes", "3", "--ini", ini).processes == 4
    assert load("--ini", ini, "--processes", "3").processes == 3
    assert load("--socket", ":3031", "--ini", ini).socket == (TcpAddress("", 3031), UnixAddress("/tmp/a.sock"))


def test_positional_files_come_after_every_option(ini: Path) -> None:
    # uWSGI reads positional files last, whatever their place on the command line.
    assert pairs(ini, "--processes", "3") == [("processes", "3"), ("processes", "4"), ("socket", "/tmp/a.sock")]
    assert load(ini, "--processes", "3").processes == 4


def test_positional_files_are_read_in_order(tmp_path: Path) -> None:
    first = write(tmp_path / "first.ini", "[uwsgi]\nprocesses = 2\n")
    second = write(tmp_path / "second.ini", "[uwsgi]\nprocesses = 5\n")
    assert load(first, second).processes == 5
    assert load(second, first).processes == 2


def test_ini_section_selects_another_section(tmp_path: Path) -> None:
    path = write(tmp_path / "multi.ini", "[uwsgi]\nprocesses = 1\n[staging]\nprocesses = 7\n[prod]\nprocesses = 9\n")
    assert load("--ini", f"{path}:staging").processes == 7
    assert load("--ini", f"{path}:prod").processes == 9
    assert load("--ini", f"{path}:uwsgi").processes == 1


def test_ini_colon_section_reuses_the_previous_file(tmp_path: Path) -> None:
    path = write(tmp_path / "multi.ini", "[uwsgi]\nprocesses = 1\n[extra]\nsocket = :3031\nprocesses = 8\n")
    config = load("--ini", path, "--ini", ":extra")
    assert config.processes == 8
    assert config.socket == (TcpAddress("", 3031),)
    assert pairs("--ini", path, "--ini", ":extra")[2:] == [("ini", ":extra"), ("socket", ":3031"), ("processes", "8")]


def test_colon_section_reuses_the_last_file_read(tmp_path: Path) -> None:
    one = write(tmp_path / "one.ini", "[uwsgi]\nprocesses = 1\n[x]\nprocesses = 11\n")
    two = write(tmp_path / "two.ini", "[uwsgi]\nprocesses = 2\n[x]\nprocesses = 22\n")
    assert load("--ini", one, "--ini", two, "--ini", ":x").processes == 22


def test_colon_section_without_a_previous_file_is_an_error() -> None:
    with pytest.raises(ConfigError, match="':section' needs an INI file named before it"):
        load("--ini", ":extra")


def test_positional_file_with_section_is_refused_as_in_uwsgi(ini: Path) -> None:
    with pytest.raises(ConfigError, match=f"unable to load configuration from {ini}:uwsgi"):
        load(f"{ini}:uwsgi")


@pytest.mark.parametrize("name", ["site.yaml", "site.yml", "site.json", "site.xml", "site.js"])
def test_positional_files_of_other_formats_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="uwsgirouter reads INI files only"):
        load(tmp_path / name)


def test_positional_argument_that_is_not_an_ini_file_is_refused() -> None:
    with pytest.raises(ConfigError, match="unable to load configuration from mycache: positional arguments must be"):
        load("--fastrouter-use-cache", "mycache")


def test_ini_option_accepts_any_file_name(tmp_path: Path) -> None:
    path = write(tmp_path / "router.conf", "[uwsgi]\nprocesses = 3\n")
    assert load("--ini", path).processes == 3


# --- lines --------------------------------------------------------------------------------------------------


def test_repeated_keys_are_repeated_options(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.ini",
        "[uwsgi]\nprocesses = 2\nsocket = :1\nprocesses = 5\nsocket = :2\nfastrouter-to = /a\nfastrouter-to = /b\n",
    )
    config = load(path)
    assert config.processes == 5  # scalar: last wins
    assert config.first("processes") == "2"  # --get and %(...) read the first
    assert config.socket == (TcpAddress("", 1), TcpAddress("", 2))  # list options accumulate
    assert config.fastrouter_to == (UnixAddress("/a"), UnixAddress("/b"))


def test_comment_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.ini",
        "; leading comment\n[uwsgi]\n;processes = 2\n#processes = 3\n  ; processes = 5\n\t# processes = 6\n"
        "procname = real\n",
    )
    assert pairs(path) == [("procname", "real")]
    assert load(path).processes == 1


@pytest.mark.parametrize("value", ["v ; x", "v # x", "v;x", "a = b", "'quoted'", '"double"'])
def test_no_inline_comments_and_no_unquoting(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "c.ini", f"[uwsgi]\nprocname = {value}\n")
    assert load(path).procname == value


def test_whitespace_tabs_and_cr_are_trimmed(tmp_path: Path) -> None:
    path = write(tmp_path / "w.ini", "  [uwsgi]  \r\n \t processes \t = \t 6 \t\r\n\tprocname=  a  b \r\n")
    assert pairs(path) == [("processes", "6"), ("procname", "a  b")]
    assert load(path).processes == 6


def test_crlf_file(tmp_path: Path) -> None:
    path = tmp_path / "crlf.ini"
    path.write_bytes(b"[uwsgi]\r\nprocesses = 3\r\nsocket = :3031\r\n")
    config = load(path)
    assert (config.processes, config.socket) == (3, (TcpAddress("", 3031),))


def test_key_without_equals_has_an_empty_value(tmp_path: Path) -> None:
    path = write(tmp_path / "k.ini", "[uwsgi]\nmaster\nfastrouter-cheap\nprocname-prefix\nsomething =\n")
    assert pairs(path) == [("master", ""), ("fastrouter-cheap", ""), ("procname-prefix", ""), ("something", "")]
    config = load(path)
    assert config.master is True  # an empty value turns a flag on
    assert config.fastrouter_cheap is True
    assert config.procname_prefix == ""


def test_line_splits_at_the_first_equals(tmp_path: Path) -> None:
    path = write(tmp_path / "e.ini", "[uwsgi]\nenv = A=B=C\nset = name=value\n")
    config = load(path)
    assert config.env == (("A", "B=C"),)
    assert config.first("name") == "value"


def test_several_blocks_of_the_same_section_all_count(tmp_path: Path) -> None:
    path = write(
        tmp_path / "b.ini",
        "[uwsgi]\nsocket = :1\n[other]\nsocket = :9\nprocesses = 9\n"
        "[uwsgi]\nsocket = :2\n[more]\n[uwsgi]\nprocesses = 3\n",
    )
    config = load(path)
    assert config.socket == (TcpAddress("", 1), TcpAddress("", 2))
    assert config.processes == 3


def test_other_sections_and_lines_before_any_section_are_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path / "o.ini", "processes = 7\n[app]\nprocesses = 8\n[uwsgi]\nmaster = true\n[Uwsgi]\nprocesses = 9\n"
    )
    assert pairs(path) == [("master", "true")]


def test_file_without_the_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "n.ini", "[app]\nprocesses = 8\n")
    with pytest.raises(ConfigError, match=f"unable to load configuration from {path}: no \\[uwsgi\\] section"):
        load(path)


def test_empty_section_is_not_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.ini", "[uwsgi]\n")
    assert pairs(path) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("false", False),
        ("FALSE", False),
        ("False", False),
        ("off", False),
        ("OFF", False),
        ("no", False),
        ("No", False),
        ("0", False),
        ("true", True),
        ("TRUE", True),
        ("", True),
        ("yes", True),
        ("on", True),
        ("1", True),
        ("2", True),
        ("enable", True),
        ("nope", True),
        ("00", True),
    ],
)
def test_booleans(tmp_path: Path, value: str, expected: bool) -> None:
    path = write(tmp_path / "bool.ini", f"[uwsgi]\nmaster = {value}\nfastrouter-quiet = {value}\n")
    config = load(path)
    assert (config.master, config.fastrouter_quiet) == (expected, expected)
    assert load(environ={"UWSGI_MASTER": value}).master is expected
    assert load(f"--master={value}").master is expected


def test_last_boolean_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "bool.ini", "[uwsgi]\nmaster = true\nmaster = off\n")
    assert load(path).master is False
    assert load(path, "--master").master is False  # the positional file comes last
    assert load("--ini", path, "--master").master is True


# --- file magic ---------------------------------------------------------------------------------------------

MAGIC_INI = """[uwsgi]
magic-d = %d
magic-p = %p
magic-s = %s
magic-n = %n
magic-e = %e
magic-x = %x
magic-c = %c
magic-h = %h
magic-k = %k
magic-v = %v
magic-percent = 100%%
magic-0 = %0
magic-1 = %1
magic-z = a%zb
magic-later = %(magic-s)
[other]
magic-x = %x
"""


def test_file_magic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf" / "my.site.ini", MAGIC_INI)
    config = load(path)
    directory = str(tmp_path / "conf")
    parts = Path(directory).parts[1:]
    assert {name[6:]: config.first(name) for name in dict.fromkeys(e.key for e in config.entries)} == {
        "d": directory + "/",
        "p": str(path),
        "s": "my.site.ini",
        "n": "my.site",
        "e": "ini",
        "x": "",
        "c": "conf",
        "h": socket.gethostname(),
        "k": str(os.cpu_count()),
        "v": str(workdir),
        "percent": "100%",
        "0": parts[0],
        "1": parts[1],
        "z": "ab",  # an unknown letter is removed with its %
        "later": "my.site.ini",  # %( survives the magic pass for the %(option) pass
    }


def test_magic_of_a_relative_path_uses_the_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rel.ini", "[uwsgi]\nmy-where = %p\nmy-dir = %d\n")
    config = load("rel.ini")
    assert (config.first("my-where"), config.first("my-dir")) == (str(tmp_path / "rel.ini"), f"{tmp_path}/")


def test_magic_section_and_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "noext", "[uwsgi]\nname = %n\next = %e\n[prod]\nsection = %x\nname = %n\n")
    config = load("--ini", path)
    assert (config.first("name"), config.first("ext")) == ("noext", "")
    assert load("--ini", f"{path}:prod").first("section") == "prod"


def test_magic_x_names_an_explicit_uwsgi_section(tmp_path: Path) -> None:
    path = write(tmp_path / "x.ini", "[uwsgi]\nsection = %x\n")
    assert load("--ini", path).first("section") == ""
    assert load("--ini", f"{path}:uwsgi").first("section") == "uwsgi"


def test_percent_at_the_end_of_a_line_eats_the_newline_as_uwsgi_does(tmp_path: Path) -> None:
    path = write(tmp_path / "t.ini", "[uwsgi]\ntrail = abc%\nprocesses = 4\n")
    assert pairs(path) == [("trail", "abcprocesses = 4")]


def test_fastrouter_use_pattern_ini_trap(tmp_path: Path) -> None:
    # In an INI file %s is the file name: write %%s there. On the command line %s is left alone.
    path = write(
        tmp_path / "pattern.ini",
        "[uwsgi]\nfastrouter-use-pattern = /tmp/sockets/%%s/uwsgi.sock\n[trap]\nfastrouter-use-pattern = /x/%s\n",
    )
    assert load(path).fastrouter_use_pattern == "/tmp/sockets/%s/uwsgi.sock"
    assert load("--ini", f"{path}:trap").fastrouter_use_pattern == "/x/pattern.ini"
    cli = "/tmp/sockets/%s/uwsgi.sock"
    assert load("--fastrouter-use-pattern", cli).fastrouter_use_pattern == cli
    assert load(environ={"UWSGI_FASTROUTER_USE_PATTERN": cli}).fastrouter_use_pattern == cli


def test_magic_is_applied_to_files_only(tmp_path: Path) -> None:
    assert load("--procname", "100%d").procname == "100%d"
    assert load("--set", "x=%p").first("x") == "%p"


# --- substitutions ------------------------------------------------------------------------------------------


def test_environment_substitution(tmp_path: Path) -> None:
    path = write(tmp_path / "env.ini", "[uwsgi]\nfastrouter-use-base = $(SOCKDIR)/\nprocname = $(UNSET_VARIABLE)\n")
    config = load(path, environ={"SOCKDIR": "/srv/sockets"})
    assert config.fastrouter_use_base == "/srv/sockets/"
    assert config.procname == "$(UNSET_VARIABLE)"  # unset: left as written
    assert load("--procname", "$(SOCKDIR)-x", environ={"SOCKDIR": "d"}).procname == "d-x"


def test_environment_substitution_through_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROUTER_PROCS", "6")
    path = write(tmp_path / "env.ini", "[uwsgi]\nprocesses = $(ROUTER_PROCS)\nprocname = $(NOT_SET_ANYWHERE)\n")
    assert run(capsys, path, "--get", "processes", "--get", "procname") == (0, "6\n$(NOT_SET_ANYWHERE)\n", "")


@pytest.mark.parametrize(
    ("content", "expected"),
    [("hello\n", "hello"), ("hello\n\n", "hello\n"), ("hello", "hello"), ("", ""), ("a\nb\n", "a\nb")],
)
def test_file_substitution_drops_one_trailing_newline(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "value.txt").write_text(content, encoding="utf-8")
    path = write(tmp_path / "at.ini", f"[uwsgi]\nprocname = x@({tmp_path}/value.txt)y\n")
    assert load(path).first("procname") == f"x{expected}y"


def test_file_substitution_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.txt").write_text("/srv/sockets/\n", encoding="utf-8")
    assert load("--fastrouter-use-base", "@(base.txt)").fastrouter_use_base == "/srv/sockets/"


def test_file_substitution_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.txt"):
        load("--fastrouter-use-base", f"@({tmp_path}/missing.txt)")


def test_file_substitution_of_a_path_with_a_nul_byte_is_an_error(tmp_path: Path) -> None:
    # Found by tools/fuzz ini: open() raises ValueError, not OSError, for a NUL in the path.
    path = write(tmp_path / "nul.ini", "[uwsgi]\nprocname = @(a\0b)\n")
    with pytest.raises(ConfigError, match="null byte"):
        load(path)


def test_file_substitution_error_stays_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Found by tools/fuzz ini: @(%p) inserts this file, newlines included, and the scan goes on inside it.
    path = write(tmp_path / "at.ini", "[uwsgi]\nprocname = @(x\nprocname = @(%p)y)\n")
    code, _, err = run(capsys, path)
    assert (code, err.count("\n")) == (2, 1)
    assert err.startswith("uwsgirouter: @('x\\nprocname")


def test_values_that_double_each_other_stop_with_an_error(tmp_path: Path) -> None:
    # 30 doublings of 10 bytes: 10 GiB from a file of 600 bytes, before MAX_EXPANSION.
    lines = ["[uwsgi]", "k0 = xxxxxxxxxx", *[f"k{i} = %(k{i - 1})%(k{i - 1})" for i in range(1, 31)]]
    path = write(tmp_path / "double.ini", "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="too large"):
        load(path)


def test_substitutions_up_to_the_expansion_bound_work(tmp_path: Path) -> None:
    lines = ["[uwsgi]", "k0 = xxxxxxxxxx", *[f"k{i} = %(k{i - 1})%(k{i - 1})" for i in range(1, 15)]]
    path = write(tmp_path / "double.ini", "\n".join([*lines, "procname = %(k14)", ""]))
    assert load(path).procname == "x" * 10 * 2**14


def test_option_substitution_uses_the_first_value(tmp_path: Path) -> None:
    path = write(
        tmp_path / "opt.ini",
        "[uwsgi]\nsocket = /tmp/first.sock\nsocket = /tmp/second.sock\nprocesses = 3\nprocesses = 7\n"
        "fastrouter-to = %(socket)\nprocname = p%(processes)\n",
    )
    config = load(path)
    assert config.fastrouter_to == (UnixAddress("/tmp/first.sock"),)
    assert config.procname == "p3"
    assert config.processes == 7


def test_option_substitution_sees_values_given_later_and_on_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path / "late.ini", "[uwsgi]\nprocname = %(procname-prefix)router\n")
    assert load("--ini", path, "--procname-prefix", "pre-").procname == "pre-router"


def test_option_substitution_of_an_unknown_name_is_left_alone() -> None:
    assert load("--procname", "%(nothing-here)").procname == "%(nothing-here)"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("processes + 2", "6"),
        ("processes - 1", "3"),
        ("processes * 3", "12"),
        ("processes / 3", "1"),
        ("processes * 2 + 1", "9"),  # left to right
        ("processes ++", "5"),
        ("processes --", "3"),
        ("processes / 0", "0"),
        ("10 + processes", "14"),
    ],
)
def test_option_substitution_math(tmp_path: Path, expression: str, expected: str) -> None:
    path = write(tmp_path / "math.ini", f"[uwsgi]\nprocesses = 4\nprocname = %({expression})\n")
    assert load(path).procname == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("9223372036854775807 + 1", "-9223372036854775808"),  # int64 wraps, as in uWSGI
        ("99999999999999999999 + 0", "9223372036854775807"),  # strtoll saturates
        ("-99999999999999999999 - 0", "-9223372036854775808"),
        ("9007199254740993 / 1", "9007199254740993"),  # exact, no float on the way
        ("-7 / 2", "-3"),  # C division: toward zero
        ("big / 3", "3074457345618258602"),  # was OverflowError: too large for a float
        ("big * big", "1"),  # was ValueError: int too long for str(); 0x7fff...f ** 2 wraps to 1
    ],
)
def test_option_substitution_math_is_int64(tmp_path: Path, expression: str, expected: str) -> None:
    # Found while seeding tools/fuzz ini: huge operands escaped as Python exceptions instead of values.
    path = write(tmp_path / "math.ini", f"[uwsgi]\nbig = {'9' * 2200}\nprocname = %({expression})\n")
    assert load(path).procname == expected


def test_math_result_is_an_option_value(tmp_path: Path) -> None:
    path = write(tmp_path / "math.ini", "[uwsgi]\nprocesses = 4\nfastrouter-processes = %(processes + 2)\n")
    assert load(path).fastrouter_processes == 6


def test_placeholders_are_usable_through_option_substitution(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ph.ini",
        "[uwsgi]\nbase = /srv\napp-port = 3031\n"
        "fastrouter-use-base = %(base)/sockets/\nfastrouter = 127.0.0.1:%(app-port)\n",
    )
    config = load(path)
    assert config.fastrouter_use_base == "/srv/sockets/"
    assert config.fastrouter == (TcpAddress("127.0.0.1", 3031),)
    assert config.first("base") == "/srv"


def test_set_gives_an_option_or_a_placeholder() -> None:
    config = load("--set", "processes=5", "--set", "where=/srv/x", "--fastrouter-use-base", "%(where)/")
    assert config.processes == 5
    assert config.fastrouter_use_base == "/srv/x/"
    assert load("--processes", "3", "-S", "processes=8").processes == 8
    assert load("--set", "processes=8", "--processes", "3").processes == 3
    assert load("--set", "empty=").first("empty") == ""


def test_set_in_an_ini_file(tmp_path: Path) -> None:
    path = write(tmp_path / "set.ini", "[uwsgi]\nset = processes=6\nset = base=/b\nfastrouter-use-base = %(base)/\n")
    config = load(path)
    assert (config.processes, config.fastrouter_use_base) == (6, "/b/")


@pytest.mark.parametrize("value", ["noequals", "=value"])
def test_set_needs_name_equals_value(value: str) -> None:
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        load("--set", value)


# --- environment and load order -----------------------------------------------------------------------------


def test_load_order_environment_command_line_positional_files(tmp_path: Path) -> None:
    path = write(tmp_path / "order.ini", "[uwsgi]\nprocesses = 4\n")
    environ = {"UWSGI_PROCESSES": "2"}
    config = load(path, "--processes", "3", environ=environ)
    assert config.processes == 4
    assert config.first("processes") == "2"
    assert [e.origin for e in config.entries] == ["environment UWSGI_PROCESSES", "command line", f"{path} [uwsgi]"]
    assert load("--processes", "3", environ=environ).processes == 3
    assert load(environ=environ).processes == 2


def test_load_order_through_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "order.ini", "[uwsgi]\nprocesses = 4\n")
    monkeypatch.setenv("UWSGI_PROCESSES", "2")
    assert run(capsys, "--processes", "3", "--get", "processes", path) == (0, "2\n", "")
    code, out, _ = run(capsys, "--processes", "3", "--show-config", "--dry-run", path)
    assert code == 0
    body = out.split("\n")[3:-3]
    assert [line for line in body if line.startswith("processes")] == [
        "processes = 2",
        "processes = 3",
        "processes = 4",
    ]


def test_environment_variable_names_map_to_options() -> None:
    environ = {
        "UWSGI_FASTROUTER_USE_BASE": "/tmp/sockets/",
        "UWSGI_FASTROUTER_TO": "/tmp/node.sock",
        "UWSGI_MASTER": "1",
        "UWSGI_FASTROUTER_WORKERS": "3",
        "HOME": "/root",
        "UWSGI": "x",
        "UWSGI_": "y",
    }
    config = load(environ=environ)
    assert config.fastrouter_use_base == "/tmp/sockets/"
    assert config.fastrouter_to == (UnixAddress("/tmp/node.sock"),)
    assert config.master is True
    assert config.fastrouter_processes == 3
    assert sorted(e.key for e in config.entries) == [
        "fastrouter-to",
        "fastrouter-use-base",
        "fastrouter-workers",
        "master",
    ]


def test_unknown_environment_variables_are_placeholders() -> None:
    config = load("--procname", "%(my-place)", environ={"UWSGI_MY_PLACE": "here"})
    assert config.procname == "here"


@pytest.mark.parametrize("name", sorted(RESERVED_ENV))
def test_reserved_environment_variables_are_ignored(name: str) -> None:
    config = load(environ={name: "3", "UWSGI_PROCESSES": "2"})
    assert [e.key for e in config.entries] == ["processes"]


def test_reserved_variables_are_not_options_even_with_strict() -> None:
    config = load("--strict", environ={"UWSGI_RELOADS": "3", "UWSGI_EMPEROR_FD": "4"})
    assert [e.key for e in config.entries] == ["strict"]


def test_ini_from_the_environment_is_expanded_first(tmp_path: Path) -> None:
    path = write(tmp_path / "envini.ini", "[uwsgi]\nprocesses = 4\n")
    assert pairs("--processes", "5", environ={"UWSGI_INI": str(path)}) == [
        ("ini", str(path)),
        ("processes", "4"),
        ("processes", "5"),
    ]


# --- nested files -------------------------------------------------------------------------------------------


def test_nested_ini_is_expanded_where_it_appears(tmp_path: Path) -> None:
    write(tmp_path / "common.ini", "[uwsgi]\nmaster = true\nprocesses = 2\n[extra]\nsocket = :3032\n")
    main_ini = write(
        tmp_path / "main.ini",
        "[uwsgi]\nsocket = :3031\nini = %dcommon.ini\nini = :extra\nprocesses = 5\n",
    )
    assert pairs(main_ini) == [
        ("socket", ":3031"),
        ("ini", f"{tmp_path}/common.ini"),
        ("master", "true"),
        ("processes", "2"),
        ("ini", ":extra"),
        ("socket", ":3032"),
        ("processes", "5"),
    ]
    config = load(main_ini)
    assert (config.master, config.processes) == (True, 5)


def test_nested_ini_with_another_section_of_the_same_file(tmp_path: Path) -> None:
    path = write(tmp_path / "self.ini", "[uwsgi]\nini = %p:base\nprocesses = 3\n[base]\nprocesses = 1\nmaster = true\n")
    config = load(path)
    assert (config.master, config.processes) == (True, 3)


def test_ini_including_itself_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "loop.ini", "[uwsgi]\nprocesses = 2\nini = %p\n")
    code, out, err = run(capsys, "--dry-run", path)
    assert (code, out) == (2, "")
    assert err == (f"uwsgirouter: {path}: INI files include each other more than {MAX_INI_DEPTH} levels deep\n")


def test_two_files_including_each_other_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "a.ini", "[uwsgi]\nini = %db.ini\n")
    write(tmp_path / "b.ini", "[uwsgi]\nini = %da.ini\n")
    code, _, err = run(capsys, "--ini", tmp_path / "a.ini", "--dry-run")
    assert code == 2
    assert "include each other" in err
    assert err.count("\n") == 1


def test_includes_that_multiply_stop_with_an_error(tmp_path: Path) -> None:
    # Three includes a level, 15 levels: 3**15 section loads (hours) from a file of 700 bytes.
    levels = ["[uwsgi]", *["ini = %p:s1"] * 3]
    for level in range(1, 15):
        levels += [f"[s{level}]", *[f"ini = %p:s{level + 1}"] * 3]
    path = write(tmp_path / "fan.ini", "\n".join([*levels, "[s15]", "processes = 1", ""]))
    with pytest.raises(ConfigError, match=f"more than {MAX_INI_LOADS} INI files or sections"):
        load(path)


def test_a_section_included_many_times_counts_each_load(tmp_path: Path) -> None:
    path = write(tmp_path / "site.ini", "[uwsgi]\nini = %p:a\nini = %p:a\n[a]\nsocket = /tmp/a.sock\n")
    assert len(load(path).socket) == 2


def test_unknown_key_in_a_section_read_many_times_warns_once(tmp_path: Path) -> None:
    path = write(tmp_path / "site.ini", "[uwsgi]\nini = %p:a\nini = %p:a\n[a]\nfastroute = 1\n")
    warnings: list[str] = []
    load_entries([str(path)], {}, warn=warnings.append)
    assert len(warnings) == 1 and "did you mean fastrouter" in warnings[0]


def test_nested_missing_file_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "outer.ini", "[uwsgi]\nini = %dnot-there.ini\n")
    assert run(capsys, path) == (
        2,
        "",
        f"uwsgirouter: unable to load configuration from {tmp_path}/not-there.ini: No such file or directory\n",
    )


def test_nested_path_with_a_nul_byte_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Found by tools/fuzz ini (the input is in tests/fuzz/corpus/ini): this was a ValueError traceback.
    path = write(tmp_path / "outer.ini", "[uwsgi]\nini = a\0b.ini\n")
    code, _, err = run(capsys, path)
    assert (code, err.count("\n")) == (2, 1)
    assert "null byte" in err


# --- unknown keys -------------------------------------------------------------------------------------------


def test_unknown_keys_are_placeholders_without_strict(tmp_path: Path) -> None:
    path = write(tmp_path / "u.ini", "[uwsgi]\nmy-own-key = 1\nprocesses = 2\n")
    config = load(path)
    assert config.processes == 2
    assert config.first("my-own-key") == "1"


def test_strict_rejects_unknown_ini_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "u.ini", "[uwsgi]\nprocesses = 2\nmy-own-key = 1\n")
    assert run(capsys, "--strict", "--dry-run", path) == (
        2,
        "",
        f"uwsgirouter: unknown option 'my-own-key' in {path} [uwsgi] (--strict forbids placeholders)\n",
    )
    strict_in_file = write(tmp_path / "s.ini", "[uwsgi]\nstrict = true\nmy-own-key = 1\n")
    assert run(capsys, "--dry-run", strict_in_file)[0] == 2
    known_only = write(tmp_path / "k.ini", "[uwsgi]\nstrict = true\nprocesses = 2\nworkers = 3\n")
    assert run(capsys, "--dry-run", known_only) == (0, "", "")


def test_strict_rejects_placeholders_from_set(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--strict", "--set", "foo=bar", "--dry-run")
    assert code == 2
    assert "unknown option 'foo' in command line" in err


def test_strict_rejects_unknown_environment_variables() -> None:
    with pytest.raises(ConfigError, match="foobar"):
        load("--strict", environ={"UWSGI_FOOBAR": "1"})


def test_near_miss_unknown_key_warns_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.ini", "[uwsgi]\nfastrouter-use-bse = /tmp/sockets/\nmy-base = /srv\n")
    warnings: list[str] = []
    config = load_config([str(path)], {}, warn=warnings.append)
    assert warnings == [
        f"unknown option 'fastrouter-use-bse' in {path} (did you mean fastrouter-use-base?); kept as a placeholder"
    ]
    assert config.fastrouter_use_base is None
    assert config.first("fastrouter-use-bse") == "/tmp/sockets/"


def test_near_miss_warning_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "typo.ini", "[uwsgi]\nproceses = 4\n")
    assert run(capsys, "--dry-run", path) == (
        0,
        "",
        f"uwsgirouter: unknown option 'proceses' in {path} (did you mean processes?); kept as a placeholder\n",
    )
