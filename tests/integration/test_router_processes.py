"""``--fastrouter-processes N``: N router processes share the listening sockets and the node table.

Each router process is stopped in turn (SIGSTOP): the other one alone then answers every request, through the
same listener, with the node that a real uWSGI instance announced to the master's subscription server.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator

import psutil
import pytest

from tests.support import Proc, ProcessManager, free_port, request_vars, uwsgi_request, wait_until

LOOPBACK = "127.0.0.1"


def router_processes(master: Proc) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(master.pid).children():
        try:
            if "fastrouter" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # a process that just exited
            continue
    return found


def is_stopped(process: psutil.Process) -> bool:
    return bool(process.status() == psutil.STATUS_STOPPED)


@pytest.fixture
def two_routers(procs: ProcessManager) -> Iterator[tuple[tuple[str, int], list[psutil.Process]]]:
    port, subscriptions, node_port = free_port(), free_port(), free_port()
    address = (LOOPBACK, port)
    master = procs.router(
        "--fastrouter", f"{LOOPBACK}:{port}",
        "--fastrouter-subscription-server", f"{LOOPBACK}:{subscriptions}",
        "--fastrouter-processes", "2",
        wait_for=address,
    )  # fmt: skip
    procs.uwsgi_backend(
        f"{LOOPBACK}:{node_port}", "shared", "--subscribe-to", f"{LOOPBACK}:{subscriptions}:shared.example",
        wait_for=(LOOPBACK, node_port),
    )  # fmt: skip
    wait_until(lambda: uwsgi_request(address, request_vars(host="shared.example")).status == 200, 15, what="routing")
    routers = wait_until(lambda: len(router_processes(master)) == 2 and router_processes(master), 10)
    try:
        yield address, routers
    finally:
        for router in routers:
            if router.is_running():
                os.kill(router.pid, signal.SIGCONT)


def test_each_router_process_alone_serves_the_shared_socket_with_the_shared_node_table(
    two_routers: tuple[tuple[str, int], list[psutil.Process]],
) -> None:
    address, routers = two_routers
    for stopped, serving in ((routers[0], routers[1]), (routers[1], routers[0])):
        os.kill(stopped.pid, signal.SIGSTOP)
        wait_until(functools.partial(is_stopped, stopped), 5, what="the stop")
        try:
            served_before = serving.num_ctx_switches()
            answers = [uwsgi_request(address, request_vars(host="shared.example"), timeout=5) for _ in range(20)]
            assert [a.status for a in answers] == [200] * 20
            assert all(b"shared" in a.body for a in answers), answers[0].raw[:200]
            assert serving.num_ctx_switches() != served_before, "the running router process did the work"
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
