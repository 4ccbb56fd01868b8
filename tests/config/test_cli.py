"""The ``uwsgirouter`` command line: ``cli.main`` in process, and a few real subprocesses for exit codes.

Every user mistake is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from uwsgirouter import __version__, build_kind
from uwsgirouter.address import SharedSocketRef, TcpAddress, UnixAddress
from uwsgirouter.cli import main
from uwsgirouter.config import Config, load_config
from uwsgirouter.config.checks import check_config
from uwsgirouter.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seed" / "Fastrouter.rst"
DATA = Path(__file__).resolve().parent / "data"
CHEAP_INI = DATA / "cheap_mode_shared_socket.ini"
CONSOLE_SCRIPT = Path(sys.executable).with_name("uwsgirouter")

needs_seed = pytest.mark.skipif(not SEED.is_file(), reason=f"{SEED} is not available")


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def load(*argv: str | Path) -> Config:
    return load_config([str(a) for a in argv], {})


def spawn(command: list[str], *argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *(str(a) for a in argv)], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


PYTHON_M = [sys.executable, "-m", "uwsgirouter"]


def console_script() -> list[str]:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"no console script at {CONSOLE_SCRIPT}")
    return [str(CONSOLE_SCRIPT)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- errors -------------------------------------------------------------------------------------------------

UNKNOWN_LINE = "uwsgirouter: unknown option --fastrouter-use-bse (did you mean --fastrouter-use-base?)\n"


def test_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--fastrouter-use-bse", "/tmp") == (2, "", UNKNOWN_LINE)


def test_unknown_option_without_a_close_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--zzzzzz") == (2, "", "uwsgirouter: unknown option --zzzzzz\n")
    assert run(capsys, "-X") == (2, "", "uwsgirouter: unknown option -X\n")


def test_unknown_option_in_a_subprocess_python_m() -> None:
    result = spawn(PYTHON_M, "--fastrouter-use-bse", "/tmp")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", UNKNOWN_LINE)


def test_unknown_option_in_a_subprocess_console_script() -> None:
    result = spawn(console_script(), "--fastrouter-use-bse", "/tmp")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", UNKNOWN_LINE)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--processes", "abc"],
            "invalid value 'abc' for --processes: expected a whole number >= 1 (not a whole number)",
        ),
        (["-p", "0"], "invalid value '0' for --processes: expected a whole number >= 1 (out of range)"),
        (
            ["--processes=--1"],
            "invalid value '--1' for --processes: expected a whole number >= 1 (not a whole number)",
        ),
        (
            ["--fastrouter", "1.2.3.4:99999"],
            "invalid value '1.2.3.4:99999' for --fastrouter: expected an address (host:port, :port, /unix/path, "
            "@abstract, =N or fd://N) (invalid port '99999' in address '1.2.3.4:99999' (expected 0-65535))",
        ),
        (
            ["--subscription-algo", "xyz"],
            "invalid value 'xyz' for --subscription-algo: expected one of wrr, lrc, wlrc (not one of the choices)",
        ),
        (
            ["--fastrouter-to", "=0"],
            "invalid value '=0' for --fastrouter-to: expected a node address (host:port, /unix/path or @abstract) "
            "(a node must be host:port, a UNIX path or @abstract)",
        ),
        (["--chmod-socket=999"], "invalid value '999' for --chmod-socket: expected an octal file mode such as 660"),
        (["--fastrouter-timeout", "0"], "invalid value '0' for --fastrouter-timeout: expected a whole number >= 1"),
        (["--buffer-size", "70000"], "for --buffer-size: expected a whole number from 1 to 65535 (out of range)"),
        (["--env", "NOEQUALS"], "invalid value 'NOEQUALS' for --env: expected NAME=VALUE (missing '=')"),
        (
            ["--fastrouter-use-code-string", "mapper.py"],
            "expected MODIFIER1:FILE:FUNCTION, for example 0:mapper.py:get",
        ),
    ],
)
def test_bad_values_name_option_value_and_expectation(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, out, err = run(capsys, *argv, "--dry-run")
    assert (code, out) == (2, "")
    assert err.startswith("uwsgirouter: ")
    assert expected in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_long_bad_values_are_shortened(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--processes", "9" * 50 + "x" * 50)
    assert code == 2
    assert "'" + "9" * 50 + "x" * 27 + "...' for --processes" in err


def test_bad_value_from_an_ini_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "bad.ini", "[uwsgi]\nsubscription-algo = xyz\n")
    code, _, err = run(capsys, path)
    assert (code, err.count("\n")) == (2, 1)
    assert "'xyz' for --subscription-algo" in err
    monkeypatch.setenv("UWSGI_PROCESSES", "many")
    assert run(capsys, "--dry-run")[2].startswith("uwsgirouter: invalid value 'many' for --processes")


def test_bad_value_in_a_subprocess(tmp_path: Path) -> None:
    result = spawn(PYTHON_M, "--fastrouter", "1.2.3.4:99999", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("uwsgirouter: invalid value '1.2.3.4:99999' for --fastrouter: expected ")
    assert result.stderr.count("\n") == 1


def test_missing_ini_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.ini"
    expected = f"uwsgirouter: unable to load configuration from {missing}: No such file or directory\n"
    assert run(capsys, missing) == (2, "", expected)
    assert run(capsys, "--ini", missing) == (2, "", expected)
    assert run(capsys, "--ini", f"{missing}:prod") == (2, "", expected)


def test_missing_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "site.ini", "[uwsgi]\nprocesses = 2\n")
    assert run(capsys, "--ini", f"{path}:nope") == (
        2,
        "",
        f"uwsgirouter: unable to load configuration from {path}: no [nope] section\n",
    )


def test_missing_ini_file_in_a_subprocess(tmp_path: Path) -> None:
    result = spawn(console_script(), "--dry-run", "nowhere.ini", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "uwsgirouter: unable to load configuration from nowhere.ini: No such file or directory\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--fastrouter-to"], "option --fastrouter-to requires a value (write --fastrouter-to=VALUE)"),
        (["--processes", "--master"], "option --processes requires a value (write --processes=VALUE)"),
        (
            ["--fastrouter-quiet", "--fastrouter-to", "x"],
            "option --fastrouter-quiet requires a value (write --fastrouter-quiet=VALUE)",
        ),
        (["--fastrouter-quiet"], "option --fastrouter-quiet requires a value (write --fastrouter-quiet=VALUE)"),
        (["--ini"], "option --ini requires a value (write --ini=VALUE)"),
        (["-M", "-p"], "option -p (--processes) requires a value"),
        (["-s", "--fastrouter=:1"], "option -s (--socket) requires a value"),
    ],
)
def test_value_taking_option_without_a_value(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert run(capsys, *argv) == (2, "", f"uwsgirouter: {expected}\n")


def test_fastrouter_quiet_takes_its_value_with_equals() -> None:
    assert load("--fastrouter-quiet=1").fastrouter_quiet is True
    assert load("--fastrouter-quiet=0").fastrouter_quiet is False
    assert load("--fastrouter-quiet", "true").fastrouter_quiet is True
    assert load().fastrouter_quiet is False


def test_value_may_look_like_an_unknown_option() -> None:
    # As with getopt: only a known long option stops a value from being taken.
    assert load("--procname", "--not-an-option").procname == "--not-an-option"
    assert load("--procname", "-x").procname == "-x"


# --- option syntax ------------------------------------------------------------------------------------------


def test_short_options() -> None:
    assert load("-M").master is True
    assert load("-p", "4").processes == 4
    assert load("-p4").processes == 4
    config = load("-Mp4")
    assert (config.master, config.processes) == (True, 4)
    assert load("-s", ":0").socket == (TcpAddress("", 0),)
    assert load("-s:0").socket == (TcpAddress("", 0),)
    config = load("-MT", "-L")
    assert (config.master, config.enable_threads, config.disable_logging) == (True, True, True)
    assert load("-S", "processes=3").processes == 3


def test_short_option_entries_use_the_long_name() -> None:
    assert [(e.key, e.value) for e in load("-Mp4", "-s", ":0").entries] == [
        ("master", None),
        ("processes", "4"),
        ("socket", ":0"),
    ]


def test_equals_value_forms() -> None:
    assert load("--processes=4").processes == 4
    assert load("--procname-prefix=").procname_prefix == ""
    assert load("--fastrouter-use-pattern=/a/%s=b").fastrouter_use_pattern == "/a/%s=b"


def test_double_dash_ends_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "site.ini", "[uwsgi]\nprocesses = 4\n")
    assert load("--processes", "3", "--", path).processes == 4
    code, _, err = run(capsys, "--", "--processes", "3")
    assert code == 2
    assert (
        err == "uwsgirouter: unable to load configuration from --processes: positional arguments must be .ini files\n"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--master=false"], False),
        (["--master=0"], False),
        (["--master=OFF"], False),
        (["--master=no"], False),
        (["--master=true"], True),
        (["--master=1"], True),
        (["--master="], True),
        (["--master"], True),
        (["--master", "--master=false"], False),
        (["--master=false", "-M"], True),
        ([], False),
    ],
)
def test_equals_value_for_flags(argv: list[str], expected: bool) -> None:
    assert load(*argv).master is expected


def test_optional_argument_options() -> None:
    assert load("--chmod-socket").chmod_socket == 0o666
    assert load("--chmod-socket=660").chmod_socket == 0o660
    assert load("--chmod=600").chmod_socket == 0o600
    assert load("-C").chmod_socket == 0o666
    assert load("-C644").chmod_socket == 0o644
    assert load().chmod_socket is None
    assert load("--fastrouter-use-socket").fastrouter_use_socket == 0
    assert load("--fastrouter-use-socket=2").fastrouter_use_socket == 2
    assert load().fastrouter_use_socket is None
    assert load("--fastrouter-use-cache").fastrouter_use_cache == ""
    assert load("--fastrouter-use-cache=mycache").fastrouter_use_cache == "mycache"
    assert load().fastrouter_use_cache is None


def test_optional_argument_never_takes_the_next_word(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--chmod-socket", "660") == (
        2,
        "",
        "uwsgirouter: unable to load configuration from 660: positional arguments must be .ini files\n",
    )
    assert load("--chmod-socket", "--master").chmod_socket == 0o666


def test_aliases_on_the_command_line() -> None:
    config = load("--fastrouter-workers", "3", "--uwsgi-socket", "/tmp/s.sock", "--file", "app.wsgi", "-w", "app")
    assert config.fastrouter_processes == 3
    assert config.socket == (UnixAddress("/tmp/s.sock"),)
    assert (config.wsgi_file, config.module) == ("app.wsgi", "app")
    assert [e.key for e in config.entries] == ["fastrouter-workers", "uwsgi-socket", "file", "module"]


# --- --help, --version, --get, --dry-run --------------------------------------------------------------------


def _help_option_strings(help_text: str) -> set[str]:
    """The option strings argparse lists (lines starting with two spaces and a dash), not the prose."""
    found: set[str] = set()
    for line in help_text.splitlines():
        if re.match(r"^  -", line):
            found.update(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", line))
    return found


def _seed_options(text: str) -> set[str]:
    """Every --option and -X written in the seed, and every key of its INI blocks, as command-line flags."""
    options = {f"--{name}" for name in re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", text)}
    options |= {f"-{letter}" for letter in re.findall(r"(?<![\w-])-([A-Za-z])(?![\w-])", text)}
    for block in re.findall(r"\.\. code-block:: ini\n\n((?:[ \t]+.*\n|\n)+)", text):
        for line in textwrap.dedent(block).splitlines():
            line = line.strip()
            if line and line[0] not in ";#[" and "=" in line:
                options.add("--" + line.partition("=")[0].strip())
    return options


@needs_seed
def test_help_lists_every_option_of_the_seed_document(capsys: pytest.CaptureFixture[str]) -> None:
    seed_options = _seed_options(SEED.read_text(encoding="utf-8"))
    # A sanity check of the extraction itself, so an empty set cannot pass silently.
    assert {"--fastrouter", "--fastrouter-use-base", "--no-fd-passing", "-M", "--shared-socket", "--wsgi-file"} <= (
        seed_options
    )
    assert {"--fastrouter-cheap", "--fastrouter-post-buffering", "--fastrouter-to"} <= seed_options
    code, out, err = run(capsys, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: uwsgirouter [OPTIONS] [FILE.ini ...]\n")
    assert sorted(seed_options - _help_option_strings(out)) == []


def test_help_lists_every_declared_option_and_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    from uwsgirouter.config import REGISTRY

    code, out, _ = run(capsys, "--help")
    assert code == 0
    listed = _help_option_strings(out)
    flat = " ".join(out.split())
    for setting in REGISTRY.settings:
        assert set(setting.flags) <= listed, setting.name
        assert f"[env var: {setting.env_var}]" in flat, setting.name


@pytest.mark.parametrize("flag", ["--help", "-h", "--usage"])
def test_help_exits_zero_and_ignores_the_rest(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    code, out, err = run(capsys, "--fastrouter", ":3017", flag, "--processes", "2")
    assert (code, err) == (0, "")
    assert "--fastrouter-use-pattern" in out


def test_help_in_a_subprocess() -> None:
    result = spawn(console_script(), "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert "--fastrouter-subscription-server" in result.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"uwsgirouter {__version__} ({build_kind()})\n", "")


def test_version_in_a_subprocess() -> None:
    result = spawn(PYTHON_M, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"uwsgirouter {__version__} ({build_kind()})\n", "")


def test_get_prints_first_values(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--socket", ":1", "--socket", ":2", "--processes", "3", "--processes", "5"]
    assert run(capsys, *argv, "--get", "socket", "--get", "processes") == (0, ":1\n3\n", "")


def test_get_prints_nothing_for_a_missing_option_or_a_bare_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "-M", "--get", "master", "--get", "processes", "--get", "no-such-thing") == (0, "", "")
    assert run(capsys, "--master=true", "--get", "master") == (0, "true\n", "")


def test_get_reads_placeholders_and_substituted_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--set", "base=/srv", "--fastrouter-use-base", "%(base)/s/", "--get", "fastrouter-use-base") == (
        0,
        "/srv/s/\n",
        "",
    )
    assert run(capsys, "--set", "base=/srv", "--get", "base") == (0, "/srv\n", "")


def test_get_and_substitution_find_an_option_under_its_other_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/differences.md, "`--get NAME`": uWSGI matches the name only as written; we find the option's aliases."""
    assert run(capsys, "--processes", "4", "--get", "workers") == (0, "4\n", "")
    assert run(capsys, "-p", "3", "--get", "processes") == (0, "3\n", "")
    path = write(tmp_path / "a.ini", "[uwsgi]\nworkers = 5\nprocname = p%(processes)\n")
    assert load(path).procname == "p5"


