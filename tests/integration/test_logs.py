"""Log files and rotation: after ``mv router.log router.log.1`` a SIGHUP (``--reload``) makes the master write
a new ``router.log``, and its new workers too."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support import ProcessManager, free_port, request_vars, uwsgi_request, wait_until

pytestmark = pytest.mark.integration


def test_sighup_reopens_the_log_file_after_rotation(procs: ProcessManager, tmp_path: Path) -> None:
    port = free_port()
    log_file = tmp_path / "router.log"
    router = procs.router(
        "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", "127.0.0.1:9", "--logto", str(log_file),
        wait_for=("127.0.0.1", port),
    )  # fmt: skip
    # serving (the master's signal handlers are installed): a request to the refusing node is answered
    assert uwsgi_request(("127.0.0.1", port), request_vars(host="before.rotation")).status == 502
    wait_until(lambda: "before.rotation" in log_file.read_text(), 10, what="the first log lines")
    rotated = tmp_path / "router.log.1"
    log_file.rename(rotated)
    router.signal(signal.SIGHUP)
    wait_until(lambda: log_file.exists() and "graceful reload" in log_file.read_text(), 10, what="a new log file")
    # the old router worker (which keeps the old file until it exits) is gone: only the new one serves
    wait_until(lambda: "exited" in log_file.read_text(), 15, what="the old router worker to leave")
    # the new router worker logs there too (a request for a node that refuses: one line)
    assert uwsgi_request(("127.0.0.1", port), request_vars(host="after.rotation")).status == 502
    wait_until(lambda: "after.rotation" in log_file.read_text(), 10, what="the new worker's line")
    assert "after.rotation" not in rotated.read_text()
