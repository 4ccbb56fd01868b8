"""A backend that accepts connections and never reads or answers (a hung application).

The router must give up on it after ``--fastrouter-timeout`` with a 504 (docs/differences.md, "Routing failure") and,
while it waits, keep
serving every other request: requests routed to a good node are answered at once, not queued behind
the stuck node's sessions.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import (
    Proc,
    ProcessManager,
    Response,
    ThreadedNode,
    free_port,
    log_lines,
    request_vars,
    uwsgi_request,
)

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
TIMEOUT_S = 2
#: the worker sweeps idle sessions once a second, so a 504 comes between TIMEOUT_S and TIMEOUT_S + 1 s
LATEST_504_S = TIMEOUT_S + 2.0
#: a request to the good node counts as prompt below this (a few milliseconds when unloaded; generous for a loaded
#: machine, yet half of what one queued behind the stuck node would take)
PROMPT_S = TIMEOUT_S / 2
#: requests of the mixed run, one started every INTERVAL_S
REQUESTS = 20
INTERVAL_S = 0.1


class StuckBackend(ThreadedNode):
    """A listener on 127.0.0.1 that accepts every connection, holds it, and never reads or writes."""

    def __init__(self) -> None:
        self.held: list[socket.socket] = []
        super().__init__(backlog=128)

    def accepted(self, conn: socket.socket) -> None:
        self.held.append(conn)

    def close(self) -> None:
        super().close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def stuck() -> Iterator[StuckBackend]:
    backend = StuckBackend()
    try:
        yield backend
    finally:
        backend.close()


@dataclass
class Outcome:
    started: float
    took: float
    status: int
    body: bytes
    error: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.took


def timed_request(address: tuple[str, int]) -> Outcome:
    started = time.monotonic()
    try:
        response: Response = uwsgi_request(address, request_vars(), timeout=LATEST_504_S + 5)
    except OSError as exc:
        return Outcome(started, time.monotonic() - started, 0, b"", repr(exc))
    return Outcome(started, time.monotonic() - started, response.status, response.body)


def start_router(procs: ProcessManager, *nodes: str) -> tuple[Proc, tuple[str, int]]:
    port = free_port()
    args = ["--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-timeout", str(TIMEOUT_S)]
    for node in nodes:
        args += ["--fastrouter-to", node]
    router = procs.router(*args, wait_for=(LOOPBACK, port))
    return router, (LOOPBACK, port)


def test_stuck_backend_gets_a_504_after_the_timeout(procs: ProcessManager, stuck: StuckBackend) -> None:
    router, address = start_router(procs, stuck.address)
    outcome = timed_request(address)
    assert outcome.status == 504, outcome
    assert TIMEOUT_S - 0.1 <= outcome.took <= LATEST_504_S, f"504 after {outcome.took:.2f} s"
    assert (
        stuck.address.encode() not in outcome.body
    )  # docs/differences.md, "Routing failure": no internal address in the answer
    assert len(stuck.held) == 1
    assert any("timed out; answered 504" in line for line in log_lines(router)), router.log()
    assert router.alive()


def test_requests_to_a_good_node_are_not_stuck_behind_the_stuck_one(procs: ProcessManager, stuck: StuckBackend) -> None:
    good = free_port()
    procs.uwsgi_backend(f"{LOOPBACK}:{good}", "good", wait_for=(LOOPBACK, good))
    router, address = start_router(procs, stuck.address, f"{LOOPBACK}:{good}")

    outcomes: list[Outcome] = []
    threads = []
    for _ in range(REQUESTS):  # one request every INTERVAL_S, each in its own thread: bounded in count
        thread = threading.Thread(target=lambda: outcomes.append(timed_request(address)), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(INTERVAL_S)  # the pacing of the load, not a wait for a condition
    for thread in threads:
        thread.join(LATEST_504_S + 10)
    assert len(outcomes) == REQUESTS, "a request never ended"

    answered = [o for o in outcomes if o.status == 200 and o.body.startswith(b"instance=good ")]
    timed_out = [o for o in outcomes if o.status == 504]
    other = [o for o in outcomes if o not in answered and o not in timed_out]
    print(
        f"\nstuck backend, {REQUESTS} requests over {REQUESTS * INTERVAL_S:.0f} s: {len(answered)} answered by the "
        f"good node (max {max((o.took for o in answered), default=0) * 1000:.0f} ms), {len(timed_out)} got a 504 "
        f"({min((o.took for o in timed_out), default=0):.2f}-{max((o.took for o in timed_out), default=0):.2f} s), "
        f"{len(other)} other"
    )
    assert not other, other
    # Round robin over two nodes: every other request goes to the stuck node (as in uWSGI, a node that
    # answers too slowly is not put in grace time); the good node's share is answered at once.
    assert len(answered) >= REQUESTS * 0.4, outcomes
    slow = [o for o in answered if o.took >= PROMPT_S]
    assert not slow, f"good-node answers queued behind the stuck node: {slow}"
    for outcome in timed_out:
        assert TIMEOUT_S - 0.1 <= outcome.took <= LATEST_504_S, outcome
    # ...and they were answered while the stuck node held sessions that had started before them
    overlapped = [g for g in answered if any(s.started < g.started and s.ended > g.ended for s in timed_out)]
    assert len(overlapped) >= len(answered) - 1, (answered, timed_out)
    assert len(stuck.held) == len(timed_out)
    assert router.alive()