def test_accepted_options_that_change_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """Options a uWSGI configuration carries that need nothing from us are taken silently, not warned about."""
    for flag in ("--no-fd-passing", "--die-on-term", "--enable-threads", "--log-reopen", "--log-master"):
        assert run(capsys, "--fastrouter", "127.0.0.1:3017", flag, "--dry-run") == (0, "", ""), flag
    assert load("--no-fd-passing").no_fd_passing is True


def test_planned_options_are_accepted_and_marked_later_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    """README, "`--fastrouter-zerg`": accepted (no warning, no error) and marked as not yet working in --help."""
    assert run(capsys, "--fastrouter", "127.0.0.1:3017", "--fastrouter-zerg", "/tmp/zerg.sock", "--dry-run") == (
        0,
        "",
        "",
    )
    code, out, _ = run(capsys, "--help")
    entry = " ".join(out.split("--fastrouter-zerg VALUE", 1)[1].split("[env var", 1)[0].split())
    assert code == 0 and "takes effect in a later release" in entry, entry


def test_get_does_not_run_the_configuration_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--fastrouter-use-cache", "--get", "processes", "-p", "2") == (0, "2\n", "")


def test_dry_run_on_a_valid_configuration_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--fastrouter", "127.0.0.1:3017", "--fastrouter-use-base", "/tmp/sockets/", "--dry-run"]
    assert run(capsys, *argv) == (0, "", "")


