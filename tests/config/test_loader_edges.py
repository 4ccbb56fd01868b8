"""The loader's edges in process: where each command-line entry comes from, the bounds on INI includes and
substitutions, the arithmetic of ``%(...)`` expressions and the warnings for unknown INI keys (tools/mutation
showed these were not pinned down)."""

from __future__ import annotations

from pathlib import Path

import pytest

from uwsgirouter.config import Entry, load_config, load_entries
from uwsgirouter.config.loader import MAX_INI_DEPTH, MAX_INI_LOADS
from uwsgirouter.errors import ConfigError


def entries_of(*argv: str, environ: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    return [(e.key, e.value) for e in load_entries(list(argv), environ or {}, warn=lambda _: None)]


def refusal(*argv: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_entries(list(argv), environ or {}, warn=lambda _: None)
    return str(info.value)


def test_every_command_line_form_is_from_the_command_line() -> None:
    # -M (a flag), -C660 (an optional value attached), -p4 and -p 5, --master, -i and -x (uWSGI's, not ours)
    entries = load_entries(["-M", "-C660", "-p4", "-p", "5", "--master", "-i", "-x", "f.xml"], {})
    assert entries == [
        Entry("master", None, "command line"),
        Entry("chmod-socket", "660", "command line"),
        Entry("processes", "4", "command line"),
        Entry("processes", "5", "command line"),
        Entry("master", None, "command line"),
        Entry("single-interpreter", None, "command line"),
        Entry("xmlconfig", "f.xml", "command line"),
    ]
    assert refusal("-") == "unable to load configuration from -: positional arguments must be .ini files"


def test_a_value_is_not_taken_from_the_next_option_even_one_of_uwsgirouter_only() -> None:
    assert refusal("--processes", "--dry-run") == "option --processes requires a value (write --processes=VALUE)"
    assert refusal("-p", "--dry-run") == "option -p (--processes) requires a value"
    assert entries_of("--processes", "--dry-runs") == [("processes", "--dry-runs")]


def test_environment_names_need_more_than_the_prefix() -> None:
    environ = {"UWSGI_A": "1", "UWSGI_": "2", "UWSGI_RELOADS": "3"}
    assert load_entries([], environ) == [Entry("a", "1", "environment UWSGI_A")]


def test_set_splits_at_the_first_equals_sign() -> None:
    assert entries_of("--set", "a=b=c") == [("set", "a=b=c"), ("a", "b=c")]
    assert refusal("--set", "=x") == "--set '=x': expected NAME=VALUE"


def test_arithmetic_in_placeholders() -> None:
    def value(expression: str) -> str | None:
        return load_config(["--procname", expression], {}).procname

    assert value("%(++ 2)") == "2"  # ++ with nothing before it does nothing
    assert value("%(1 ++ 2)") == "22"  # after ++ the next token is concatenated again
    assert value("%(1 + 2 3)") == "33"  # and after an operation
    assert value("%(X5 1)") == "1"  # X5 is not a number: an unknown option, empty
    assert value("a%(nope nada)b") == "ab"
    assert load_config(["--set", "n=1x2", "--procname", "%(n + 1)"], {}).procname == "2"  # strtoll stops at x
    assert value("%(2 * nope)") == "0"  # no number at all is 0
    assert value("%(1000000000000000000 + 0)") == "1000000000000000000"  # 19 digits: still an int64
    assert value("%(99999999999999999999 + 0)") == str(2**63 - 1)


def test_nested_parentheses_in_placeholder_names() -> None:
    config = load_config(
        ["--set", "k(x)=1", "--set", "k((x))=2", "--set", "(a)=3", "--procname", "%(k(x))%(k((x)))%((a))"], {}
    )
    assert config.procname == "123"


def test_substitution_restarts_after_each_replacement_and_skips_unknown_names() -> None:
    # procname comes first: its %(a) gives %(b), which is substituted in turn
    config = load_config(["--procname", "%(a)", "--set", "a=%(b)", "--set", "b=7"], {})
    assert config.procname == "7"
    assert load_config(["--procname", "%(nope)%(processes)", "-p", "2"], {}).procname == "%(nope)2"


def test_a_value_that_refers_to_itself_stops() -> None:
    long = "x" * 70
    message = refusal("--set", f"a={long}%(a)")
    # the --set entry itself comes first
    assert message == f"too many substitutions in {('a=' + long)[:60]!r} (does a value refer to itself?)"


def test_the_expansion_budget_counts_growth_only() -> None:
    # two values that shrink nothing and grow by one character each: far from the budget
    big = "a" * 600_000 + "$(X)"
    entries = load_entries(["--procname", big, "--procname-prefix", big], {"X": "bc"})
    assert [len(e.value or "") for e in entries] == [600_002, 600_002]


def test_ini_files_include_each_other_up_to_the_depth_bound(tmp_path: Path) -> None:
    def chain(length: int) -> Path:
        for i in range(length):
            nxt = f"ini = {tmp_path}/f{i + 1}.ini\n" if i + 1 < length else "processes = 2\n"
            (tmp_path / f"f{i}.ini").write_text(f"[uwsgi]\n{nxt}")
        return tmp_path / "f0.ini"

    assert ("processes", "2") in entries_of(str(chain(MAX_INI_DEPTH)))
    last = tmp_path / f"f{MAX_INI_DEPTH}.ini"
    assert refusal(str(chain(MAX_INI_DEPTH + 1))) == (
        f"{last}: INI files include each other more than {MAX_INI_DEPTH} levels deep"
    )


def test_ini_files_loaded_in_all_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "b.ini").write_text("[uwsgi]\n")
    main = tmp_path / "main.ini"
    main.write_text("[uwsgi]\n" + f"ini = {tmp_path}/b.ini\n" * (MAX_INI_LOADS - 1))
    assert len(entries_of(str(main))) == MAX_INI_LOADS - 1
    main.write_text("[uwsgi]\n" + f"ini = {tmp_path}/b.ini\n" * MAX_INI_LOADS)
    assert refusal(str(main)) == (
        f"{tmp_path}/b.ini: more than {MAX_INI_LOADS} INI files or sections loaded (do includes multiply?)"
    )


def test_unknown_ini_keys_near_an_option_are_named_once(tmp_path: Path) -> None:
    path = tmp_path / "a.ini"
    # thrads without '=' is a broken line (one warning, no hint); thrds is too far from threads for a hint;
    # dry-run is uwsgirouter's own option
    path.write_text("[uwsgi]\nthrads\nthrds = 2\ndry-run = 1\nprocesess = 2\n")
    warnings: list[str] = []
    entries = load_entries([str(path)], {}, warnings.append)
    assert [e.key for e in entries] == ["thrads", "thrds", "dry-run", "procesess"]
    assert warnings == [
        f"unknown option 'procesess' in {path} (did you mean processes?); kept as a placeholder",
        f"{path}:2: 'thrads' has no '=': ignored (write KEY = VALUE)",
    ]


def test_a_file_included_outside_a_block_has_blocks_of_its_own(tmp_path: Path) -> None:
    inner = tmp_path / "inner.ini"
    inner.write_text("[uwsgi]\nif-env = A\nthreads = %(_)\nendif =\n")
    assert entries_of("--ini", str(inner), "--master", environ={"A": "4"}) == [
        ("ini", str(inner)),
        ("threads", "4"),
        ("master", None),
    ]


def test_a_file_included_twice_deep_inside_a_block_is_still_taken_whole(tmp_path: Path) -> None:
    (tmp_path / "b.ini").write_text("[uwsgi]\nendif =\nthreads = 2\n")
    (tmp_path / "a.ini").write_text(f"[uwsgi]\nini = {tmp_path}/b.ini\n")
    entries = entries_of("--if-env", "A", "--ini", f"{tmp_path}/a.ini", "--processes", "%(_)", environ={"A": "3"})
    assert entries[-2:] == [("threads", "2"), ("processes", "3")]


def test_file_substitution_reads_any_bytes_and_names_a_missing_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(b"caf\xc3\xa9 \xff\n")
    assert load_config(["--procname", f"@({raw})"], {}).procname == "café \udcff"
    gone = tmp_path / "gone"
    assert refusal("--procname", f"@({gone})") == f"@({gone}): No such file or directory"
    assert refusal("--procname", f"@({tmp_path})") == f"@({tmp_path}): Is a directory"


def test_a_bare_line_naming_an_option_of_uwsgirouter_only_is_no_problem(tmp_path: Path) -> None:
    path = tmp_path / "a.ini"
    path.write_text("[uwsgi]\ndry-run\n")
    warnings: list[str] = []
    assert load_entries([str(path)], {}, warnings.append) == [Entry("dry-run", "", f"{path} [uwsgi]")]
    assert warnings == []


def test_upper_case_magic_variables_come_from_the_first_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inc.ini").write_text("[uwsgi]\nprocname = %D|%d\n")
    (tmp_path / "sub" / "inc2.ini").write_text("[uwsgi]\nprocname-prefix = %N\n")
    main = tmp_path / "main.ini"
    main.write_text(f"[uwsgi]\nini = {tmp_path}/sub/inc.ini\nini = {tmp_path}/sub/inc2.ini\n")
    config = load_config([str(main)], {})
    assert config.procname == f"{tmp_path}/|{tmp_path}/sub/"
    assert config.procname_prefix == "main"


def test_an_ini_line_with_no_file_is_refused_naming_where_it_is(tmp_path: Path) -> None:
    """uWSGI stops on it ("realpath() of  failed"); it must not reread the last file until the depth limit."""
    ini = tmp_path / "site.ini"
    ini.write_text("[uwsgi]\nini =\nsocket = 127.0.0.1:0\n")
    assert refusal(str(ini)) == f"ini = ({ini} [uwsgi]): no file named"
    assert refusal("--ini", "") == "ini = (command line): no file named"
