"""tools/bench end to end in its quickest form: both routers measured in one run, every metric with a ratio,
and nothing left behind (no process, no temp dir)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support import NGINX, REPO, UWSGI, WRK, ProcessManager, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(NGINX is None or WRK is None or UWSGI is None, reason="nginx, wrk or uWSGI is not installed"),
]

STRACE = shutil.which("strace")
NUMBER = r"\d+(?:\.\d+)?"


def run_bench(procs: ProcessManager, *args: str) -> str:
    """Run ``python -m tools.bench ARGS`` from the repository root; return what it printed (stdout and stderr)."""
    bench = procs.start([sys.executable, "-m", "tools.bench", "--quick", *args], "bench", cwd=REPO)
    status = bench.wait(90)
    output = bench.log()
    assert status == 0, output
    return output


def metric_rows(output: str, label: str) -> list[tuple[float, float, float]]:
    """(uwsgirouter, uWSGI, ratio) of every table row for ``label``."""
    pattern = re.compile(rf"{re.escape(label)}\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s*$", re.MULTILINE)
    return [(float(a), float(b), float(r)) for a, b, r in pattern.findall(output)]


def assert_cleaned_up(output: str) -> None:
    tmp = re.search(r"logs in (/\S+)", output)
    assert tmp, output
    assert not Path(tmp[1]).exists(), f"{tmp[1]} was left behind"
    # every process the bench starts runs in its temp dir (nginx also names it on its command line)
    left = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if (process.info["cwd"] or "").startswith(tmp[1]) or any(tmp[1] in a for a in process.info["cmdline"] or ()):
            left.append(process)
    for process in left:  # each in its own session: stop them all before failing
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert not left, f"processes of the bench outlived it: {left}"


def test_quick_run_reports_both_routers_with_ratios(procs: ProcessManager) -> None:
    output = run_bench(
        procs,
        *("--rounds", "1", "--duration", "1", "--warmup", "0", "--threads", "1"),
        *("--workloads", "get12,seq12", "--sequential-requests", "2000"),
    )
    assert re.search(r"workload\s+metric\s+uwsgirouter\s+uWSGI 2\.0\.31\s+ratio", output), output
    assert "wrk -t1 -c32" in output and "sequential: one client, 2000 requests" in output, output
    # the header names the uwsgirouter build that ran (its --version line)
    version = subprocess.run([Path(sys.executable).parent / "uwsgirouter", "--version"], capture_output=True, text=True)
    assert version.stdout.strip().splitlines()[0] in output, output
    # one row per table (the 12-byte GET through wrk, then the sequential one), each router's median and the ratio
    for label in ("req/s", "router CPU system us/req", "router CPU total us/req"):
        rows = metric_rows(output, label)
        assert len(rows) == 2, (label, output)
        for a, b, ratio in rows:
            assert a > 0 and b > 0 and ratio == pytest.approx(a / b, rel=0.1, abs=0.01), (label, output)
    assert len(re.findall(r"router CPU user us/req", output)) == 2, output
    assert_cleaned_up(output)


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_strace_counts_system_calls_per_request(procs: ProcessManager, tmp_path: Path) -> None:
    assert STRACE is not None  # the skipif above
    sleeper = procs.start(["sleep", "0.5"], "sleeper")
    probe = subprocess.run([STRACE, "-o", "/dev/null", "-p", str(sleeper.pid)], capture_output=True, timeout=30)
    if probe.returncode != 0:
        # not a missing tool (the CI policy would fail a skip naming it): the kernel forbids attaching
        pytest.skip(f"ptrace may not attach to another process here (probe status {probe.returncode})")
    wait_until(lambda: not sleeper.alive(), 10, what="the sleeper")
    output = run_bench(
        procs,
        *("--rounds", "1", "--duration", "1", "--warmup", "0", "--threads", "1", "--workloads", "get12,seq12"),
        *("--sequential-requests", "1000", "--strace", "--strace-duration", "1"),
    )
    rows = metric_rows(output, "syscalls/req (strace)")
    assert len(rows) == 2, output
    # a proxied request takes at least an accept, a connect, reads, writes and two closes on each router
    for a, b, _ratio in rows:
        assert 6 < a < 200 and 6 < b < 200, output
    assert "system calls per request, most frequent first" in output, output
    assert re.search(rf"^\s+close\s+{NUMBER}\s+{NUMBER}", output, re.MULTILINE), output
    assert_cleaned_up(output)
