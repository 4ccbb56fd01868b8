"""A new worker holds its master's stop and retire signals until its own handlers are installed."""

from __future__ import annotations

import os
import signal
from types import FrameType

from uwsgirouter.config import load_config
from uwsgirouter.oscalls import HELD_UNTIL_HANDLED, OsCalls
from uwsgirouter.workers.base import BaseWorker


def test_the_child_is_born_with_the_stop_signals_blocked_and_the_parent_keeps_its_mask() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    read_end, write_end = os.pipe()
    pid = OsCalls().fork()
    if pid == 0:  # the child: report its mask, leave at once
        try:
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            os.write(write_end, ",".join(str(int(s)) for s in sorted(blocked)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        child_mask = {int(s) for s in reader.read().decode().split(",") if s}
    os.waitpid(pid, 0)
    assert {int(s) for s in HELD_UNTIL_HANDLED} <= child_mask
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


class _Recorder(BaseWorker):
    """A worker whose loop reports what its handler recorded of a SIGTERM sent before the handler existed."""

    RECORDED = (signal.SIGTERM,)

    def __init__(self, report: int) -> None:
        super().__init__(load_config([], {}), 1)
        self.report = report
        self.seen: list[int] = []

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.seen.append(signum)

    def run(self) -> int:
        os.write(self.report, b"seen" if self.seen == [signal.SIGTERM] else b"lost")
        return 0


def test_a_stop_sent_before_the_worker_set_up_reaches_its_handler_once_it_has_one() -> None:
    read_end, write_end = os.pipe()
    pid = OsCalls().fork()
    if pid == 0:  # the child: a stop arrives "too early", then the worker sets up and runs
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _Recorder(write_end).init_process()
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        answer = reader.read()
    _, status = os.waitpid(pid, 0)
    assert answer == b"seen", f"the early SIGTERM was {answer.decode() or 'fatal'} (status {status})"
