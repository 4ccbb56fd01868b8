"""``python -m tools.bench`` from the repository root; switches to the repository's .venv when run by another
Python (psutil, uWSGI and uwsgirouter live there)."""

import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parents[2] / ".venv"

if Path(sys.prefix).resolve() != VENV.resolve() and (VENV / "bin" / "python").exists():
    if os.environ.get("UWSGIROUTER_BENCH_REEXEC"):
        sys.exit(f"bench: could not switch to {VENV / 'bin' / 'python'}")
    os.environ["UWSGIROUTER_BENCH_REEXEC"] = "1"
    os.execv(VENV / "bin" / "python", [str(VENV / "bin" / "python"), "-m", "tools.bench", *sys.argv[1:]])

from tools.bench.cli import entry  # noqa: E402

entry()
