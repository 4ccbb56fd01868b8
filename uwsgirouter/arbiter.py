"""The master's decisions: supervise router and app workers, reload them, stop them.

It owns no request traffic. Its loop waits on a wakeup pipe (signal handlers only record the signal
and write a byte), then acts: reap children, respawn the unexpected deaths with a back-off, kill
stalled workers (harakiri), move a reload or a stop forward. Every OS call goes through ``OsCalls``
so this logic is unit-tested with a fake and no real fork.

Signals (docs/differences.md, "SIGTERM"), the same table as in docs/signals.md:

========  =====================================================================================
SIGHUP    graceful reload: a new generation of workers starts; once it is up, the old one stops
          accepting, finishes its requests (up to --worker-reload-mercy) and exits. Listening
          sockets stay open throughout, so no connection is refused.
SIGTERM   graceful stop: workers finish in-flight requests, bounded by --reload-mercy; exit 0.
SIGINT    immediate stop.
SIGQUIT   immediate stop.
SIGTSTP   pause the app workers, or resume them (the master fifo's p; see ``control``).
========  =====================================================================================
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from uwsgirouter.errors import HaltServer
from uwsgirouter.heartbeat import Beat, HeartbeatTable
from uwsgirouter.oscalls import OsCalls, describe_status, exit_code

log = logging.getLogger("uwsgirouter.master")

ROUTER = "fastrouter"
APP = "worker"
#: Exit codes a worker uses when it cannot start; the master stops instead of crash-looping.
WORKER_BOOT_ERROR = 3
APP_LOAD_ERROR = 4
#: Exit code of an app worker that left to be replaced (--max-requests, --reload-on-rss): respawned at once.
WORKER_RECYCLED = 5
BOOT_FAILURES = (WORKER_BOOT_ERROR, APP_LOAD_ERROR)
#: A worker that dies sooner than this after its start did not really run: respawn with a back-off.
MIN_LIFETIME_S = 1.0
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
#: A new generation that has not beaten by then is retired anyway; its predecessors stop.
RELOAD_BOOT_TIMEOUT_S = 30.0
#: Tells a worker to stop accepting and leave once its requests are done (reload). SIGTERM, by contrast,
#: is a graceful stop: a router still answers new requests, with a 503, while it drains.
RETIRE_SIGNAL = signal.SIGUSR2
#: After SIGINT/SIGQUIT, workers get this long before SIGKILL.
IMMEDIATE_STOP_GRACE_S = 3.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a forked child is to become."""

    kind: str
    number: int
    slot: int
    generation: int


@dataclass(slots=True)
class Worker:
    spec: WorkerSpec
    pid: int
    started: float
    booted: bool = False
    retiring_since: float = 0.0  # when SIGTERM was sent for a reload or stop (0 = serving)
    killed: bool = False


@dataclass(slots=True)
class WorkerRecord:
    """The history of one worker id (kind and number) across its processes, as uWSGI keeps it per worker id:
    spawns, harakiris, and the counters of the processes that already exited (the stats server adds the
    live one's)."""

    respawn_count: int = 0
    last_spawn: float = 0.0  #: wall-clock time of the latest spawn
    harakiri_count: int = 0
    requests: int = 0
    exceptions: int = 0
    tx: int = 0
    running_us: int = 0

    def add_exited(self, beat: Beat) -> None:
        self.requests += beat.requests
        self.exceptions += beat.exceptions
        self.tx += beat.tx
        self.running_us += beat.running_us


@dataclass(slots=True)
class _Respawn:
    kind: str
    number: int
    due: float


