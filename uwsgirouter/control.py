"""What services may ask of the master (``services.base.MasterControl``), as the master implements it.

A service's call only records the wish; the master's loop acts on it once per turn (``act_on_requests``),
between waiting and reaping, so an action never runs in the middle of another service's handler.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from uwsgirouter.arbiter import APP
from uwsgirouter.errors import HaltServer
from uwsgirouter.logs import log_file, reopen_logs

if TYPE_CHECKING:
    from uwsgirouter.arbiter import Arbiter
    from uwsgirouter.config import Config
    from uwsgirouter.heartbeat import HeartbeatTable
    from uwsgirouter.pause import PauseSwitch
    from uwsgirouter.proc import Pidfile
    from uwsgirouter.subscription.client import Subscriber

log = logging.getLogger("uwsgirouter.master")


class ControlRequests:
    """The master's side of ``MasterControl``; mixed into ``Master``, whose loop calls ``act_on_requests``."""

    arbiter: Arbiter
    config: Config
    heartbeats: HeartbeatTable
    subscriber: Subscriber | None
    pending: list[int]
    pause_switch: PauseSwitch

    def init_requests(self) -> None:
        #: the master's pidfiles, for ``request_update_pidfiles`` (set by ``run_master``)
        self.pidfiles: list[Pidfile] = []
        self.reopen_requested = False
        self.rotate_requested = False
        self.pidfiles_requested = False
        self.stats_requested = False
        self.brutal_reload = False
        self.workers_reloads: list[bool] = []
        self.cheap_requested: bool | None = None
        self.pause_requests: list[bool | None] = []
        #: what a rescan of the Emperor calls (the Emperor service adds its own; empty without --emperor)
        self.rescan_hooks: list[Callable[[], None]] = []

    # -- MasterControl ----------------------------------------------------------------------------

    def request_reload(self, brutal: bool = False) -> None:
        self.brutal_reload = self.brutal_reload or brutal
        self.pending.append(signal.SIGHUP)

    def request_reload_workers(self, brutal: bool) -> None:
        self.workers_reloads.append(brutal)

    def request_stop(self, graceful: bool) -> None:
        self.pending.append(signal.SIGTERM if graceful else signal.SIGINT)

    def request_log_reopen(self) -> None:
        self.reopen_requested = True

    def request_log_rotate(self) -> None:
        self.rotate_requested = True

    def request_update_pidfiles(self) -> None:
        self.pidfiles_requested = True

    def request_stats_log(self) -> None:
        self.stats_requested = True

    def request_block_subscriptions(self, blocked: bool | None) -> None:
        """Blocked, the instance sends neither subscriptions nor unsubscriptions (uWSGI's rule); unblocked, it
        announces itself at once instead of at the next period."""
        subscriber = self.subscriber
        if subscriber is None:
            log.info("no subscriptions to block or unblock (no --subscribe-to)")
            return
        block = not subscriber.blocked if blocked is None else blocked
        if block == subscriber.blocked:
            return
        subscriber.blocked = block
        if not block:
            subscriber.next_at = 0.0
        log.info("subscriptions blocked" if block else "subscriptions re-enabled")

    def request_cheap(self, cheap: bool) -> None:
        self.cheap_requested = cheap

    def request_pause(self, paused: bool | None) -> None:
        self.pause_requests.append(paused)

    def request_emperor_rescan(self) -> None:
        if not self.rescan_hooks:
            log.info("no Emperor to rescan (no --emperor)")
        for rescan in self.rescan_hooks:
            rescan()  # records only: the scan runs in the Emperor's next tick

    # -- acting, from the loop --------------------------------------------------------------------

    def take_brutal_reload(self) -> bool:
        """Whether the reload being started was asked for as brutal (then forgotten)."""
        brutal, self.brutal_reload = self.brutal_reload, False
        return brutal

    def act_on_requests(self) -> None:
        if self.rotate_requested:
            self.rotate_requested = self.reopen_requested = False
            self._rotate_log()
        if self.reopen_requested:
            self.reopen_requested = False
            self.reopen_log_files()
            log.info("log files reopened")
        if self.pidfiles_requested:
            self.pidfiles_requested = False
            self._update_pidfiles()
        if self.stats_requested:
            self.stats_requested = False
            self._log_stats()
        reloads, self.workers_reloads = self.workers_reloads, []
        if reloads and not self.arbiter.stopping:
            self.arbiter.reload(reread=False, brutal=any(reloads))
        pauses, self.pause_requests = self.pause_requests, []
        for paused in pauses:
            self._pause(not self.pause_switch.on if paused is None else paused)
        cheap, self.cheap_requested = self.cheap_requested, None
        if cheap is not None:
            self._cheap(cheap)

    def _cheap(self, cheap: bool) -> None:
        arbiter = self.arbiter
        if not cheap:
            arbiter.leave_cheap()
        elif not arbiter.apps:
            log.info("no app workers to stop (router workers are never cheaped)")
        elif arbiter.cheap:
            log.info("already cheap: the app workers start at the next connection")
        else:
            arbiter.go_cheap()

    def _pause(self, paused: bool) -> None:
        """uWSGI's pause: the switch the app workers read, a SIGTSTP to wake each, and the subscriptions
        withdrawn (sent again at once on resume). Router workers go on, as uWSGI's gateways do."""
        if not self.arbiter.apps:
            log.info("no app workers to pause (router workers are never paused)")
            return
        if paused == self.pause_switch.on:
            return
        self.pause_switch.set(paused)
        if paused:
            log.info("PAUSE: the app workers accept nothing once their request in hand is done (p or SIGTSTP resumes)")
        else:
            log.info("resuming the app workers")
        if self.subscriber is not None:
            self.subscriber.set_paused(paused)
        self.arbiter.signal_apps(signal.SIGTSTP)

    def reopen_log_files(self) -> None:
        try:
            reopen_logs(self.config.logto, self.config.daemonize)
        except OSError as exc:
            log.warning("cannot reopen the log file: %s; logging goes on to the old one", exc)

    def _rotate_log(self) -> None:
        """uWSGI's log rotation: the log file becomes --log-backupname or FILE.<unix time>, and a new FILE is
        opened (the other processes follow it by name, see ``logs``)."""
        current = log_file()
        if current is None:
            log.info("no log file to rotate (no --logto, --logto2 or --daemonize)")
            return
        path = current.path
        rotated = self.config.log_backupname or f"{path}.{int(time.time())}"
        log.info("rotating the log to %s", rotated)
        try:
            os.rename(path, rotated)
        except OSError as exc:
            log.warning("cannot rotate the log to %s: %s", rotated, exc.strerror)
            return
        self.reopen_log_files()
        log.info("log rotated; the previous lines are in %s", rotated)

    def _update_pidfiles(self) -> None:
        for pidfile in self.pidfiles:
            log.info("writing pidfile to %s", pidfile.path)
            try:
                pidfile.create(os.getpid())
            except (OSError, HaltServer) as exc:
                log.warning("cannot write the pidfile %s: %s", pidfile.path, getattr(exc, "reason", exc))

    def _log_stats(self) -> None:
        workers = sorted(self.arbiter.workers.values(), key=lambda w: (w.spec.kind, w.spec.number, w.pid))
        cheap = " (cheap: no app worker until a connection comes)" if self.arbiter.cheap else ""
        log.info("stats: %d worker(s), generation %d%s", len(workers), self.arbiter.generation, cheap)
        for worker in workers:
            beat = self.heartbeats.read(worker.spec.slot)
            requests = beat.requests if beat is not None and beat.pid == worker.pid else 0
            state = "retiring" if worker.retiring_since else "serving" if worker.booted else "starting"
            if worker.spec.kind == APP and self.pause_switch.on and not worker.retiring_since:
                state = "paused"
            log.info(
                "stats: %s %d (pid %d) %s, %d request(s)",
                worker.spec.kind,
                worker.spec.number,
                worker.pid,
                state,
                requests,
            )
