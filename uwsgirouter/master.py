"""The master: creates the listening sockets, forks the router workers, respawns them, stops them.

This is the first, small master (the router issue); signal handlers only record, the loop acts.
SIGTERM stops gracefully (in-flight sessions finish, DECISIONS D12), SIGINT and SIGQUIT at once.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time

from uwsgirouter.address import SharedSocketRef
from uwsgirouter.config import Config
from uwsgirouter.errors import HaltServer
from uwsgirouter.logs import set_process_label
from uwsgirouter.router.mappers import Mapper, build_mapper
from uwsgirouter.router.nodes import Node
from uwsgirouter.router.worker import RouterWorker
from uwsgirouter.sock import Listener, bind_listener

log = logging.getLogger("uwsgirouter.master")

#: A worker that dies sooner than this after its start counts as a failed boot.
MIN_WORKER_LIFETIME_S = 1.0
RESPAWN_BACKOFF_MAX_S = 5.0


class NoMapper(Mapper):
    """The seed's "most useless setup": listeners and no way to route; every request gets a 502."""

    def pick(self, key: bytes, tried: object, now: float) -> Node | None:
        return None


class Master:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.listeners: list[Listener] = []
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (router number, start time)
        self.pending: list[int] = []
        self.stop_mode: str | None = None
        self.backoff = 0.0
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def bind(self) -> None:
        config = self.config
        defer = 0 if config.no_defer_accept else config.socket_timeout
        for address in config.fastrouter:
            listener = bind_listener(address, backlog=config.listen, chmod=config.chmod_socket, defer_accept=defer)
            self.listeners.append(listener)
            log.info("fastrouter bound on %s fd %d", listener.name, listener.fileno())

    def socket_names(self) -> list[str]:
        """Names of this instance's ``--socket`` addresses (``=N`` resolved), for --fastrouter-use-socket."""
        shared = [*self.config.shared_socket, *self.config.undeferred_shared_socket]
        return [str(shared[a.index]) if isinstance(a, SharedSocketRef) else str(a) for a in self.config.socket]

    def _on_signal(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def spawn(self, number: int, mapper: Mapper) -> None:
        pid = os.fork()
        if pid:
            self.workers[pid] = (number, time.monotonic())
            return
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            set_process_label(f"fastrouter {number}")
            status = RouterWorker(self.config, self.listeners, mapper, number).run()
        except BaseException:
            log.exception("router %d crashed", number)
        finally:
            logging.shutdown()
            os._exit(status)

    def run(self) -> int:
        if not self.config.fastrouter:
            raise HaltServer("nothing to run: give at least one --fastrouter ADDR", 1)
        self.bind()
        mapper = build_mapper(self.config, self.socket_names()) or NoMapper()
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        for number in range(1, self.config.fastrouter_processes + 1):
            self.spawn(number, mapper)
        try:
            return self._loop(mapper)
        finally:
            for listener in self.listeners:
                listener.close()

    def _loop(self, mapper: Mapper) -> int:
        deadline = 0.0
        while True:
            select.select([self._wakeup_r], [], [], 1.0)
            try:
                os.read(self._wakeup_r, 512)
            except BlockingIOError:
                pass
            signals, self.pending = self.pending, []
            for signum in signals:
                if signum in (signal.SIGINT, signal.SIGQUIT):
                    self._stop("immediate", signal.SIGINT)
                elif signum == signal.SIGTERM:
                    self._stop("graceful", signal.SIGTERM)
            self._reap(mapper)
            if self.stop_mode:
                if not self.workers:
                    log.info("goodbye")
                    return 0
                if not deadline:
                    deadline = time.monotonic() + self.config.reload_mercy
                elif time.monotonic() > deadline:
                    for pid in self.workers:
                        os.kill(pid, signal.SIGKILL)

    def _stop(self, mode: str, signum: int) -> None:
        if self.stop_mode == "immediate":
            return
        self.stop_mode = mode
        log.info("%s stop requested", mode)
        for pid in self.workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _reap(self, mapper: Mapper) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            number, started = self.workers.pop(pid, (0, 0.0))
            if not number:
                continue
            how = (
                f"signal {signal.Signals(os.WTERMSIG(status)).name}"
                if os.WIFSIGNALED(status)
                else f"exit status {os.WEXITSTATUS(status)}"
            )
            if self.stop_mode:
                continue
            log.warning("fastrouter %d (pid %d) died (%s); respawning", number, pid, how)
            if time.monotonic() - started < MIN_WORKER_LIFETIME_S:
                self.backoff = min(RESPAWN_BACKOFF_MAX_S, self.backoff * 2 or 0.1)
                time.sleep(self.backoff)
            else:
                self.backoff = 0.0
            self.spawn(number, mapper)


def run_master(config: Config) -> int:
    set_process_label("master")
    try:
        return Master(config).run()
    finally:
        sys.stderr.flush()
