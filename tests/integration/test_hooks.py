"""uWSGI's hooks in a running router: each phase at its point (as-root and as-user around the privilege drop,
pre-app, master-start, as-gateway in every router process at each spawn), and a failing hook stopping the
instance as uWSGI's "FATAL hook failed" does."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support import ROUTER, ProcessManager, free_port, router_worker, uwsgi_request, wait_until

pytestmark = pytest.mark.integration


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def router_pids(master: int) -> set[str]:
    """The master's router processes (a hook's shell that just exited, not reaped yet, is skipped)."""
    pids = set()
    for child in psutil.Process(master).children():
        try:
            if "fastrouter" in " ".join(child.cmdline()):
                pids.add(str(child.pid))
        except psutil.Error:  # a zombie or gone: not a router
            continue
    return pids


def test_every_phase_runs_at_its_point_and_as_gateway_in_each_router_at_each_spawn(
    procs: ProcessManager, tmp_path: Path
) -> None:
    order, sub, port = tmp_path / "order", tmp_path / "sub", free_port()
    phases = ("as-root", "as-user", "pre-app", "master-start")
    args = [f"--hook-{phase}=appendn:{order} {phase}" for phase in phases]
    proc = procs.router(
        "--master",
        "--fastrouter",
        f"127.0.0.1:{port}",
        "--fastrouter-processes",
        "2",
        "--fastrouter-subscription-server",
        str(sub),
        *args,
        f"--hook-as-gateway=chmod:{sub} 666",
        f"--hook-as-gateway=exec:echo as-gateway $PPID >> {order}",
        wait_for=("127.0.0.1", port),
    )
    assert uwsgi_request(("127.0.0.1", port)).status == 502  # serving (no node for the key)
    first = ["as-root", "as-user", "pre-app"] if os.getuid() == 0 else ["pre-app"]
    wait_until(lambda: len(_lines(order)) == len(first) + 3, what="the master-start and as-gateway hooks")
    lines = _lines(order)
    assert lines[: len(first)] == first  # around the drop, then before any app: in that order, once
    rest = lines[len(first) :]
    assert sorted(line.split()[0] for line in rest) == ["as-gateway", "as-gateway", "master-start"]
    routers = router_pids(proc.pid)
    assert {line.split()[1] for line in rest if line.startswith("as-gateway")} == routers  # one in each router
    assert stat.S_IMODE(sub.stat().st_mode) == 0o666  # what the hosting file's hook is for
    if os.getuid() != 0:
        assert "--hook-as-root and --hook-as-user run only when started as root" in proc.log()
    assert proc.log().count("(as-gateway)...") == 4  # two hooks in each of the two routers
    # a respawned router runs it again, as uWSGI's gateway_respawn does
    os.chmod(sub, 0o600)
    router_worker(proc).kill()
    wait_until(lambda: len(_lines(order)) == len(lines) + 1, what="the respawned router's hook")
    assert _lines(order)[-1].startswith("as-gateway") and stat.S_IMODE(sub.stat().st_mode) == 0o666
    assert sorted(_lines(order)) == sorted([*lines, _lines(order)[-1]])  # the master's phases ran once
    proc.signal(signal.SIGINT)
    assert proc.wait() == 0


def test_a_failing_as_gateway_hook_stops_the_instance_naming_it(procs: ProcessManager, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    proc = procs.router(
        "--master", "--fastrouter", f"127.0.0.1:{free_port()}", f"--hook-as-gateway=chmod:{missing} 666"
    )
    assert proc.wait(15) == 3
    log = proc.log()
    assert (
        f'[fastrouter 1] --hook-as-gateway "chmod:{missing} 666" failed: No such file or directory: {missing}\n' in log
    )
    assert "uwsgirouter: fastrouter 1 could not start (exit status 3); see the log above\n" in log
    assert "respawning" not in log


def test_a_failing_master_hook_stops_the_master_with_one_line(procs: ProcessManager) -> None:
    proc = procs.router("--master", "--fastrouter", f"127.0.0.1:{free_port()}", "--hook-master-start", "exec:exit 7")
    assert proc.wait(15) == 1
    assert proc.log().endswith(
        'uwsgirouter: --hook-master-start "exec:exit 7" failed: command exited with non-zero code: 7\n'
    )
    assert not proc.children()


@pytest.mark.parametrize("hook", ["nosuch:x", "mount:proc /proc proc", "chown:/run/x no-such-user-q root"])
def test_dry_run_refuses_a_hook_uwsgirouter_cannot_run(hook: str) -> None:
    result = subprocess.run(
        [*ROUTER, "--dry-run", "--fastrouter", "127.0.0.1:3017", "--hook-as-gateway", hook],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr.count("\n")) == (2, "", 1)
    assert result.stderr.startswith("uwsgirouter: ") and "--hook-as-gateway" in result.stderr
