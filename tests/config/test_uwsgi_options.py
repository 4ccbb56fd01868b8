"""Real uWSGI options uwsgirouter lacks are named (warned about or refused), plugins, and broken INI lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from uwsgirouter.cli import main
from uwsgirouter.config import load_config
from uwsgirouter.config.setting import Arg
from uwsgirouter.config.uwsgi_names import UWSGI_OPTIONS, plugin_names

ROOT = Path(__file__).resolve().parents[2]
UWSGI = Path(sys.executable).with_name("uwsgi")


def warnings_of(*argv: str | Path, environ: dict[str, str] | None = None) -> list[str]:
    found: list[str] = []
    load_config([str(a) for a in argv], environ or {}, warn=found.append)
    return found


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.skipif(not UWSGI.is_file(), reason=f"no uWSGI binary at {UWSGI}")
def test_the_uwsgi_options_file_is_current() -> None:
    script = ROOT / "scripts" / "build_uwsgi_options.py"
    result = subprocess.run([sys.executable, script, "--check", "--uwsgi", UWSGI], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_options_file_knows_aliases_and_value_kinds() -> None:
    assert UWSGI_OPTIONS["workers"] is UWSGI_OPTIONS["processes"]
    assert UWSGI_OPTIONS["ifenv"].names == ("if-env", "ifenv")
    assert UWSGI_OPTIONS["if-not-env"] is not UWSGI_OPTIONS["if-env"]  # same --help text, not an alias
    assert UWSGI_OPTIONS["stats"].arg is Arg.REQUIRED
    assert UWSGI_OPTIONS["thunder-lock"].arg is Arg.NONE
    assert UWSGI_OPTIONS["logdate"].arg is Arg.OPTIONAL
    assert "route" in UWSGI_OPTIONS  # compiled only with PCRE: added by the script


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--stats-pusher-default-freq", "3", "--stats-pusher-default-freq", "4"], {}),
        (["--stats-pushers-default-freq=3"], {}),
        ([], {"UWSGI_STATS_PUSHER_DEFAULT_FREQ": "3"}),
    ],
)
def test_a_uwsgi_option_we_lack_is_named_once_and_ignored(argv: list[str], environ: dict[str, str]) -> None:
    found = warnings_of(*argv, environ=environ)
    assert len(found) == 1
    assert found[0].startswith("uWSGI option --stats-pusher")
    assert found[0].endswith("not implemented by uwsgirouter: ignored")


def test_a_uwsgi_option_in_an_ini_file_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "site.ini", "[uwsgi]\ncpu-affinity = 2\nreaper = true\nprocesses = 2\n")
    assert warnings_of(path) == [
        f"uWSGI option --cpu-affinity ({path} [uwsgi]) is not implemented by uwsgirouter: ignored",
        f"uWSGI option --reaper ({path} [uwsgi]) is not implemented by uwsgirouter: ignored",
    ]
    assert load_config([str(path)], {}, warn=lambda _: None).first("cpu-affinity") == "2"  # still a placeholder


def test_command_line_uwsgi_options_take_their_value_as_uwsgi_does() -> None:
    config = load_config(
        ["--thunder-lock", "--stats-push", "statsd:127.0.0.1:8125", "-p", "3"], {}, warn=lambda _: None
    )
    assert config.processes == 3
    assert config.first("stats-push") == "statsd:127.0.0.1:8125"


@pytest.mark.parametrize("name", ["http", "http-socket", "https", "ssl-socket", "route", "mount", "xml"])
def test_options_whose_absence_matters_are_refused(capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, err = run(capsys, "--dry-run", f"--{name}=x", "--stats", ":1")
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"uwsgirouter: uWSGI option --{name} (command line) is not supported by uwsgirouter: ")


def test_refused_options_in_ini_files_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "e.ini", "[uwsgi]\nhttp = :80\n")
    code, err = run(capsys, "--dry-run", path)
    assert (code, err.count("\n")) == (2, 1)
    assert f"--http ({path} [uwsgi])" in err


def test_strict_refuses_typos_but_only_warns_for_uwsgi_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = write(tmp_path / "r.ini", "[uwsgi]\nstrict = true\nksm = true\n")
    code, err = run(capsys, "--dry-run", real)
    assert code == 0
    assert err == f"uwsgirouter: uWSGI option --ksm ({real} [uwsgi]) is not implemented by uwsgirouter: ignored\n"
    typo = write(tmp_path / "t.ini", "[uwsgi]\nstrict = true\nproceses = 2\n")
    code, err = run(capsys, "--dry-run", typo)
    assert code == 2
    assert "unknown option 'proceses'" in err and "did you mean --processes?" in err


def test_non_uwsgi_keys_stay_silent_placeholders(tmp_path: Path) -> None:
    path = write(tmp_path / "p.ini", "[uwsgi]\nmy-base = /srv\nfastrouter-use-base = %(my-base)/\n")
    assert warnings_of(path) == []


@pytest.mark.parametrize("value", ["python3", "python", "0:python", "corerouter,fastrouter", "python311,fastrouter"])
def test_built_in_plugins_are_accepted_silently(value: str) -> None:
    assert warnings_of("--plugins", value, "--need-plugin", value, "--plugins-dir", "/usr/lib/uwsgi") == []


def test_other_plugins_are_named_in_one_line() -> None:
    found = warnings_of("--plugin", "python3,http", "--need-plugins", "gevent_plugin.so,http")
    assert found == ["uWSGI plugins not available in uwsgirouter, ignored: http, gevent"]


def test_plugin_names_as_uwsgi_reads_them() -> None:
    assert plugin_names(["0:python, 9:rack", "/usr/lib/uwsgi/cgi_plugin.so"]) == ["python", "rack", "cgi"]


def test_protocol_uwsgi_is_accepted_and_others_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert warnings_of("--protocol", "uwsgi", "--socket-protocol=uwsgi") == []
    code, err = run(capsys, "--dry-run", "--protocol", "http")
    assert code == 2 and "--protocol" in err


def test_ini_line_without_equals_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "n.ini", "[uwsgi]\nmaster\nfastrouter 127.0.0.1:3017\n")
    assert warnings_of(path) == [f"{path}:3: 'fastrouter 127.0.0.1:3017' has no '=': ignored (write KEY = VALUE)"]


def test_broken_section_header_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "b.ini", "[uwsgi]\nprocesses = 2\n[broken\nprocesses = 3\n")
    found: list[str] = []
    config = load_config([str(path)], {}, warn=found.append)
    assert config.processes == 2  # as uWSGI: the lines after the broken header belong to section 'broke'
    assert found == [f"{path}:3: section header '[broken' has no closing ']': the lines after it are ignored"]


def test_broken_ini_lines_are_errors_under_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "s.ini", "[uwsgi]\nstrict = true\nfastrouter 127.0.0.1:3017\n")
    code, err = run(capsys, "--dry-run", path)
    assert (code, err.count("\n")) == (2, 1)
    assert f"{path}:3: 'fastrouter 127.0.0.1:3017' has no '='" in err
