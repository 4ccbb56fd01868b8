"""``strict = true`` in INI files like real ones (tests/config/data/strict_*.ini), and the same files without it.

uWSGI 2.0.31 under strict mode exits at the first key that is none of its options ("[strict-mode] unknown
config directive"), and without it keeps any unknown key as a placeholder, silently. uwsgirouter (see
docs/differences.md, "Unknown keys in INI files" and "A uWSGI option uwsgirouter does not implement"): a real
uWSGI option it lacks is warned about and ignored, strict or not (it is no typo); one whose absence would
change what the instance does is refused, strict or not, naming why; a typo is refused under strict with the
suggestion, and without strict kept as a placeholder with a warning carrying the suggestion.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from uwsgirouter.cli import main

DATA = Path(__file__).with_name("data")
HTTP_REFUSAL = "its clients would find nothing listening: uwsgirouter serves the uwsgi protocol only"


def dry_run(capsys: pytest.CaptureFixture[str], name: str) -> tuple[int, list[str]]:
    code = main(["--dry-run", str(DATA / name)])
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err.splitlines()


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_real_uwsgi_option_uwsgirouter_lacks_is_warned_about_strict_or_not(
    capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    path = DATA / f"strict_{mode}_unimplemented.ini"
    assert ("strict = true" in path.read_text()) == (mode == "on")
    assert dry_run(capsys, path.name) == (
        0,
        [
            f"uwsgirouter: uWSGI option --{name} ({path} [uwsgi]) is not implemented by uwsgirouter: ignored"
            for name in ("memory-report", "harakiri-verbose")
        ],
    )


@pytest.mark.parametrize("mode", ["on", "off"])
def test_an_option_whose_absence_changes_behaviour_is_refused_naming_why(
    capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    path = DATA / f"strict_{mode}_refused.ini"
    assert dry_run(capsys, path.name) == (
        2,
        [f"uwsgirouter: uWSGI option --http ({path} [uwsgi]) is not supported by uwsgirouter: {HTTP_REFUSAL}"],
    )


def test_a_typo_is_refused_under_strict_with_the_suggestion_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "strict_on_typo.ini"
    assert dry_run(capsys, path.name) == (
        2,
        [
            f"uwsgirouter: unknown option 'fastrouter-subscription-sever' in {path} [uwsgi] "
            "(did you mean --fastrouter-subscription-server?) (--strict forbids placeholders)"
        ],
    )


def test_without_strict_a_typo_is_a_placeholder_with_a_warning_and_the_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = DATA / "strict_off_typo.ini"
    assert dry_run(capsys, path.name) == (
        0,
        [
            f"uwsgirouter: unknown option 'fastrouter-subscription-sever' in {path} "
            "(did you mean fastrouter-subscription-server?); kept as a placeholder"
        ],
    )
