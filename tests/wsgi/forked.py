"""Run a ``WsgiWorker`` in a forked child on a real listening socket; nothing outlives the test."""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from wsgiref.types import WSGIApplication

from uwsgirouter.config import load_config
from uwsgirouter.logs import set_process_label, setup_logging
from uwsgirouter.sock import Listener
from uwsgirouter.workers.wsgi import WsgiWorker

BeforeRun = Callable[[WsgiWorker], None]


@dataclass
class Child:
    pid: int
    status: int | None = None

    def poll(self) -> int | None:
        if self.status is None:
            pid, raw = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(raw)
        return self.status

    def wait(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.pid} still running after {timeout} s")
            time.sleep(0.01)
        assert self.status is not None
        return self.status

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait(10.0)


def run_worker_in_child(
    argv: list[str],
    listener: Listener,
    app: WSGIApplication,
    worker_id: int,
    log_path: Path,
    before_run: BeforeRun | None = None,
) -> NoReturn:
    """The child's whole life: log to ``log_path``, serve, ``os._exit`` (never back into pytest)."""
    status = 70
    try:
        set_process_label(f"worker {worker_id}")
        setup_logging(str(log_path))
        worker = WsgiWorker(load_config(argv, {}), [listener], app, worker_id)
        if before_run is not None:
            before_run(worker)
        status = worker.init_process()
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)


@dataclass
class Served:
    """One listening socket and the workers forked on it."""

    address: tuple[str, int]
    log_path: Path
    children: list[Child] = field(default_factory=list)

    @property
    def child(self) -> Child:
        return self.children[0]

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s; log:\n{self.log()}")
            time.sleep(0.01)
        return self.log()


class WorkerFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.listeners: list[Listener] = []
        self.children: list[Child] = []

    def start(self, app: WSGIApplication, *argv: str, count: int = 1, before_run: BeforeRun | None = None) -> Served:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        listener = Listener(sock, "127.0.0.1:0")
        self.listeners.append(listener)
        served = Served(sock.getsockname(), self.tmp_path / f"worker-{len(self.listeners)}.log")
        for worker_id in range(1, count + 1):
            pid = os.fork()
            if pid == 0:
                run_worker_in_child(list(argv), listener, app, worker_id, served.log_path, before_run)
            child = Child(pid)
            self.children.append(child)
            served.children.append(child)
        return served

    def close(self) -> None:
        for child in self.children:
            child.kill()
        for listener in self.listeners:
            listener.close()


def worker_factory(tmp_path: Path) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