def test_dry_run_in_a_subprocess(tmp_path: Path) -> None:
    path = write(tmp_path / "site.ini", "[uwsgi]\nfastrouter = 127.0.0.1:3017\nfastrouter-to = /tmp/app.sock\n")
    result = spawn(PYTHON_M, "--dry-run", "site.ini", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert path.exists()


# --- --show-config ------------------------------------------------------------------------------------------


def test_show_config_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    included = write(tmp_path / "inc.ini", "[uwsgi]\nprocesses = 4\nfastrouter-cheap = true\n")
    positional = write(tmp_path / "last.ini", "[uwsgi]\nsocket = :3031\nmaster\n")
    argv: list[str | Path] = ["-M", "--show-config", "--processes", "2", "--ini", included, "--fastrouter-quiet=1"]
    code, out, err = run(capsys, *argv, "--dry-run", positional)
    assert (code, err) == (0, "")
    assert out == (
        "\n"
        ";uwsgirouter instance configuration\n"
        "[uwsgi]\n"
        "master = true\n"
        "show-config = true\n"
        "processes = 2\n"
        f"ini = {included}\n"
        "processes = 4\n"
        "fastrouter-cheap = true\n"
        "fastrouter-quiet = 1\n"
        "dry-run = true\n"
        "socket = :3031\n"
        "master = \n"
        ";end of configuration\n"
        "\n"
    )
    assert f"ini = {positional}" not in out


def test_show_config_keeps_names_as_written_and_shows_substituted_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UWSGI_FASTROUTER_WORKERS", "2")
    monkeypatch.setenv("SOCKDIR", "/srv")
    code, out, _ = run(capsys, "--show-config", "--dry-run", "--fastrouter-use-base", "$(SOCKDIR)/", "--set", "a=b")
    assert code == 0
    assert out.split("\n")[3:-3] == [
        "fastrouter-workers = 2",
        "show-config = true",
        "dry-run = true",
        "fastrouter-use-base = /srv/",
        "set = a=b",
        "a = b",
    ]


def test_show_config_is_printed_before_the_checks_fail(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--show-config", "--fastrouter-use-cache")
    assert code == 2
    assert out.endswith(";end of configuration\n\n")
    assert err.startswith("uwsgirouter: --fastrouter-use-cache needs a cache")


# --- check_config -------------------------------------------------------------------------------------------


def test_shared_socket_index_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--fastrouter", "=3", "--shared-socket", "127.0.0.1:3031", "--dry-run") == (
        2,
        "",
        "uwsgirouter: --fastrouter =3: there is no shared socket 3 (1 defined with --shared-socket)\n",
    )
    code, _, err = run(capsys, "--socket", "=1", "--shared-socket", ":3031", "--dry-run")
    assert code == 2
    assert err == "uwsgirouter: --socket =1: there is no shared socket 1 (1 defined with --shared-socket)\n"


def test_shared_socket_indexes_count_both_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--shared-socket", ":3031", "--undeferred-shared-socket", ":3032", "--fastrouter", "=1", "--socket", "=0"]
    assert run(capsys, *argv, "--dry-run") == (0, "", "")
    assert load(*argv).fastrouter == (SharedSocketRef(1),)


def test_fastrouter_use_cache_needs_a_cache(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--fastrouter", ":3017", "--fastrouter-use-cache", "--dry-run") == (
        2,
        "",
        "uwsgirouter: --fastrouter-use-cache needs a cache: add --cache N or --cache2 name=...,items=N\n",
    )
    assert run(capsys, "--fastrouter-use-cache", "--cache", "100", "--dry-run") == (0, "", "")
    assert run(capsys, "--fastrouter-use-cache=c", "--cache2", "name=c,items=10", "--dry-run") == (0, "", "")


def test_fastrouter_use_socket_needs_a_socket(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--fastrouter-use-socket", "--dry-run") == (
        2,
        "",
        "uwsgirouter: --fastrouter-use-socket=0: this instance has 0 --socket address(es)\n",
    )
    assert run(capsys, "--fastrouter-use-socket", "-s", ":0", "--dry-run") == (0, "", "")
    assert run(capsys, "--fastrouter-use-socket=1", "-s", ":0", "--dry-run")[0] == 2


# --- the seed's "Cheap mode and shared sockets" example -----------------------------------------------------

NO_SEED_APP = "uwsgirouter: --wsgi-file /var/www/myheavyapp.wsgi: no such file\n"
CHEAP_CLI = [
    "--shared-socket",
    "127.0.0.1:3031",
    "--fastrouter",
    "=0",
    "--socket",
    "=0",
    "--master",
    "--fastrouter-subscription-server",
    "127.0.0.1:4040",
    "--wsgi-file",
    "/var/www/myheavyapp.wsgi",
    "--processes",
    "4",
    "--fastrouter-cheap",
]

CHEAP_SHOW_CONFIG = """
;uwsgirouter instance configuration
[uwsgi]
show-config = true
dry-run = true
shared-socket = 127.0.0.1:3031
fastrouter = =0
socket = =0
master = true
fastrouter-subscription-server = 127.0.0.1:4040
wsgi-file = /var/www/myheavyapp.wsgi
processes = 4
fastrouter-cheap = true
;end of configuration

"""


@needs_seed
def test_cheap_mode_fixture_is_the_seed_example() -> None:
    seed = SEED.read_text(encoding="utf-8")
    section = seed[seed.index("Cheap mode and shared sockets") :]
    block = section[section.index(".. code-block:: ini\n") :].split("\n")[1:]
    lines: list[str] = []
    for line in block:
        if line.strip() and not line.startswith((" ", "\t")):
            break
        lines.append(line)
    example = textwrap.dedent("\n".join(lines)).strip("\n").replace("192.168.0.100", "127.0.0.1")
    fixture = CHEAP_INI.read_text(encoding="utf-8")
    assert [line.rstrip() for line in example.split("\n")] == fixture.rstrip("\n").split("\n")


def test_cheap_mode_ini_and_command_line_show_the_same_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    from_file = run(capsys, "--show-config", "--dry-run", CHEAP_INI)
    from_cli = run(capsys, "--show-config", "--dry-run", *CHEAP_CLI)
    # The configuration is shown, then --dry-run finds that the seed's app file is not on this host.
    assert from_file == from_cli == (2, CHEAP_SHOW_CONFIG, NO_SEED_APP)


def test_cheap_mode_ini_and_command_line_in_subprocesses(tmp_path: Path) -> None:
    command = console_script()
    from_file = spawn(command, "--show-config", "--dry-run", CHEAP_INI, cwd=tmp_path)
    from_cli = spawn(command, "--show-config", "--dry-run", *CHEAP_CLI, cwd=tmp_path)
    assert (from_file.returncode, from_file.stdout, from_file.stderr) == (2, CHEAP_SHOW_CONFIG, NO_SEED_APP)
    assert (from_cli.returncode, from_cli.stdout, from_cli.stderr) == (2, CHEAP_SHOW_CONFIG, NO_SEED_APP)


def test_cheap_mode_typed_values() -> None:
    for config in (load(CHEAP_INI), load(*CHEAP_CLI)):
        assert config.shared_socket == (TcpAddress("127.0.0.1", 3031),)
        assert config.fastrouter == (SharedSocketRef(0),)
        assert config.socket == (SharedSocketRef(0),)
        assert (config.master, config.fastrouter_cheap, config.processes) == (True, True, 4)
        assert config.fastrouter_subscription_server == (TcpAddress("127.0.0.1", 4040),)
        assert config.wsgi_file == "/var/www/myheavyapp.wsgi"


def test_the_shipped_example_configurations_are_valid(tmp_path: Path) -> None:
    """conf/*.ini are what the README tells users to run: they must pass --dry-run (the sockets directories
    their comments say to create first are temporary ones here)."""
    (tmp_path / "example.com").mkdir()
    for ini in sorted((Path(__file__).resolve().parents[2] / "conf").glob("*.ini")):
        assert main(["--dry-run", "--set", f"sockets-dir={tmp_path}", str(ini)]) == 0, ini


def test_the_cache_named_by_fastrouter_use_cache_must_exist() -> None:
    def problem(*argv: str) -> str | None:
        try:
            check_config(load_config(["--fastrouter", "127.0.0.1:0", *argv], {}))
        except ConfigError as exc:
            return str(exc)
        return None

    assert problem("--cache", "10", "--fastrouter-use-cache=default") is None  # --cache's name is "default"
    assert problem("--cache2", "name=c,items=10", "--fastrouter-use-cache=c") is None
    assert problem("--cache2", "name=c,items=10", "--fastrouter-use-cache=default") == (
        "--fastrouter-use-cache=default: no cache has that name"
    )
