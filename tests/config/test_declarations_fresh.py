"""Settings declared and uWSGI's option list read afresh in the test, not at import.

The real options are declared when their modules are imported, and uWSGI's list is read then too; these
tests do both again, so that a change to the declaration code or the reader shows here (tools/mutation runs
each mutant after the imports).
"""

from __future__ import annotations

from uwsgirouter.config import load_config, model, presentation, uwsgi_names
from uwsgirouter.config.converters import BOOL, COUNT, NON_EMPTY
from uwsgirouter.config.setting import PLANNED_NOTE, Arg, Flag, Multi, Scalar
from uwsgirouter.errors import ConfigError


def test_a_setting_takes_its_names_from_the_attribute_and_its_group_from_the_class() -> None:
    class Options:
        GROUP = "Testing"
        max_things = Scalar(COUNT, 4, help="How many.", aliases=("things",), short="m")
        lambda_ = Flag(help="A flag.", arg=Arg.OPTIONAL, implicit="false")
        listed = Multi(NON_EMPTY, help="Each one.", planned=True)

    class Plain:
        enabled = Flag(help="On or off.")

    things, lam, listed = Options.max_things, Options.lambda_, Options.listed
    assert (things.attr, things.name, things.group) == ("max_things", "max-things", "Testing")
    assert things.flags == ["-m", "--max-things", "--things"] and things.env_var == "UWSGI_MAX_THINGS"
    assert (things.help, things.arg, things.planned, things.implicit) == ("How many.", Arg.REQUIRED, False, "true")
    assert (things.converter, things.default, things.resolve(["1", "2"]), things.resolve([])) == (COUNT, 4, 2, 4)
    assert (lam.attr, lam.name, lam.arg, lam.implicit, lam.converter) == (
        "lambda_",
        "lambda",
        Arg.OPTIONAL,
        "false",
        BOOL,
    )
    assert lam.resolve([None]) is False and lam.default is False
    assert (listed.planned, listed.full_help) == (True, f"Each one. {PLANNED_NOTE}")
    assert (listed.converter, listed.default, listed.resolve(["a", "b"])) == (NON_EMPTY, (), ("a", "b"))
    assert Plain.enabled.group == "Plain" and Plain.enabled.arg is Arg.NONE and Plain.enabled.planned is False
    assert Plain.enabled.resolve([None]) is True  # the implicit value of a flag given alone is "true"
    assert Plain.enabled.full_help == "On or off."


def test_a_long_bad_value_is_shown_cut_at_80_characters() -> None:
    class Options:
        count = Scalar(COUNT, 0, help="N.")

    for length, shown in ((80, "x" * 80), (81, "x" * 77 + "...")):
        try:
            Options.count.convert_one("x" * length)
        except ConfigError as exc:
            assert str(exc) == f"invalid value {shown!r} for --count: expected a whole number >= 0 (not a whole number)"
        else:
            raise AssertionError("accepted")


def test_uwsgis_option_list_read_again_is_the_same() -> None:
    by_name, by_short = uwsgi_names._read()
    assert by_name == uwsgi_names.UWSGI_OPTIONS and by_short == uwsgi_names.UWSGI_SHORTS
    socket = by_name["socket"]
    assert (socket.names[0], socket.short, socket.arg) == ("socket", "s", Arg.REQUIRED)
    assert by_short["s"] is socket
    assert by_name["master"].arg is Arg.NONE and by_name["master"].short == "M"
    assert all(option.short is None for name, option in by_name.items() if name == "fastrouter")
    assert len(by_name) > 800 and "#" not in "".join(by_name) and "" not in by_name
    # every alias points at its option; an alias never takes another option's entry
    assert all(name in option.names for name, option in by_name.items())
    assert all(option.short == letter for letter, option in by_short.items())
    assert uwsgi_names.plugin_names(["0:python, x:y:z_plugin.so", "/usr/lib/uwsgi/rack_plugin.so,python"]) == [
        "python",
        "y:z",
        "rack",
    ]


def test_help_is_built_from_the_declarations() -> None:
    text = presentation.build_help_parser().format_help()
    lines = text.splitlines()
    assert lines[0] == "usage: uwsgirouter [OPTIONS] [FILE.ini ...]"
    assert text.count("A drop-in replacement for the uWSGI FastRouter") == 1
    assert "\nRouter:\n" in text and "\nsubscription server:\n".lower() in text.lower()
    assert "  -s ADDR, --socket ADDR, --uwsgi-socket ADDR" in lines  # a required value: its metavar
    assert any(line.startswith("  -M, --master ") for line in lines)  # a flag: no value
    assert "  --fastrouter-use-cache [VALUE]" in lines  # an optional value
    assert "[env var: UWSGI_FASTROUTER]" in " ".join(text.split())
    percent = next(s for s in model.REGISTRY.settings if "%" in s.full_help)
    assert percent.full_help.split("%")[0].split()[-1] in text  # a literal % in help survives formatting
    groups = [line for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert len(groups) == len(set(groups)), "each group once"


def test_registry_read_again_and_lookups() -> None:
    settings = model._declared_settings()
    assert settings == model.REGISTRY.settings
    assert {s.name for s in settings} >= {"fastrouter", "socket", "master", "processes"}
    registry = model.Registry(settings)
    assert registry.lookup("uwsgi-socket") is registry.lookup("socket") is registry.by_short["s"]
    assert registry.suggest("fastroutr") == "fastrouter" and registry.suggest("zzzzzz") is None
    entries = [
        model.Entry("uwsgi-socket", "a:1", "cli"),
        model.Entry("socket", "b:2", "cli"),
        model.Entry("x-y", None, "ini"),
    ]
    assert model.first_value(entries, "socket") == "b:2"  # as written first, then under an alias
    assert model.first_value(entries[:1], "socket") == "a:1"
    assert model.first_value(entries, "master") is None and model.first_value(entries, "x-y") is None
    config = load_config(["--uwsgi-socket", "127.0.0.1:0", "--fastrouter", "127.0.0.1:0"], {})
    assert config.given("socket") and config.given("uwsgi-socket")
    assert not config.given("master") and not config.given("no-such-thing")
