"""The master process: binds every socket, forks the workers, and runs the supervising loop.

What the master does is split by concern: ``sockets`` binds (before any fork, kept across respawns and
reloads, so no connection is ever refused), ``arbiter`` decides about workers, each master-side feature is a
``services`` module driven through one interface, and ``control`` carries out what services ask for. Signal
handlers only record the signal and write a byte to a wakeup pipe; the loop below acts (see ``arbiter`` for
the signal table).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence

from uwsgirouter.arbiter import APP, APP_LOAD_ERROR, ROUTER, WORKER_BOOT_ERROR, Arbiter, WorkerSpec
from uwsgirouter.cache_config import CacheSet
from uwsgirouter.config import Config, load_config
from uwsgirouter.config.checks import check_config
from uwsgirouter.control import ControlRequests
from uwsgirouter.errors import ConfigError, HaltServer
from uwsgirouter.heartbeat import Counters, HeartbeatTable
from uwsgirouter.hooks import Hook, HookFailed, run_hooks
from uwsgirouter.logs import set_process_label
from uwsgirouter.pause import PauseSwitch
from uwsgirouter.preload import preload
from uwsgirouter.proc import Pidfile, drop_privileges, reset_signals, set_title
from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router.mappers import build_cache_mapper, choose_mapper, load_mapper_function
from uwsgirouter.router.worker import RouterWorker
from uwsgirouter.services import Lifecycle, Service
from uwsgirouter.services.registry import build_services
from uwsgirouter.sockets import Sockets
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.subscription.server import SubscriptionServer
from uwsgirouter.subscription.wiring import make_subscriber, start_subscription_server
from uwsgirouter.uwsgi_module import install_cache
from uwsgirouter.workers.app_loader import run_in_master
from uwsgirouter.workers.base import BaseWorker

log = logging.getLogger("uwsgirouter.master")

#: After unsubscribing on SIGTERM, keep serving this long so routers stop sending before we stop.
UNSUBSCRIBE_GRACE_S = 1.0
MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTSTP)


class _NotBorn(Exception):
    """A worker factory cannot make its worker; the child exits with ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Master(ControlRequests):
    """Owns the sockets, the heartbeat table and the loop; the arbiter decides."""

    def __init__(self, config: Config, argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.master_pid = os.getpid()
        self.argv = list(argv)
        self.environ = dict(environ or {})
        self.sockets = Sockets(config)
        #: unexpected exceptions in master-side handlers, by (subsystem, exception type)
        self.handler_errors: dict[tuple[str, str], int] = {}
        self.handler_notes = LogLimiter(log, per_second=1)
        try:
            self._setup(config)
        except BaseException:
            self.sockets.close()
            raise

    def _setup(self, config: Config) -> None:
        routers = config.fastrouter_processes if self.sockets.router else 0
        apps = config.processes if self.sockets.app else 0
        if not routers and not apps and not config.emperor:
            raise HaltServer("nothing to run: give --fastrouter ADDR and/or --socket ADDR with an app", 1)
        self.heartbeats = HeartbeatTable(2 * (routers + apps))
        self.arbiter = Arbiter(
            launch=self.launch,
            heartbeats=self.heartbeats,
            routers=routers,
            apps=apps,
            reload_mercy=float(config.reload_mercy),
            worker_reload_mercy=float(config.worker_reload_mercy),
            router_harakiri=float(config.fastrouter_harakiri),
            app_harakiri=float(config.harakiri),
            reload_config=self.reload_config,
            cheap=config.cheap and apps > 0,
        )
        self.pause_switch = PauseSwitch()  # shared with the app workers: created before any fork
        self.pending: list[int] = []
        self.deferred_stop = 0.0  # when a SIGTERM that waits for the unsubscribes to land takes effect
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.server: SubscriptionServer | None = None
        self.image: TableImage | None = None
        self._report_worker: socket.socket | None = None
        if self.sockets.subscription:
            self.server, self.image, self._report_worker = start_subscription_server(config, self.sockets)
        self.subscriber = make_subscriber(config, self.sockets, apps)
        self.code_function: Callable[[str], object] | None = None
        if config.fastrouter_use_code_string is not None:
            self.code_function = load_mapper_function(*config.fastrouter_use_code_string)
        # Caches live in shared memory created here, before the fork: --file scripts in the master,
        # routers (--fastrouter-use-cache) and app workers all see the same items.
        self.caches = CacheSet.from_config(config)
        if config.fastrouter_use_cache is not None:
            build_cache_mapper(self.caches, config.fastrouter_use_cache)  # fail now if the cache is missing
        install_cache(self.caches)
        run_in_master(config, apps)
        self.services: list[Service] = []
        self.lifecycle: Lifecycle | None = None
        self.init_requests()

    # -- configuration reload ---------------------------------------------------------------------

    def reload_config(self) -> None:
        """Read the configuration again (SIGHUP); new workers use it, sockets stay as they are."""
        if not self.argv and not self.environ:
            return
        config = load_config(self.argv, self.environ, warn=log.warning)
        check_config(config)
        if [str(a) for a in config.fastrouter] != [str(a) for a in self.config.fastrouter] or [
            str(a) for a in config.socket
        ] != [str(a) for a in self.config.socket]:
            log.warning("listening addresses changed in the configuration; they take effect after a restart")
        self.config = config

    # -- the child side ---------------------------------------------------------------------------

    def launch(self, spec: WorkerSpec) -> int:
        """Runs in the forked child: become a worker of ``spec.kind``; returns the exit status.

        Both kinds are built the same way: the kind's factory makes the worker (it may refuse with an
        exit status, e.g. an app that does not load), then the worker's ``init_process`` runs it."""
        reset_signals()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        if self.sockets.master_stats is not None:
            self.sockets.master_stats.sock.close()  # the master's alone (its file stays: no unlink)
        config = self.config
        label = f"{spec.kind} {spec.number}"
        set_process_label(label)
        _title(config, label, config.procname)
        if os.getppid() != self.master_pid:
            return 0  # the master died while this child was being born: nobody to work for
        slot, pid, heartbeats = spec.slot, os.getpid(), self.heartbeats

        def beat(busy_since: float = 0.0, requests: int = 0, counters: Counters | None = None) -> None:
            heartbeats.beat(slot, pid, time.monotonic(), busy_since, requests, counters)

        factories: dict[str, Callable[[WorkerSpec], BaseWorker]] = {
            ROUTER: self._router_worker,
            APP: self._app_worker,
        }
        try:
            worker = factories[spec.kind](spec)
            worker.parent_pid = self.master_pid  # known before the app loaded: a master dying meanwhile is noticed
            worker.beat = beat
            return worker.init_process()
        except _NotBorn as refusal:
            return refusal.status
        finally:
            logging.shutdown()

    def _router_worker(self, spec: WorkerSpec) -> BaseWorker:
        config = self.config
        try:  # uWSGI runs them in each gateway it (re)spawns, before the gateway's own uid/gid
            run_hooks(config.hook_as_gateway, "as-gateway")
        except HookFailed as exc:
            log.error("%s", exc)
            raise _NotBorn(WORKER_BOOT_ERROR) from None
        drop_privileges(config.fastrouter_uid, config.fastrouter_gid)
        mapper = choose_mapper(
            config, self.caches, self.image, self._report_worker, self.code_function, self.sockets.app_names
        )
        names = [listener.name for listener in self.sockets.router]
        names += [str(address) for address in config.fastrouter_subscription_server]
        stats = self.sockets.stats if spec.number == 1 else None
        shared_with_apps = [r.name for r in self.sockets.router if any(r is a for a in self.sockets.app)]
        local = shared_with_apps[0] if shared_with_apps else None
        return RouterWorker(config, self.sockets.router, mapper, spec.number, None, stats, names, local)

    def _app_worker(self, spec: WorkerSpec) -> BaseWorker:
        from uwsgirouter.uwsgi_module import install
        from uwsgirouter.workers.app_loader import AppLoadError, load_app, no_app
        from uwsgirouter.workers.wsgi import WsgiWorker

        config = self.config
        install(config, worker_id=spec.number, numproc=self.arbiter.apps, masterpid=self.master_pid)
        if config.wsgi_file or config.module:
            try:
                app = load_app(config)
            except AppLoadError as exc:
                log.error("%s", exc)
                raise _NotBorn(APP_LOAD_ERROR) from None
        else:
            app = no_app
        return WsgiWorker(config, self.sockets.app, app, spec.number, pause=self.pause_switch)

    # -- the loop ---------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def _advance_lifecycle(self) -> None:
        """Tell every service when the instance becomes ready, reloads, is reloaded, or stops."""
        arbiter = self.arbiter
        workers = arbiter.workers.values()
        if arbiter.stopping or self.deferred_stop:
            phase = Lifecycle.STOPPING
        elif arbiter.reloading:
            phase = Lifecycle.RELOADING
        elif self.lifecycle in (Lifecycle.RELOADING, Lifecycle.RELOADED):
            phase = Lifecycle.RELOADED
        elif len(workers) == arbiter.routers + arbiter.expected_apps and all(w.booted for w in workers):
            phase = Lifecycle.READY
        else:
            return
        if phase is self.lifecycle or self.lifecycle is Lifecycle.STOPPING:
            return
        self.lifecycle = phase
        for service in self.services:
            self._guarded(service.name, service.on_lifecycle, phase)

    def run(self) -> int:
        _title(self.config, "master", self.config.procname_master or self.config.procname)
        own: list[Service] = [service for service in (self.server, self.subscriber) if service is not None]
        self.services = own + build_services(self)
        self.arbiter.on_other_exit = self._other_child_exited
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for master_signal in MASTER_SIGNALS:
            signal.signal(master_signal, self._on_signal)
        arbiter = self.arbiter
        try:
            arbiter.spawn_all()
            if arbiter.cheap:
                log.info("cheap mode enabled: waiting for a connection on the app sockets to spawn the workers")
            _run_master_hooks(self.config.hook_master_start, "master-start")
            while not (arbiter.finished and not self._services_busy()):
                busy = arbiter.reloading or arbiter.respawns or arbiter.stopping or self.deferred_stop
                self._wait(0.1 if busy or self.lifecycle is None else 1.0)
                signals, self.pending = self.pending, []
                for signum in signals:
                    self._handle_signal(signum)
                if self.deferred_stop and time.monotonic() >= self.deferred_stop:
                    self.deferred_stop = 0.0
                    arbiter.handle_signal(signal.SIGTERM)
                self.act_on_requests()  # what services asked for (control.py)
                arbiter.reap()
                arbiter.tick()
                self._advance_lifecycle()
                now = time.monotonic()
                for service in self.services:
                    due = service.next_due()
                    if due is not None and due <= now:
                        self._guarded(service.name, service.tick, now)
            log.info("goodbye")
            return 0
        finally:
            self._kill_leftovers()
            for service in self.services:
                self._guarded(service.name, service.close)
            self.sockets.close()

    def _services_busy(self) -> bool:
        """A service still has children on their way out (the Emperor's vassals): the master waits for them."""
        return any(service.busy() for service in self.services)

    def _other_child_exited(self, pid: int, status: int) -> None:
        """A reaped child that is not a worker: the service that started it hears of it."""
        for service in self.services:
            try:
                if service.child_exited(pid, status):
                    return
            except Exception:
                log.exception("unexpected error in %s; the master goes on", service.name)
                return

    def _handle_signal(self, signum: int) -> None:
        """Subscriptions first: a node that stops tells its routers before its workers stop accepting."""
        if signum == signal.SIGHUP and self.config.exit_on_reload:
            log.info("exit-on-reload: stopping instead of reloading")
            signum = signal.SIGTERM
        subscriber = self.subscriber
        announcing = subscriber is not None and not subscriber.blocked and bool(subscriber.targets)
        if signum == signal.SIGTERM and announcing and not self.arbiter.stopping and not self.deferred_stop:
            assert subscriber is not None
            subscriber.stop_announcing()
            # Serve on for a moment while the routers drop this node, then stop gracefully.
            self.deferred_stop = time.monotonic() + UNSUBSCRIBE_GRACE_S
            self._advance_lifecycle()
            return
        if signum == signal.SIGTSTP:  # uWSGI's pause/resume switch, as the fifo's p
            self.request_pause(None)
            return
        if signum == signal.SIGHUP:
            self.reopen_log_files()
            self.arbiter.reload(brutal=self.take_brutal_reload())
        else:
            self.arbiter.handle_signal(signum)
        self._advance_lifecycle()  # services hear of a stop or reload at once (subscribers unsubscribe first)

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a subscription datagram or a failure report arrives, or ``timeout``."""
        owners = {fd: service for service in self.services for fd in service.filenos()}
        watched = [self._wakeup_r, *owners]
        dues = [due for service in self.services if (due := service.next_due()) is not None]
        if dues:
            timeout = max(0.0, min(timeout, min(dues) - time.monotonic()))
        writers = {fd: service for service in self.services for fd in service.writable_filenos()}
        readable, writable, _ = select.select(watched, list(writers), [], timeout)
        now = time.monotonic()
        for fd in writable:
            self._guarded(writers[fd].name, writers[fd].on_writable, fd, now)
        for fd in readable:
            if fd in owners:
                self._guarded(owners[fd].name, owners[fd].on_readable, fd, now)
            elif fd == self._wakeup_r:
                try:
                    while os.read(self._wakeup_r, 512):
                        pass
                except BlockingIOError:
                    pass

    def _guarded(self, what: str, handler: Callable[..., object], *args: object) -> None:
        """Run one master-side handler; an exception it did not expect is a bug in that subsystem, not a reason
        to stop routing: it is logged with its traceback (once per subsystem and kind, then counted) and the
        master goes on."""
        try:
            handler(*args)
        except Exception as exc:
            seen = (what, type(exc).__name__)
            count = self.handler_errors.get(seen, 0) + 1
            self.handler_errors[seen] = count
            if count == 1:
                log.exception("unexpected error in %s; the master goes on", what)
            else:
                self.handler_notes.error("unexpected error in %s again (%d times): %r", what, count, exc)

    def _kill_leftovers(self) -> None:
        """On an error exit, no worker may outlive the master."""
        for pid in list(self.arbiter.workers):
            self.arbiter.oscalls.kill(pid, signal.SIGKILL)


def _title(config: Config, name: str, fixed: str | None) -> None:
    spaced = config.procname_prefix_spaced + " " if config.procname_prefix_spaced else ""
    set_title(name, config.procname_prefix + spaced, config.procname_append, fixed)


def _run_master_hooks(hooks: Sequence[Hook], phase: str) -> None:
    """A hook that fails stops the instance, as in uWSGI ("FATAL hook failed, destroying instance")."""
    try:
        run_hooks(hooks, phase)
    except HookFailed as exc:
        raise HaltServer(str(exc), 1) from None


def run_master(config: Config, argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> int:
    """Bind, write the pidfile, drop privileges, supervise; clean up whatever happens."""
    set_process_label("master")
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            raise ConfigError(f"--chdir {config.chdir}: {exc.strerror}") from None
    pidfiles: list[Pidfile] = []
    try:
        if config.pidfile:
            pidfiles.append(Pidfile(config.pidfile))
            pidfiles[-1].create(os.getpid())
        master = Master(config, argv, environ)
        master.pidfiles = pidfiles  # the same list: --pidfile2 joins it below
        preload()
        as_root = os.getuid() == 0
        if as_root:
            _run_master_hooks(config.hook_as_root, "as-root")
        drop_privileges(config.uid, config.gid)
        if as_root:
            _run_master_hooks(config.hook_as_user, "as-user")
        elif config.hook_as_root or config.hook_as_user:
            log.info("--hook-as-root and --hook-as-user run only when started as root (as in uWSGI): not run")
        _run_master_hooks(config.hook_pre_app, "pre-app")
        if config.pidfile2:
            pidfiles.append(Pidfile(config.pidfile2))
            pidfiles[-1].create(os.getpid())
        return master.run()
    finally:
        for pidfile in pidfiles:
            pidfile.unlink()
