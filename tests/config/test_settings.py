"""The setting declarations: registry invariants, defaults, aliases, coverage of the reference, generated docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from uwsgirouter.address import TcpAddress, UnixAddress
from uwsgirouter.config import REGISTRY, Config, Entry, load_config, render_options_markdown
from uwsgirouter.config.converters import POSITIVE
from uwsgirouter.config.model import Registry
from uwsgirouter.config.setting import PLANNED_NOTE, Arg, Flag, Multi, Scalar, Setting

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "uwsgi-fastrouter.md"
OPTIONS_DOC = ROOT / "docs" / "options.md"
UWSGI = Path(sys.executable).with_name("uwsgi")

#: Options uwsgirouter adds to uWSGI 2.0.31 (docs/differences.md lists the two 2.1 ones we adopt).
NOT_IN_UWSGI_2_0 = {"fastrouter-max-retries", "fastrouter-force-key", "subscription-max-nodes", "subscription-max-keys"}
UWSGIROUTER_ONLY = {"dry-run"}


def every_name() -> list[str]:
    return [name for setting in REGISTRY.settings for name in (setting.name, *setting.aliases)]


def load(*argv: str) -> Config:
    return load_config(list(argv), {})


# --- registry invariants ------------------------------------------------------------------------------------


def test_registry_is_not_empty() -> None:
    assert len(REGISTRY.settings) > 50
    assert all(isinstance(setting, Setting) for setting in REGISTRY.settings)


@pytest.mark.parametrize("setting", REGISTRY.settings, ids=lambda s: s.name)
def test_every_setting_is_fully_described(setting: Setting[Any]) -> None:
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", setting.name)
    assert setting.help.strip() == setting.help
    assert len(setting.help) > 10
    assert setting.help[0].isupper()
    assert setting.help.endswith((".", ")"))
    assert setting.env_var == "UWSGI_" + setting.name.upper().replace("-", "_")
    assert setting.group
    assert setting.converter.expected
    assert setting.converter.metavar
    assert setting.flags[0 if setting.short is None else 1] == f"--{setting.name}"
    if setting.planned:
        assert setting.full_help == f"{setting.help} {PLANNED_NOTE}"
    else:
        assert setting.full_help == setting.help
    for alias in setting.aliases:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", alias)
    if setting.short is not None:
        assert len(setting.short) == 1
        assert setting.short.isalpha()


def test_names_aliases_and_short_letters_are_unique() -> None:
    names = every_name()
    assert len(names) == len(set(names))
    shorts = [s.short for s in REGISTRY.settings if s.short]
    assert len(shorts) == len(set(shorts))
    env_vars = [s.env_var for s in REGISTRY.settings]
    assert len(env_vars) == len(set(env_vars))
    assert set(REGISTRY.by_name) == set(names)
    assert set(REGISTRY.by_short) == set(shorts)


def test_no_alias_maps_to_another_settings_environment_variable() -> None:
    # UWSGI_<ALIAS> also works (env names become option names); it must not shadow another setting.
    for setting in REGISTRY.settings:
        for alias in setting.aliases:
            assert REGISTRY.lookup(alias) is setting


def test_registry_refuses_duplicates() -> None:
    class One:
        GROUP = "test"
        first = Flag(help="First.", aliases=["both"], short="x")
        second = Flag(help="Second.", aliases=["both"])
        third = Flag(help="Third.", short="x")

    with pytest.raises(RuntimeError, match="option both declared twice"):
        Registry([One.first, One.second])
    with pytest.raises(RuntimeError, match="short option -x declared twice"):
        Registry([One.first, One.third])


def test_setting_names_come_from_the_attribute() -> None:
    class Named:
        GROUP = "Named group"
        some_option_ = Scalar(POSITIVE, 1, help="Some.")

    assert (Named.some_option_.name, Named.some_option_.attr, Named.some_option_.group) == (
        "some-option",
        "some_option_",
        "Named group",
    )
    assert REGISTRY.lookup("import") is Config.import_


@pytest.mark.parametrize("setting", REGISTRY.settings, ids=lambda s: s.name)
def test_every_setting_is_an_attribute_of_config_with_its_default(setting: Setting[Any]) -> None:
    config = Config()
    assert getattr(config, setting.attr) == setting.default
    assert getattr(Config, setting.attr) is setting
    assert not config.given(setting.name)
    if isinstance(setting, Multi):
        assert setting.default == ()
    if isinstance(setting, Flag):
        assert setting.default is False


def test_flag_kinds() -> None:
    assert Config.master.arg is Arg.NONE
    assert Config.fastrouter_quiet.arg is Arg.REQUIRED  # as in uWSGI: --fastrouter-quiet=1
    assert Config.auto_weight.arg is Arg.REQUIRED
    assert Config.need_app.arg is Arg.OPTIONAL
    assert Config.chmod_socket.arg is Arg.OPTIONAL
    assert Config.fastrouter_use_cache.arg is Arg.OPTIONAL
    assert Config.fastrouter_use_socket.arg is Arg.OPTIONAL
    assert Config.socket.arg is Arg.REQUIRED


# --- defaults -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        ("fastrouter_timeout", 60),
        ("fastrouter_events", 0),
        ("fastrouter_gracetime", 30),
        ("fastrouter_max_retries", 3),
        ("fastrouter_processes", 1),
        ("fastrouter_post_buffering", 0),
        ("fastrouter_harakiri", 0),
        ("subscription_tolerance", 17),
        ("subscription_algo", "wrr"),
        ("subscribe_freq", 10),
        ("subscriptions_sign_check_tolerance", 60),
        ("weight", 0),
        ("buffer_size", 4096),
        ("fastrouter_buffer_size", 4096),
        ("processes", 1),
        ("listen", 100),
        ("socket_timeout", 4),
        ("cache", 0),
        ("cache_blocksize", 65536),
        ("reload_mercy", 60),
        ("worker_reload_mercy", 60),
        ("callable", "application"),
        ("master", False),
        ("fastrouter_cheap", False),
        ("fastrouter_quiet", False),
        ("fastrouter", ()),
        ("fastrouter_to", ()),
        ("fastrouter_use_base", None),
        ("fastrouter_use_pattern", None),
        ("fastrouter_use_cache", None),
        ("fastrouter_use_socket", None),
        ("fastrouter_stats", None),
        ("chmod_socket", None),
    ],
)
def test_defaults(attr: str, expected: object) -> None:
    assert getattr(Config(), attr) == expected


def test_values_are_typed() -> None:
    config = load("--fastrouter", ":3017", "--fastrouter-timeout", "5", "--fastrouter-stats", "/tmp/stats.sock")
    assert config.fastrouter == (TcpAddress("", 3017),)
    assert config.fastrouter_timeout == 5
    assert config.fastrouter_stats == UnixAddress("/tmp/stats.sock")
    config = load("--cache2", "name=a,items=10", "--subscribe2", "server=:1,key=k", "--env", "A=1")
    assert config.cache2 == ({"name": "a", "items": "10"},)
    assert config.subscribe2 == ({"server": ":1", "key": "k"},)
    assert config.env == (("A", "1"),)
    assert load("--fastrouter-use-code-string", "0:mapper.py:get").fastrouter_use_code_string == (0, "mapper.py", "get")


def test_scalars_last_wins_and_lists_accumulate() -> None:
    config = Config(
        [
            Entry("processes", "2", "a"),
            Entry("workers", "5", "b"),
            Entry("socket", ":1", "a"),
            Entry("uwsgi-socket", ":2", "b"),
            Entry("master", None, "a"),
            Entry("master", "off", "b"),
        ]
    )
    assert config.processes == 5
    assert config.socket == (TcpAddress("", 1), TcpAddress("", 2))
    assert config.master is False
    assert config.first("processes") == "2"
    assert config.first("workers") == "5"  # a name as written wins over its aliases
    assert config.given("processes")
    assert config.given("workers")
    assert not config.given("fastrouter")


def test_config_keeps_unknown_entries_as_placeholders() -> None:
    config = Config([Entry("my-place", "x", "test")])
    assert config.first("my-place") == "x"
    assert config.first("other-place") is None
    assert config.entries == (Entry("my-place", "x", "test"),)


# --- aliases ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("fastrouter-workers", "fastrouter-processes"),
        ("fastrouter-ss", "fastrouter-stats"),
        ("fastrouter-stats-server", "fastrouter-stats"),
        ("st", "subscribe-to"),
        ("subscribe", "subscribe-to"),
        ("pyimport", "import"),
        ("py-import", "import"),
        ("python-import", "import"),
        ("shared-pyimport", "shared-import"),
        ("file", "wsgi-file"),
        ("uwsgi-socket", "socket"),
        ("workers", "processes"),
        ("wsgi", "module"),
        ("chmod", "chmod-socket"),
        ("usage", "help"),
    ],
)
def test_long_aliases_resolve(alias: str, name: str) -> None:
    setting = REGISTRY.lookup(alias)
    assert setting is not None
    assert setting is REGISTRY.lookup(name)
    assert setting.name == name
    assert f"--{alias}" in setting.flags


@pytest.mark.parametrize(
    ("letter", "name"),
    [
        ("M", "master"),
        ("p", "processes"),
        ("s", "socket"),
        ("w", "module"),
        ("S", "set"),
        ("C", "chmod-socket"),
        ("h", "help"),
        ("d", "daemonize"),
        ("t", "harakiri"),
        ("T", "enable-threads"),
        ("L", "disable-logging"),
        ("b", "buffer-size"),
        ("v", "max-vars"),
        ("l", "listen"),
        ("z", "socket-timeout"),
    ],
)
def test_short_letters_resolve(letter: str, name: str) -> None:
    assert REGISTRY.by_short[letter].name == name
    assert REGISTRY.by_short[letter].flags[0] == f"-{letter}"


def test_aliases_work_when_loading() -> None:
    config = load(
        "--fastrouter-workers", "3", "--fastrouter-ss", ":9191", "--st", "127.0.0.1:7000:a.com",
        "--subscribe", "127.0.0.1:7000:b.com", "--pyimport", "fill", "-w", "app:application",
        "--file", "app.wsgi", "-s", "/tmp/a.sock", "--uwsgi-socket", "/tmp/b.sock",
    )  # fmt: skip
    assert config.fastrouter_processes == 3
    assert config.fastrouter_stats == TcpAddress("", 9191)
    assert config.subscribe_to == ("127.0.0.1:7000:a.com", "127.0.0.1:7000:b.com")
    assert config.import_ == ("fill",)
    assert config.module == "app:application"
    assert config.wsgi_file == "app.wsgi"
    assert config.socket == (UnixAddress("/tmp/a.sock"), UnixAddress("/tmp/b.sock"))


def test_aliases_work_in_ini_files_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "alias.ini"
    path.write_text("[uwsgi]\nfastrouter-workers = 4\nst = 127.0.0.1:7000:x.com\nfile = app.wsgi\n", encoding="utf-8")
    config = load_config([str(path)], {"UWSGI_UWSGI_SOCKET": "/tmp/c.sock"})
    assert config.fastrouter_processes == 4
    assert config.subscribe_to == ("127.0.0.1:7000:x.com",)
    assert config.wsgi_file == "app.wsgi"
    assert config.socket == (UnixAddress("/tmp/c.sock"),)


# --- coverage of the reference ------------------------------------------------------------------------------

REFERENCE_SECTIONS = ("2.4", "2.5", "2.6", "3.3", "3.7", "4.1", "4.2", "4.3", "5")
#: Named in 3.7 as 2.1-only and absent from 2.0.31; we adopt only force-key and max-retries (docs/differences.md).
REFERENCE_2_1_ONLY = {"fastrouter-defer-connect-timeout", "fastrouter-emperor-socket"}


def _reference_sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    for chunk in re.split(r"(?m)^(?=#{2,4} )", text):
        match = re.match(r"#{2,4} (\d+(?:\.\d+)*)\.? ", chunk)
        if match:
            sections[match.group(1)] = chunk
    return sections


def _options_named(section: str) -> set[str]:
    """``--name`` tokens, ``--a[-b]`` optional suffixes, and 3.7's ``/ -suffix`` shorthands for fastrouter-*."""
    names = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)", section))
    for base, suffix in re.findall(r"--([a-z][a-z0-9-]*)\[(-[a-z0-9-]+)\]", section):
        names.add(base + suffix)
    for suffix in re.findall(r"(?:`|/)-([a-z][a-z0-9]+(?:-[a-z0-9]+)*)", section):
        names.add("fastrouter-" + suffix)
    return names


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"{REFERENCE} is not available")
def test_every_option_named_in_the_reference_is_declared() -> None:
    sections = _reference_sections(REFERENCE.read_text(encoding="utf-8"))
    named: set[str] = set()
    for number, text in sections.items():
        if any(number == wanted or number.startswith(wanted + ".") for wanted in REFERENCE_SECTIONS):
            named |= _options_named(text)
    # The extraction itself must have found the tables (so an empty set cannot pass).
    assert {"subscribe-to", "subscribe2", "fastrouter-use-cache", "fastrouter-workers", "fastrouter-ss"} <= named
    assert {"shared-socket", "procname-prefix-spaced", "die-on-term", "cache2", "fastrouter-gid"} <= named
    assert named >= REFERENCE_2_1_ONLY
    missing = sorted(name for name in named - REFERENCE_2_1_ONLY if REGISTRY.lookup(name) is None)
    assert missing == []


