#!/usr/bin/env python3
"""Every claim has its test: each row of the claim tables names the tests that guard it, and those tests exist.

The claim tables are every Markdown table in docs/differences.md, docs/signals.md and README.md (its feature
table). A row names its tests as backticked ids: `tests/dir/test_x.py::test_name` (a class's test as
`...::Class::test_name`; a parametrized id's `[...]` is ignored) or `tests/dir/test_x.py -k word` (some test of the
file has ``word`` in its name; `-k "a or b"` wants each word). A row without any id, an id whose file or function
does not exist: one line each, ``file:line: problem``, and exit status 1.

Usage: scripts/check_claims.py [--root DIR] [DOCUMENT ...]   (default: the three documents above, under DIR)
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DOCUMENTS = ("docs/differences.md", "docs/signals.md", "README.md")

#: A backticked test id in a table row.
TEST_ID = re.compile(r"`(tests/[^`\s:]+\.py)(?:::([^`\s]+)|\s+-k\s+\"?([^`\"]+)\"?)?`")
SEPARATOR = re.compile(r"^\|\s*:?-{3,}")


@dataclass(frozen=True)
class Row:
    """One body row of a Markdown table: where it is, its first cell (the claim's name) and its whole text."""

    document: str
    line: int
    name: str
    text: str


def table_rows(path: Path, shown_as: str) -> Iterator[Row]:
    """The body rows of every table in ``path`` (the header row and the ``|---|`` line are not claims)."""
    in_table = False
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped.startswith("|"):
            in_table = False
            continue
        if SEPARATOR.match(stripped):
            in_table = True
            continue
        if in_table:
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            yield Row(shown_as, number, cells[0] if cells else "", stripped)


def tests_of(path: Path) -> set[str]:
    """The test ids a file defines: ``name`` for module-level tests, ``Class::name`` for a class's."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            found.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef) and member.name.startswith("test"):
                    found.add(f"{node.name}::{member.name}")
    return found


class Checker:
    """Checks rows against the test files under ``root``, parsing each file once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._parsed: dict[str, set[str] | None] = {}

    def _tests(self, relative: str) -> set[str] | None:
        if relative not in self._parsed:
            path = self.root / relative
            self._parsed[relative] = tests_of(path) if path.is_file() else None
        return self._parsed[relative]

    def problems(self, row: Row) -> list[str]:
        where = f"{row.document}:{row.line}"
        ids = list(TEST_ID.finditer(row.text))
        if not ids:
            return [f"{where}: the row {row.name[:60]!r} names no test (`tests/...py::test_name`)"]
        out: list[str] = []
        for match in ids:
            relative, name, pattern = match.groups()
            defined = self._tests(relative)
            if defined is None:
                out.append(f"{where}: {relative}: no such test file")
            elif name is not None:
                function = name.split("[", 1)[0]
                if function not in defined:
                    out.append(f"{where}: {relative}::{function}: no such test in the file")
            elif pattern is not None:
                for word in (w.strip() for w in pattern.split(" or ")):
                    if not any(word in test for test in defined):
                        out.append(f"{where}: {relative} -k {word}: no test of the file matches")
            elif not defined:
                out.append(f"{where}: {relative}: the file defines no test")
        return out


def check(root: Path, documents: list[str]) -> list[str]:
    checker = Checker(root)
    problems: list[str] = []
    for document in documents:
        path = root / document
        if not path.is_file():
            problems.append(f"{document}:0: no such document")
            continue
        rows = list(table_rows(path, document))
        if not rows:
            problems.append(f"{document}:0: no claim table found")
        for row in rows:
            problems.extend(checker.problems(row))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("documents", nargs="*", default=list(DOCUMENTS))
    args = parser.parse_args(argv)
    problems = check(args.root, args.documents)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
