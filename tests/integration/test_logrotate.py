"""scripts/logrotate.d/uwsgirouter run by the real logrotate (its paths moved under a temp dir): the log is
moved away, the router is told, and its next lines go to a new file of the same name."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO, ProcessManager, free_port, request_vars, uwsgi_request, wait_until

pytestmark = pytest.mark.integration

CONF = REPO / "scripts" / "logrotate.d" / "uwsgirouter"


def test_logrotate_moves_the_log_and_the_router_writes_a_new_one(procs: ProcessManager, tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
    if logrotate is None:
        pytest.skip("logrotate is not installed (Debian package logrotate; scripts/install adds it as root)")
    logs, run = tmp_path / "log" / "uwsgirouter", tmp_path / "run"
    logs.mkdir(parents=True)
    (run / "uwsgirouter" / "site").mkdir(parents=True)
    conf = tmp_path / "logrotate.conf"
    conf.write_text(CONF.read_text().replace("/var/log/", f"{tmp_path}/log/").replace("/run/", f"{run}/"))
    conf.chmod(0o644)  # logrotate refuses a configuration others may write
    log_file, pidfile = logs / "site.log", run / "uwsgirouter" / "site" / "router.pid"
    port = free_port()
    procs.router(
        "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", "127.0.0.1:9",
        "--logto", str(log_file), "--pidfile", str(pidfile), wait_for=("127.0.0.1", port),
    )  # fmt: skip
    # serving (the master's signal handlers are installed): a request to a refusing node logs one line
    assert uwsgi_request(("127.0.0.1", port), request_vars(host="before.rotation")).status == 502
    wait_until(lambda: "before.rotation" in log_file.read_text(), 10, what="the first log lines")

    result = subprocess.run(
        [logrotate, "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rotated = logs / "site.log.1"  # delaycompress: the newest rotated file stays uncompressed
    assert "before.rotation" in rotated.read_text()
    wait_until(lambda: log_file.exists() and "graceful reload" in log_file.read_text(), 10, what="a new log file")
    # once the old router worker (which keeps the old file until it leaves) is gone, the new one serves
    wait_until(lambda: "exited" in log_file.read_text(), 15, what="the old router worker to leave")
    assert uwsgi_request(("127.0.0.1", port), request_vars(host="after.rotation")).status == 502
    wait_until(lambda: "after.rotation" in log_file.read_text(), 10, what="the new worker's line")
    assert "after.rotation" not in rotated.read_text()
