"""The converters, built afresh in each test: what each accepts, returns and says when it refuses.

(The options' converters are built when the option modules are imported; these tests build their own so that
a change to a converter's code shows here, whatever was imported first.)
"""

from __future__ import annotations

import pytest

from uwsgirouter.config.converters import (
    _code_string,
    _key_value,
    _keyval_list,
    _non_empty,
    _octal_mode,
    choice,
    integer,
    to_bool,
)
from uwsgirouter.config.log_options import CTIME_FORMAT, _log_date


def refused(convert: object, raw: str) -> str:
    with pytest.raises(ValueError) as info:
        convert(raw)  # type: ignore[operator]
    return str(info.value)


def test_integer() -> None:
    convert = integer()
    assert (convert.expected, convert.metavar) == ("a whole number >= 0", "N")
    assert convert(" 0 ") == 0 and convert("42") == 42 and convert(str(2**63 - 1)) == 2**63 - 1
    for raw in ("", "x", "1.5", "1-", "٣", "--1", "-", "-x"):
        assert refused(convert, raw) == "not a whole number"
    assert refused(convert, "-1") == "out of range"
    assert refused(convert, str(2**63)) == "out of range"
    ranged = integer(1, 255, "MODIFIER1")
    assert (ranged.expected, ranged.metavar) == ("a whole number from 1 to 255", "MODIFIER1")
    assert ranged("1") == 1 and ranged("255") == 255
    assert refused(ranged, "0") == "out of range" and refused(ranged, "256") == "out of range"
    assert integer(-5)("-5") == -5
    assert integer(0, 2**62).expected == "a whole number >= 0"
    assert integer(0, 2**62 - 1).expected == f"a whole number from 0 to {2**62 - 1}"


def test_choice() -> None:
    convert = choice("wrr", "lrc", "wlrc")
    assert (convert.expected, convert.metavar) == ("one of wrr, lrc, wlrc", "wrr|lrc|wlrc")
    assert convert("lrc") == "lrc"
    assert refused(convert, "WRR") == "not one of the choices"


def test_text_values() -> None:
    assert _non_empty("x") == "x"
    assert refused(_non_empty, "") == "empty value"
    assert [to_bool(raw) for raw in ("false", " OFF ", "no", "0", "", "1", "yes", "anything")] == [
        False,
        False,
        False,
        False,
        True,
        True,
        True,
        True,
    ]


def test_octal_mode() -> None:
    assert _octal_mode("660") == 0o660 and _octal_mode(" 0777 ") == 0o777 and _octal_mode("7") == 7
    for raw in ("", " ", "8", "66x", "07777"):
        assert refused(_octal_mode, raw) == "not an octal mode"


def test_key_value_and_lists() -> None:
    assert _key_value("A=b=c") == ("A", "b=c") and _key_value("A=") == ("A", "")
    assert refused(_key_value, "A") == "missing '='" and refused(_key_value, "=b") == "missing '='"
    assert _keyval_list("a=1,,b = 2, c=x=y") == {"a": "1", "b": " 2", "c": "x=y"}
    assert _keyval_list(",a=1") == {"a": "1"}
    assert refused(_keyval_list, "a=1,b") == "'b' is not key=value"
    assert refused(_keyval_list, "=1") == "'=1' is not key=value"
    assert refused(_keyval_list, ",,") == "empty"


def test_code_string() -> None:
    assert _code_string("0:/srv/map.py:get") == (0, "/srv/map.py", "get")
    assert _code_string("5:C:/odd:path.py:get") == (5, "C:/odd:path.py", "get")
    for raw in ("0:map.py", "x:map.py:get", ":map.py:get", "0::get", "0:map.py:", "map.py"):
        assert refused(_code_string, raw) == "not MODIFIER1:FILE:FUNCTION"


def test_octal_mode_refuses_letters() -> None:
    assert refused(_octal_mode, "6X0") == "not an octal mode"


def test_log_date_words_in_any_case_or_a_format() -> None:
    # read afresh: the option's converter is built at import
    assert [_log_date(raw) for raw in ("true", " On ", "YES", "1")] == [CTIME_FORMAT] * 4
    assert [_log_date(raw) for raw in ("false", "OFF", " no ", "0")] == [None] * 4
    assert _log_date("%Y-%m-%d ") == "%Y-%m-%d "