@pytest.mark.skipif(not UWSGI.is_file(), reason=f"no uWSGI binary at {UWSGI}")
def test_names_and_short_letters_match_uwsgi_2_0() -> None:
    result = subprocess.run([str(UWSGI), "--help"], capture_output=True, text=True, timeout=3, check=False)
    text = result.stdout + result.stderr
    known = set(re.findall(r"(?m)^\s+(?:-[A-Za-z]\|)?--([a-z0-9][a-z0-9-]*)", text))
    shorts = {name: letter for letter, name in re.findall(r"(?m)^\s+-([A-Za-z])\|--([a-z0-9-]+)", text)}
    assert len(known) > 500, "could not read uWSGI's --help"
    assert sorted(set(every_name()) - known) == sorted(NOT_IN_UWSGI_2_0 | UWSGIROUTER_ONLY)
    for setting in REGISTRY.settings:
        for name in (setting.name, *setting.aliases):
            assert shorts.get(name) == setting.short, name


# --- generated documentation --------------------------------------------------------------------------------


def test_options_doc_is_up_to_date() -> None:
    committed = OPTIONS_DOC.read_text(encoding="utf-8") if OPTIONS_DOC.exists() else ""
    assert committed == render_options_markdown(), (
        "docs/options.md is stale: run `.venv/bin/python scripts/build_options_doc.py`"
    )


def test_options_doc_lists_every_setting() -> None:
    rendered = render_options_markdown()
    for setting in REGISTRY.settings:
        assert f"`--{setting.name}`" in rendered
        assert f"`{setting.env_var}`" in rendered
    assert "| `--fastrouter-timeout` | SECONDS | `60` | `UWSGI_FASTROUTER_TIMEOUT` |" in rendered
    assert "| `-M`, `--master` | flag | off | `UWSGI_MASTER` |" in rendered
    assert "| `-C`, `--chmod-socket`, `--chmod` | [=MODE] | (unset) | `UWSGI_CHMOD_SOCKET` |" in rendered
