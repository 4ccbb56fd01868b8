"""scripts/check_claims.py on a small fake repository: every table row must name a test, and each named test must
exist (file, function, class method, parametrized id, ``-k`` word); one ``file:line`` line per problem."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_claims.py"

TEST_FILE = """
import pytest

def helper():
    pass

def test_one():
    pass

@pytest.mark.parametrize("x", [1, 2])
def test_two(x):
    pass

class TestGroup:
    def test_three(self):
        pass
"""

DOCUMENT = """
# Claims

Text outside tables: `tests/unit/test_gone.py::test_nothing` is not checked.

| claim | uWSGI | ours |
|---|---|---|
| Good | a | b. Tests: `tests/unit/test_fake.py::test_one`, `tests/unit/test_fake.py::test_two[1]`. |
| Class and -k | a | `tests/unit/test_fake.py::TestGroup::test_three`, `tests/unit/test_fake.py -k "two or thr"` |
| Untested | a | b |
| Missing function | a | `tests/unit/test_fake.py::test_four` |
| Missing file | a | `tests/unit/test_gone.py::test_one` |
| Helper is no test | a | `tests/unit/test_fake.py::helper` |
| No match for -k | a | `tests/unit/test_fake.py -k five` |

| a second table | tests |
|:---|---|
| Row | `tests/unit/test_fake.py` |
"""


def run(root: Path, *documents: str) -> tuple[int, list[str]]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *documents],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr == ""
    return result.returncode, result.stdout.splitlines()


def fake_repository(root: Path, document: str = DOCUMENT) -> None:
    (root / "tests" / "unit").mkdir(parents=True)
    (root / "tests" / "unit" / "test_fake.py").write_text(TEST_FILE)
    (root / "docs").mkdir()
    (root / "docs" / "claims.md").write_text(textwrap.dedent(document).lstrip("\n"))


def test_each_problem_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    fake_repository(tmp_path)
    code, lines = run(tmp_path, "docs/claims.md")
    assert code == 1
    assert lines == [
        "docs/claims.md:9: the row 'Untested' names no test (`tests/...py::test_name`)",
        "docs/claims.md:10: tests/unit/test_fake.py::test_four: no such test in the file",
        "docs/claims.md:11: tests/unit/test_gone.py: no such test file",
        "docs/claims.md:12: tests/unit/test_fake.py::helper: no such test in the file",
        "docs/claims.md:13: tests/unit/test_fake.py -k five: no test of the file matches",
    ]


def test_a_document_whose_rows_all_name_existing_tests_passes(tmp_path: Path) -> None:
    good = "| claim | tests |\n|---|---|\n| One | `tests/unit/test_fake.py::test_one` |\n"
    fake_repository(tmp_path, good)
    assert run(tmp_path, "docs/claims.md") == (0, [])


def test_a_missing_document_or_one_without_a_table_is_a_problem(tmp_path: Path) -> None:
    fake_repository(tmp_path, "# no table here\n")
    code, lines = run(tmp_path, "docs/claims.md", "docs/absent.md")
    assert code == 1
    assert lines == ["docs/claims.md:0: no claim table found", "docs/absent.md:0: no such document"]


def test_the_project_s_own_documents_pass() -> None:
    code, lines = run(SCRIPT.parents[1])
    assert (code, lines) == (0, [])
