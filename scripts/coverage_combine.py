"""Combine the coverage data of a test run, leaving no unreadable data file and printing no warning about one.

The suite SIGKILLs processes on purpose (fault tests, harakiri, the master's kill of stuck workers). A process
killed while coverage writes its ``.coverage.*`` file leaves it empty or half-written; ``coverage combine``
then warns "Couldn't use data file ... isn't a coverage data file" and keeps it, and every later report
warns again. This script reads each data file first, removes the ones that cannot be read (one line counts
them: that data is lost with the process, nothing else is), then combines the rest.

Usage: .venv/bin/python scripts/coverage_combine.py [DATA_FILE]   (default: $COVERAGE_FILE or .coverage)
"""

from __future__ import annotations

import glob
import os
import sys

import coverage


def readable(path: str) -> bool:
    """Whether coverage can read ``path`` as a data file (an empty or torn SQLite file cannot be)."""
    if os.path.getsize(path) == 0:
        return False
    data = coverage.CoverageData(basename=path, warn=lambda *args, **kwargs: None)
    try:
        data.read()
        data.measured_files()
    except Exception:  # coverage.exceptions.DataError, sqlite3.DatabaseError: torn by a SIGKILL
        return False
    return True


def main(argv: list[str]) -> int:
    base = os.path.abspath(argv[0] if argv else os.environ.get("COVERAGE_FILE", ".coverage"))
    parts = sorted(glob.glob(glob.escape(base) + ".*"))
    torn = [path for path in parts if not readable(path)]
    for path in torn:
        os.unlink(path)
    if torn:
        print(f"coverage: {len(torn)} of {len(parts)} data files left unreadable by killed processes, removed")
    if len(parts) > len(torn):
        cov = coverage.Coverage(data_file=base)
        cov.combine(data_paths=[os.path.dirname(base)], keep=False)
        cov.save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
