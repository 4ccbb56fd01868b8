"""The master under a service manager: with ``NOTIFY_SOCKET`` set it tells systemd (here, a datagram socket the
test binds) when it is ready, reloading, ready again and stopping, and no worker inherits the variable."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROUTER, NotifyListener, ProcessManager, free_port, request_vars, uwsgi_request, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def manager(unix_dir: Path) -> Iterator[NotifyListener]:
    fake = NotifyListener(str(unix_dir / "notify"))
    try:
        yield fake
    finally:
        fake.close()


ENV_APP = """
import os

def application(environ, start_response):
    body = ("NOTIFY_SOCKET=%s" % os.environ.get("NOTIFY_SOCKET")).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def test_ready_reloading_ready_stopping(
    procs: ProcessManager, manager: NotifyListener, unix_dir: Path, tmp_path: Path
) -> None:
    router_port, app_port = free_port(), free_port()
    (tmp_path / "env_app.py").write_text(ENV_APP)
    router = procs.start(
        [
            *ROUTER,
            "--master", "--fastrouter", f"127.0.0.1:{router_port}", "--fastrouter-to", f"127.0.0.1:{app_port}",
            "--socket", f"127.0.0.1:{app_port}", "--wsgi-file", str(tmp_path / "env_app.py"), "--processes", "2",
        ],
        "uwsgirouter",
        env={"NOTIFY_SOCKET": str(unix_dir / "notify")},
    )  # fmt: skip
    messages = manager.wait_for("READY")
    ready = next(m for m in messages if "READY" in m)
    # READY=1 only once the router answers: a request sent right after it is routed to an app worker, whose
    # environment has no NOTIFY_SOCKET (app code must not speak in the master's name)
    answer = uwsgi_request(("127.0.0.1", router_port), request_vars(host="example.com"))
    assert answer.status == 200 and answer.body == b"NOTIFY_SOCKET=None", answer.raw
    assert ready["READY"] == "1" and ready["MAINPID"] == str(router.pid)
    assert "ready" in ready["STATUS"] and f"127.0.0.1:{router_port}" in ready["STATUS"]
    assert messages[0].keys() == {"STATUS"}, messages  # "starting ..." before anything else
    children = router.children()

    router.signal(signal.SIGHUP)
    messages = manager.wait_for("READY", count=2)
    assert manager.states() == ["READY", "RELOADING", "READY"], messages
    reloading = next(m for m in messages if "RELOADING" in m)
    assert reloading["RELOADING"] == "1" and "reloading" in reloading["STATUS"]
    usec = int(reloading["MONOTONIC_USEC"])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60_000_000
    assert "reloaded 1 time" in messages[-1]["STATUS"]
    # the new generation serves
    wait_until(lambda: not {c.pid for c in children} & {c.pid for c in router.children()}, 15, what="old workers")
    assert uwsgi_request(("127.0.0.1", router_port), request_vars(host="example.com")).status == 200

    router.signal(signal.SIGTERM)
    assert router.wait(15) == 0
    messages = manager.receive()
    assert manager.states() == ["READY", "RELOADING", "READY", "STOPPING"], messages
    assert messages[-1]["STOPPING"] == "1" and "stopping" in messages[-1]["STATUS"]


def test_abstract_socket_and_no_manager(procs: ProcessManager, unix_dir: Path) -> None:
    """``@name`` is the abstract namespace; a manager that is gone costs one warning line, not the master."""
    name = f"@uwsgirouter-test-{unix_dir.name}"
    fake = NotifyListener(name)
    try:
        port = free_port()
        router = procs.router(
            "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", "127.0.0.1:9",
            wait_for=("127.0.0.1", port), env={"NOTIFY_SOCKET": name},
        )  # fmt: skip
        fake.wait_for("READY")
    finally:
        fake.close()  # the manager goes away
    router.signal(signal.SIGHUP)
    wait_until(lambda: "cannot notify the service manager" in router.log(), 15, what="the warning")
    assert uwsgi_request(("127.0.0.1", port), request_vars(host="example.com")).status == 502  # still routing
    # stop once the reload is over: this test is about the notifications, not a stop in the middle of a reload
    wait_until(lambda: "generation 1 serving" in router.log(), 15, what="the reload to finish")
    router.signal(signal.SIGTERM)
    assert router.wait(15) == 0
    assert router.log().count("cannot notify the service manager") == 1