@dataclass
class Arbiter:
    """The supervision logic; ``launch`` runs in the child and returns its exit status."""

    launch: Callable[[WorkerSpec], int]
    heartbeats: HeartbeatTable
    routers: int
    apps: int
    reload_mercy: float = 60.0
    worker_reload_mercy: float = 60.0
    router_harakiri: float = 0.0
    app_harakiri: float = 0.0
    oscalls: OsCalls = field(default_factory=OsCalls)
    reload_config: Callable[[], object] | None = None
    workers: dict[int, Worker] = field(default_factory=dict)
    generation: int = 0
    stopping: str = ""  # "", "graceful" or "immediate"
    stop_deadline: float = 0.0
    reloading: bool = False
    reload_started: float = 0.0
    reload_brutal: bool = False  # the old generation leaves at once instead of finishing its requests
    #: a reload asked for while the previous generation still holds its slots: (reread, brutal), started later
    reload_waiting: tuple[bool, bool] | None = None
    failures: dict[str, int] = field(default_factory=dict)
    respawns: list[_Respawn] = field(default_factory=list)
    booted_kinds: set[str] = field(default_factory=set)
    records: dict[tuple[str, int], WorkerRecord] = field(default_factory=dict)
    #: uWSGI's cheap mode: no app worker runs until a connection arrives on an app socket (``--cheap``, the
    #: master fifo's ``C``); the master watches the app sockets meanwhile and calls ``leave_cheap``
    cheap: bool = False
    #: told of every reaped child that is not a worker (the Emperor's vassals): pid, wait status
    on_other_exit: Callable[[int, int], None] | None = None

    @property
    def expected_apps(self) -> int:
        """App workers a generation has: none while cheap."""
        return 0 if self.cheap else self.apps

    # -- spawning -------------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self.heartbeats.slots - len({w.spec.slot for w in self.workers.values()})

    def _free_slot(self) -> int:
        used = {w.spec.slot for w in self.workers.values()}
        for slot in range(self.heartbeats.slots):
            if slot not in used:
                return slot
        raise HaltServer("no free heartbeat slot (internal error)", 1)

    def spawn(self, kind: str, number: int) -> Worker:
        spec = WorkerSpec(kind, number, self._free_slot(), self.generation)
        self.heartbeats.clear(spec.slot)
        pid = self.oscalls.fork()
        if pid == 0:  # the child: never returns into the master's loop
            status = WORKER_BOOT_ERROR
            try:
                status = self.launch(spec)
            except BaseException:
                log.exception("%s %d crashed", kind, number)
            finally:
                self.oscalls.exit(status)
        worker = Worker(spec, pid, self.oscalls.monotonic())
        self.workers[pid] = worker
        record = self.records.setdefault((kind, number), WorkerRecord())
        record.respawn_count += 1
        record.last_spawn = time.time()
        return worker

    def spawn_all(self) -> None:
        for number in range(1, self.routers + 1):
            self.spawn(ROUTER, number)
        for number in range(1, self.expected_apps + 1):
            self.spawn(APP, number)

    # -- cheap mode -----------------------------------------------------------------------------

    def go_cheap(self) -> None:
        """Retire every app worker (each finishes its request in hand: uWSGI kills them) and spawn none until
        ``leave_cheap``. Router workers are not affected."""
        if self.stopping or self.cheap or not self.apps:
            return
        self.cheap = True
        self.respawns = [r for r in self.respawns if r.kind != APP]
        now = self.oscalls.monotonic()
        retired = 0
        for pid, worker in self.workers.items():
            if worker.spec.kind == APP and not worker.retiring_since:
                worker.retiring_since = now
                self.oscalls.kill(pid, RETIRE_SIGNAL)
                retired += 1
        log.info("going cheap: %d app worker(s) retiring; spawned again on the next connection", retired)

    def leave_cheap(self) -> None:
        """A connection is waiting on an app socket: spawn the app workers (the connection waits in the listen
        queue for the first of them)."""
        if not self.cheap:
            return
        self.cheap = False
        if self.stopping:
            return
        log.info("leaving cheap mode: a connection is waiting; spawning %d app worker(s)", self.apps)
        for number in range(1, self.apps + 1):
            self.spawn(APP, number)

    def signal_apps(self, signum: int) -> None:
        """Send ``signum`` to every app worker (the pause switch's wake-up)."""
        for pid, worker in self.workers.items():
            if worker.spec.kind == APP:
                self.oscalls.kill(pid, signum)

    # -- signals --------------------------------------------------------------------------------

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload()
        elif signum == signal.SIGTERM:
            self.stop("graceful")
        elif signum in (signal.SIGINT, signal.SIGQUIT):
            self.stop("immediate")

    def stop(self, mode: str) -> None:
        if self.stopping == "immediate" or self.stopping == mode:
            return
        now = self.oscalls.monotonic()
        self.stopping = mode
        self.respawns.clear()
        if mode == "graceful":
            log.info("graceful stop: waiting up to %.0f s for %d worker(s)", self.reload_mercy, len(self.workers))
            self.stop_deadline = now + self.reload_mercy
            signum = signal.SIGTERM
        else:
            log.info("immediate stop")
            self.stop_deadline = now + IMMEDIATE_STOP_GRACE_S
            signum = signal.SIGINT
        for pid, worker in self.workers.items():
            worker.retiring_since = worker.retiring_since or now
            self.oscalls.kill(pid, signum)

    def reload(self, reread: bool = True, brutal: bool = False) -> None:
        """A new generation of workers; ``reread``: read the configuration first (not for a reload of the
        workers only); ``brutal``: once it is up, the old workers leave at once (SIGINT) instead of
        finishing their requests."""
        if self.stopping:
            return
        if self.reloading:
            log.warning("a reload is already in progress; this one is ignored")
            return
        if self._free_slots() < self.routers + self.apps:
            # The previous generation is still finishing its requests: its slots are not free yet. The reload
            # starts once they are (``tick``), instead of failing for want of a heartbeat slot.
            if self.reload_waiting is None:
                log.info("reload requested while the previous workers finish their requests; it starts once they left")
            self.reload_waiting = (reread, brutal)
            return
        self.reload_waiting = None
        if reread and self.reload_config is not None:
            try:
                self.reload_config()
            except Exception as exc:  # a broken edit must not take the running instance down
                log.error("reload aborted, the configuration is invalid: %s", exc)
                return
        self.generation += 1
        self.reloading = True
        self.reload_brutal = brutal
        self.reload_started = self.oscalls.monotonic()
        what = ("brutal reload" if brutal else "graceful reload") + ("" if reread else " of the workers")
        log.info("%s: starting generation %d", what, self.generation)
        self.spawn_all()

    # -- the periodic part of the loop ---------------------------------------------------------

    def reap(self) -> None:
        """Collect every exited child; decide what each death means."""
        while True:
            pid, status = self.oscalls.waitpid()
            if not pid:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                beat = self.heartbeats.read(worker.spec.slot)
                if beat is not None and beat.pid == pid:  # its last counters stay with its worker id
                    self.records[worker.spec.kind, worker.spec.number].add_exited(beat)
                self._worker_exited(worker, status)
            elif self.on_other_exit is not None:
                self.on_other_exit(pid, status)

    def _worker_exited(self, worker: Worker, status: int) -> None:
        spec = worker.spec
        now = self.oscalls.monotonic()
        expected = bool(worker.retiring_since) or bool(self.stopping)
        what = describe_status(status)
        if expected:
            log.info("%s %d (pid %d) exited (%s)", spec.kind, spec.number, worker.pid, what)
            return
        code = exit_code(status)
        if code == WORKER_RECYCLED:
            log.info("%s %d (pid %d) recycled; respawning", spec.kind, spec.number, worker.pid)
            self.respawns.append(_Respawn(spec.kind, spec.number, now))
            return
        if not worker.booted:
            # It may have beaten after the master's last look: then it was serving, not failing to start
            # (a crash in a router's first second must not stop the whole router).
            beat = self.heartbeats.read(spec.slot)
            if beat is not None and beat.pid == worker.pid:
                worker.booted = True
                self.booted_kinds.add(spec.kind)
        if code in BOOT_FAILURES and not worker.booted:
            if self.reloading and spec.generation == self.generation:
                self._abort_reload(f"{spec.kind} {spec.number} of the new generation could not start ({what})")
                return
            if spec.kind not in self.booted_kinds:
                raise HaltServer(f"{spec.kind} {spec.number} could not start ({what}); see the log above", code)
        log.warning("%s %d (pid %d) died (%s); respawning", spec.kind, spec.number, worker.pid, what)
        if now - worker.started < MIN_LIFETIME_S:
            count = self.failures.get(spec.kind, 0) + 1
            self.failures[spec.kind] = count
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (count - 1))
            log.warning(
                "%s %d died right after its start %d time(s) in a row; next try in %.1f s",
                spec.kind,
                spec.number,
                count,
                delay,
            )
        else:
            self.failures[spec.kind] = 0
            delay = 0.0
        self.respawns.append(_Respawn(spec.kind, spec.number, now + delay))

    def _abort_reload(self, reason: str) -> None:
        log.error("reload aborted: %s; the previous workers keep serving", reason)
        for pid, worker in self.workers.items():
            if worker.spec.generation == self.generation and not worker.retiring_since:
                worker.retiring_since = self.oscalls.monotonic()
                self.oscalls.kill(pid, signal.SIGKILL)
        self.reloading = False

    def tick(self) -> None:
        """Heartbeats, harakiri, respawns due, reload progress, stop deadline."""
        now = self.oscalls.monotonic()
        self._check_heartbeats(now)
        if self.stopping:
            if now >= self.stop_deadline:
                for pid, worker in self.workers.items():
                    if not worker.killed:
                        log.warning(
                            "%s %d (pid %d) still running at the deadline: SIGKILL",
                            worker.spec.kind,
                            worker.spec.number,
                            pid,
                        )
                        worker.killed = True
                        self.oscalls.kill(pid, signal.SIGKILL)
            return
        for respawn in [r for r in self.respawns if r.due <= now]:
            self.respawns.remove(respawn)
            if not (self.cheap and respawn.kind == APP):
                self.spawn(respawn.kind, respawn.number)
        if self.reloading:
            self._advance_reload(now)
        elif self.reload_waiting is not None and self._free_slots() >= self.routers + self.apps:
            self.reload(*self.reload_waiting)
        for pid, worker in self.workers.items():
            if worker.retiring_since and not worker.killed and now - worker.retiring_since > self.worker_reload_mercy:
                log.warning(
                    "%s %d (pid %d) did not finish within %.0f s: SIGKILL",
                    worker.spec.kind,
                    worker.spec.number,
                    pid,
                    self.worker_reload_mercy,
                )
                worker.killed = True
                self.oscalls.kill(pid, signal.SIGKILL)

    def _advance_reload(self, now: float) -> None:
        new = [w for w in self.workers.values() if w.spec.generation == self.generation]
        ready = all(w.booted for w in new) and len(new) == self.routers + self.expected_apps
        if not ready and now - self.reload_started < RELOAD_BOOT_TIMEOUT_S:
            return
        for pid, worker in self.workers.items():
            if worker.spec.generation < self.generation and not worker.retiring_since:
                worker.retiring_since = now
                self.oscalls.kill(pid, signal.SIGINT if self.reload_brutal else RETIRE_SIGNAL)
        self.reloading = False
        log.info("graceful reload: generation %d serving", self.generation)

    def _check_heartbeats(self, now: float) -> None:
        for pid, worker in self.workers.items():
            beat = self.heartbeats.read(worker.spec.slot)
            if beat is None or beat.pid != pid:
                continue
            if not worker.booted:
                worker.booted = True
                self.booted_kinds.add(worker.spec.kind)
            if worker.killed:
                continue
            if worker.spec.kind == ROUTER and self.router_harakiri and now - beat.last_beat > self.router_harakiri:
                self._harakiri(worker, f"its loop has been stuck for {now - beat.last_beat:.0f} s")
            elif (
                worker.spec.kind == APP
                and self.app_harakiri
                and beat.busy_since
                and now - beat.busy_since > self.app_harakiri
            ):
                self._harakiri(worker, f"one request has been running for {now - beat.busy_since:.0f} s")

    def _harakiri(self, worker: Worker, why: str) -> None:
        log.error("HARAKIRI on %s %d (pid %d): %s", worker.spec.kind, worker.spec.number, worker.pid, why)
        self.records[worker.spec.kind, worker.spec.number].harakiri_count += 1
        worker.killed = True
        self.oscalls.kill(worker.pid, signal.SIGKILL)

    @property
    def finished(self) -> bool:
        return bool(self.stopping) and not self.workers
