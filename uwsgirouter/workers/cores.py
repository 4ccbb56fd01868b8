"""How an app worker shares its work out and when it is replaced: ``--threads`` and the recycling limits.

``--threads N`` (uWSGI's threaded mode): N threads ("cores") each wait on the listening sockets, accept
one connection and serve it, then wait again, so one slow request holds one core and the others go on.
The process's main thread serves nothing: it receives the signals (Python runs handlers there only),
beats the heartbeat while every core is busy, and watches the master. A graceful stop or a recycle tells
every core through a pipe to accept no more; each finishes the request in hand and the worker exits. An
immediate stop (SIGINT, SIGQUIT) leaves at once: the process exits under the cores. The master's harakiri
reads the start of the oldest request in hand, and kills the whole worker, as uWSGI 2.0 does. The main
thread also follows the instance's pause switch (``pause``): paused, it makes a second pipe readable, so each
core leaves its wait, and the cores wait on an event instead of accepting until it is resumed.

``--max-requests``/``--reload-on-rss``: after a request, a worker that served its share (or grew past the
memory limit), and has lived ``--min-worker-lifetime`` seconds, stops accepting, finishes, and exits with
``WORKER_RECYCLED``; the master replaces it at once. The listening sockets stay open in the master, so a
connection arriving meanwhile waits in the listen queue for the next worker: none is refused or lost.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from uwsgirouter.config import Config
from uwsgirouter.sock import Listener

log = logging.getLogger("uwsgirouter.wsgi")

#: The main thread's wait between heartbeats and looks at the master.
MAIN_POLL_MS = 1000
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident memory now (not its peak), from /proc as uWSGI reads it; 0 if unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class Recycle:
    """``--max-requests`` (+ ``--max-requests-delta``), ``--reload-on-rss`` and ``--min-worker-lifetime``."""

    def __init__(self, config: Config, worker_id: int) -> None:
        self.max_requests = (
            config.max_requests + (worker_id - 1) * config.max_requests_delta if config.max_requests else 0
        )
        self.rss_limit = config.reload_on_rss * 1024 * 1024
        self.min_lifetime = float(config.min_worker_lifetime)

    def due(self, requests: int, born: float) -> bool:
        """Whether a worker born at ``born`` (monotonic) that served ``requests`` should now be replaced."""
        if not (self.max_requests or self.rss_limit) or time.monotonic() - born < self.min_lifetime:
            return False
        if self.max_requests and requests >= self.max_requests:
            return True
        return bool(self.rss_limit) and resident_bytes() >= self.rss_limit


class PoolWorker(Protocol):
    """What the pool needs of the worker it serves (``wsgi.WsgiWorker``): its flags, sockets and wakeup pipe,
    and the serving of one connection, which each core calls."""

    @property
    def config(self) -> Config: ...
    @property
    def listeners(self) -> Sequence[Listener]: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def exit_now(self) -> bool: ...
    @property
    def wakeup_fd(self) -> int:
        """The read end of the pipe that signals (and ``wake``) write to."""
        ...

    def paused_now(self) -> bool: ...
    def beat_now(self) -> None: ...
    def master_gone(self) -> bool: ...
    def drain_wakeup(self, events: int = 0) -> None: ...
    def accept_and_serve(self, listener: socket.socket, core: int = 0) -> None: ...


class CorePool:
    """The threads of one worker; ``run()`` returns once they are done (or at once for an immediate stop)."""

    def __init__(self, worker: PoolWorker, count: int) -> None:
        self.worker = worker
        self.count = count
        self.by_fd = {listener.fileno(): listener.sock for listener in worker.listeners}
        #: set while the cores may accept; cleared while the instance is paused
        self.running = threading.Event()
        self._pause_r = self._pause_w = -1

    def _follow_pause(self) -> None:
        """Paused: one byte in the pause pipe (every core's wait ends) and ``running`` cleared; resumed: the
        byte taken back before ``running`` is set, so no core sees a stale one."""
        paused = self.worker.paused_now()
        if paused and self.running.is_set():
            self.running.clear()
            os.write(self._pause_w, b"\0")
        elif not paused and not self.running.is_set():
            try:
                os.read(self._pause_r, 1)
            except BlockingIOError:
                pass
            self.running.set()

    def run(self) -> None:
        worker = self.worker
        stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pause_r, self._pause_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.running.set()
        self._follow_pause()  # a worker born while the instance is paused starts paused
        cores = [
            threading.Thread(target=self._core, args=(core, stop_r), name=f"core {core}", daemon=True)
            for core in range(self.count)
        ]
        for thread in cores:
            thread.start()
        poller = select.poll()
        poller.register(worker.wakeup_fd, select.POLLIN)
        orphan = False
        while not (worker.stopping or worker.exit_now):
            worker.beat_now()
            if worker.master_gone():
                orphan = True
                break
            self._follow_pause()
            if poller.poll(MAIN_POLL_MS):
                worker.drain_wakeup()
        if worker.exit_now:
            return  # the process exits now; the cores die with it
        os.write(stop_w, b"\0")  # never read: every core sees it readable from now on
        self.running.set()  # a paused core looks at the stop pipe at once
        deadline = time.monotonic() + float(worker.config.worker_reload_mercy) if orphan else None
        for thread in cores:
            while thread.is_alive() and not worker.exit_now:
                if deadline is not None and time.monotonic() > deadline:
                    return
                thread.join(MAIN_POLL_MS / 1000)
                worker.beat_now()  # harakiri still applies to the requests being finished
            if worker.exit_now:
                return
        for fd in (stop_r, stop_w, self._pause_r, self._pause_w):
            os.close(fd)

    def _core(self, core: int, stop_r: int) -> None:
        """One core: wait for a connection (or the stop pipe), serve it, again."""
        worker = self.worker
        poller = select.poll()
        poller.register(stop_r, select.POLLIN)
        poller.register(self._pause_r, select.POLLIN)
        for fd in self.by_fd:
            poller.register(fd, select.POLLIN)
        while not (worker.stopping or worker.exit_now):
            if not self.running.is_set():
                self.running.wait(MAIN_POLL_MS / 1000)
                continue
            ready = [fd for fd, _ in poller.poll()]
            if stop_r in ready or worker.stopping or worker.exit_now:
                return
            if self._pause_r in ready:
                continue
            sock = self.by_fd.get(ready[0]) if ready else None
            if sock is not None:
                worker.accept_and_serve(sock, core)
