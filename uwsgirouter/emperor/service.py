"""The Emperor as a master service: scans the vassal files, spawns, reloads, stops and respawns vassals.

It runs in the master beside the router (uWSGI forks a separate Emperor process when the instance has a
master or sockets; here the master's loop is the Emperor's loop): the master reaps its children and hands
the vassals' deaths to ``child_exited``. A reload of the master (SIGHUP) leaves the vassals alone; a stop of
the master stops them, gracefully on SIGTERM, and the master leaves once they are gone (killed after
--reload-mercy). The log lines are uWSGI's ("[emperor] vassal NAME has been spawned"); where uWSGI's Emperor
logs nothing (a vassal's death) a line in the same style says what happened.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from uwsgirouter.config import Config
from uwsgirouter.emperor import ondemand, protocol
from uwsgirouter.emperor.scanner import Found, Scanner
from uwsgirouter.emperor.stats import EmperorStatsServer, bind_emperor_stats
from uwsgirouter.emperor.throttle import MAXIMUM, THROTTLING, Blacklisted, after_death, allowed_at
from uwsgirouter.emperor.vassal import Vassal, VassalArgs
from uwsgirouter.errors import ConfigError
from uwsgirouter.oscalls import describe_status
from uwsgirouter.proc import Pidfile
from uwsgirouter.services.base import Lifecycle, Service

log = logging.getLogger("uwsgirouter.master")

#: How often the heartbeats and stop deadlines are looked at, between two scans.
CHECK_INTERVAL_S = 1.0


def vassal_args(config: Config) -> VassalArgs:
    """uWSGI's vassal command line: templates, includes and --set before the file, templates and includes
    after it, each path as given (relative to the vassal's directory). The binary is uwsgirouter itself (the
    same Python) unless --binary-path names another."""
    binary = (config.binary_path,) if config.binary_path else (sys.executable, "-m", "uwsgirouter")

    def options(*pairs: tuple[str, Sequence[str]]) -> tuple[str, ...]:
        return tuple(word for option, values in pairs for value in values for word in (option, value))

    before = options(
        ("--inherit", config.vassals_inherit_before),
        ("--include", config.vassals_include_before),
        ("--set", config.vassals_set),
    )
    after = options(("--inherit", config.vassals_inherit), ("--include", config.vassals_include))
    return VassalArgs(binary, before, after)


class Emperor(Service):
    name = "the Emperor"

    def __init__(
        self,
        scanners: Sequence[Scanner],
        args: VassalArgs,
        config: Config,
        stop_mode: Callable[[], str],
    ) -> None:
        """``stop_mode``: the master's stop in progress ("", "graceful" or "immediate")."""
        self.scanners = list(scanners)
        self.args = args
        #: the environment vassals start from: the master's, as it is when each vassal starts (hooks' putenv)
        self.environ: Mapping[str, str] = os.environ
        self.freq = float(config.emperor_freq)
        self.throttle_ms = config.emperor_throttle
        self.max_throttle_ms = config.emperor_max_throttle
        self.no_blacklist = config.emperor_no_blacklist
        self.required_heartbeat = float(config.emperor_required_heartbeat)
        self.curse_tolerance = float(config.emperor_curse_tolerance)
        self.reload_mercy = float(config.reload_mercy)
        self.graceful_shutdown = config.emperor_graceful_shutdown
        self.stop_mode = stop_mode
        self.on_demand_extension = config.emperor_on_demand_extension
        self.on_demand_directory = config.emperor_on_demand_directory
        self.backlog = config.listen
        self.vassals: dict[str, Vassal] = {}
        #: on-demand vassals waiting for a connection on their socket (no process)
        self.sleeping: dict[str, Vassal] = {}
        self.blacklist: dict[str, Blacklisted] = {}
        #: vassals whose respawn waits for its throttle: name -> (wall-clock due, where it was found)
        self.waiting: dict[str, tuple[float, Vassal]] = {}
        self.reported: set[str] = set()  #: files in other formats, named once each
        self.next_scan = 0.0
        self.next_check = 0.0
        self.ragnarok = 0.0  #: when the master's stop began (monotonic), 0 before
        self.pidfile: Pidfile | None = None
        #: --emperor-stats, a service of its own (the registry runs it beside this one)
        self.stats: EmperorStatsServer | None = None
        log.info("*** starting uWSGI Emperor ***")

    # -- the master's loop ------------------------------------------------------------------------

    def filenos(self) -> Sequence[int]:
        wall = time.time()
        pairs = [v.fileno for v in self.vassals.values() if v.sock is not None]
        return pairs + [v.listener.fileno() for v in self.sleeping.values() if v.listener and v.wake_after <= wall]

    def on_readable(self, fd: int, now: float) -> None:
        vassal = next((v for v in self.vassals.values() if v.fileno == fd), None)
        if vassal is None:
            sleeper = next((v for v in self.sleeping.values() if v.listener and v.listener.fileno() == fd), None)
            if sleeper is not None and not self.ragnarok:
                del self.sleeping[sleeper.name]  # a connection: the vassal starts and serves it
                if not self._spawn(sleeper):
                    sleeper.wake_after = allowed_at(self.blacklist.get(sleeper.name))
                    self._sleep(sleeper)
            return
        data = vassal.receive()
        if data is None:
            vassal.close()
            self._curse(vassal)
            return
        for byte in data:
            self._message(vassal, byte)

    def next_due(self) -> float | None:
        if self.ragnarok:
            return self.next_check
        return min(self.next_scan, self.next_check)

    def tick(self, now: float) -> None:
        if now >= self.next_check:
            self.next_check = now + CHECK_INTERVAL_S
            self._check(now)
        if self.ragnarok:
            return
        if now >= self.next_scan:
            self.next_scan = now + self.freq
            self.scan()

    def on_lifecycle(self, event: Lifecycle) -> None:
        if event is Lifecycle.STOPPING and not self.ragnarok:
            self.ragnarok = time.monotonic()
            self.next_check = 0.0
            graceful = self.stop_mode() != "immediate" or self.graceful_shutdown
            log.info("[emperor] *** RAGNAROK EVOKED ***")
            for vassal in list(self.vassals.values()):
                self._stop(vassal, graceful)
            self.waiting.clear()
            for vassal in self.sleeping.values():
                _close_listener(vassal)
            self.sleeping.clear()

    def busy(self) -> bool:
        return bool(self.vassals)

    def child_exited(self, pid: int, status: int) -> bool:
        vassal = next((v for v in self.vassals.values() if v.pid == pid), None)
        if vassal is None:
            return False
        self._died(vassal, status)
        return True

    def rescan(self) -> None:
        """The master fifo's ``E``: scan at the next turn of the loop."""
        self.next_scan = 0.0

    def close(self) -> None:
        for vassal in self.vassals.values():
            log.warning("[emperor] NO MERCY for vassal %s !!!", vassal.name)
            vassal.kill()
            vassal.close()
            _close_listener(vassal)
        self.vassals.clear()
        for vassal in self.sleeping.values():
            _close_listener(vassal)
        self.sleeping.clear()
        if self.pidfile is not None:
            self.pidfile.unlink()
        log.info("The Emperor is buried.")

    # -- scanning -----------------------------------------------------------------------------------

    def scan(self) -> None:
        """uWSGI's scan: new files spawn, newer ones reload, vanished ones stop."""
        for scanner in self.scanners:
            found, others = scanner.scan()
            for name in others:
                if name not in self.reported:
                    self.reported.add(name)
                    log.warning(
                        "[emperor] vassal %s is not run: uwsgirouter's Emperor runs INI vassal files only", name
                    )
            for item in found:
                vassal = self.vassals.get(item.name)
                sleeper = self.sleeping.get(item.name)
                if sleeper is not None:
                    if item.mtime_ns > sleeper.last_mod:  # read when it starts
                        sleeper.last_mod = item.mtime_ns
                        log.info('[emperor] updated configuration for "on demand" instance %s', item.name)
                elif vassal is None:
                    if item.name not in self.waiting:
                        self._add(scanner, item)
                elif item.mtime_ns > vassal.last_mod and not vassal.stopping:
                    self._reload(vassal, item.mtime_ns)
            for vassal in [v for v in self.vassals.values() if v.monitor == str(scanner)]:
                if not vassal.stopping and not scanner.exists(vassal.name):
                    self._stop(vassal, graceful=True)
            for name, (_, vassal) in list(self.waiting.items()):
                if vassal.monitor == str(scanner) and not scanner.exists(name):
                    del self.waiting[name]
            for vassal in [v for v in self.sleeping.values() if v.monitor == str(scanner)]:
                if not scanner.exists(vassal.name):
                    del self.sleeping[vassal.name]
                    _close_listener(vassal)
                    log.info("[emperor] stop the uwsgi instance %s", vassal.name)
                    log.info("[emperor] removed uwsgi instance %s", vassal.name)

    def _add(self, scanner: Scanner, item: Found) -> None:
        if time.time() < allowed_at(self.blacklist.get(item.name)):
            return  # throttled: a later scan (or the respawn timer) tries again
        vassal = Vassal(item.name, item.cwd, str(scanner), item.mtime_ns)
        vassal.born = item.mtime_ns / 1e9  # uWSGI's born: the file's time when the vassal was added
        vassal.first_run = vassal.last_run = time.time()  # an on-demand vassal too, before it runs
        path = os.path.join(item.cwd, item.name)
        name = ondemand.socket_name(path, self.on_demand_extension, self.on_demand_directory)
        if name is None:
            self._spawn(vassal)
            return
        try:
            vassal.listener = ondemand.bind(name, item.cwd, self.backlog)
        except ConfigError as exc:
            log.error("[emperor] on-demand vassal %s: %s", item.name, exc)
            self._blacklist(item.name)
            return
        self._sleep(vassal)

    def _sleep(self, vassal: Vassal, back: bool = False) -> None:
        """An on-demand vassal waits (again) for a connection on its socket."""
        assert vassal.listener is not None
        self.sleeping[vassal.name] = vassal
        vassal.pid = -1
        vassal.ready = vassal.accepting = False
        vassal.cursed_at = 0.0
        vassal.stopping = vassal.killed = False
        what = 'back to "on demand" mode' if back else '"on demand" instance detected'
        log.info(
            '[uwsgi-emperor] %s -> %s, waiting for connections on socket "%s" ...',
            vassal.name,
            what,
            vassal.listener.name,
        )

    def _spawn(self, vassal: Vassal) -> bool:
        try:
            vassal.spawn(self.args, self.environ)
        except OSError as exc:
            log.error("[emperor] cannot spawn vassal %s: %s", vassal.name, exc.strerror or exc)
            self._blacklist(vassal.name)
            return False
        self.vassals[vassal.name] = vassal
        log.info("[emperor] vassal %s started (pid: %d)", vassal.name, vassal.pid)
        return True

    def _reload(self, vassal: Vassal, mtime_ns: int) -> None:
        if not vassal.send(protocol.RELOAD):
            self._curse(vassal)
            return
        vassal.respawns += 1
        vassal.last_mod = mtime_ns
        vassal.last_run = time.time()
        vassal.ready = vassal.accepting = False
        log.info("[emperor] reload the uwsgi instance %s", vassal.name)

    def _stop(self, vassal: Vassal, graceful: bool) -> None:
        if vassal.stopping:
            return
        vassal.send(protocol.GRACEFUL_STOP if graceful else protocol.STOP)
        vassal.stopping = True
        vassal.cursed_at = time.monotonic()
        log.info("[emperor] stop the uwsgi instance %s", vassal.name)

    def _back_to_sleep(self, vassal: Vassal) -> None:
        """An on-demand vassal asked to stop (it was idle): it stops and waits for the next connection."""
        if vassal.stopping:
            return
        vassal.send(protocol.GRACEFUL_STOP if self.graceful_shutdown else protocol.STOP)
        vassal.stopping = vassal.to_sleep = True
        vassal.cursed_at = time.monotonic()
        log.info("[emperor] bringing back instance %s to on-demand mode", vassal.name)

    def _curse(self, vassal: Vassal) -> None:
        """Its end of the socketpair closed: it is leaving; killed if it has not left within the tolerance."""
        if vassal.cursed_at:
            return
        vassal.cursed_at = time.monotonic()
        log.info("[emperor] curse the uwsgi instance %s (pid: %d)", vassal.name, vassal.pid)

    # -- what vassals say and do --------------------------------------------------------------------

    def _message(self, vassal: Vassal, byte: int) -> None:
        now = time.time()
        if byte == protocol.LOYAL:
            vassal.loyal, vassal.last_loyal = True, now
            self.blacklist.pop(vassal.name, None)
            log.info("[emperor] vassal %s is now loyal", vassal.name)
        elif byte == protocol.HEARTBEAT:
            vassal.last_heartbeat = now
        elif byte == protocol.READY:
            vassal.ready, vassal.last_ready = True, now
            log.info("[emperor] vassal %s has been spawned", vassal.name)
        elif byte == protocol.ACCEPTING:
            vassal.accepting, vassal.last_accepting = True, now
            log.info("[emperor] vassal %s is ready to accept requests", vassal.name)
        elif byte == protocol.STOP_ME and vassal.listener is not None:
            self._back_to_sleep(vassal)
        elif byte == protocol.STOP_ME:
            self._stop(vassal, graceful=False)
        else:
            what = protocol.VASSAL_MESSAGES.get(byte, "unknown")
            log.info("[emperor] vassal %s sent message %d (%s): not supported, ignored", vassal.name, byte, what)

    def _died(self, vassal: Vassal, status: int) -> None:
        del self.vassals[vassal.name]
        vassal.close()
        if vassal.to_sleep and not self.ragnarok:
            self._sleep(vassal, back=True)
            return
        exiled = os.WIFEXITED(status) and os.WEXITSTATUS(status) == protocol.EXILE_CODE
        before = self.blacklist.get(vassal.name)
        if not vassal.loyal:
            self._blacklist(vassal.name)
        log.info("[emperor] removed uwsgi instance %s", vassal.name)
        if vassal.stopping or self.ragnarok or exiled:
            _close_listener(vassal)
        if vassal.stopping or self.ragnarok:
            return
        log.warning("[emperor] vassal %s (pid: %d) died (%s)", vassal.name, vassal.pid, describe_status(status))
        if exiled:
            return  # uWSGI: not respawned now; the next scan adds it again (throttled)
        due = 0.0 if vassal.loyal or self.no_blacklist else allowed_at(before)
        replacement = Vassal(vassal.name, vassal.cwd, vassal.monitor, vassal.last_mod)
        if vassal.listener is not None:  # uWSGI: an on-demand vassal waits for the next connection again
            replacement.listener, replacement.wake_after = vassal.listener, due
            replacement.born, replacement.first_run, replacement.respawns = (
                vassal.born,
                vassal.first_run,
                vassal.respawns,
            )
            self._sleep(replacement)
            return
        if due <= time.time():
            self._spawn(replacement)
        else:
            log.info("[emperor] vassal %s respawns in %.1f s (throttled)", vassal.name, due - time.time())
            self.waiting[vassal.name] = (due, replacement)

    def _blacklist(self, name: str) -> None:
        if self.no_blacklist:
            return
        record, notes = after_death(self.blacklist.get(name), time.time(), self.throttle_ms, self.max_throttle_ms)
        self.blacklist[name] = record
        if MAXIMUM in notes:
            log.warning("[emperor] maximum throttle level for vassal %s reached !!!", name)
        if THROTTLING in notes:
            log.warning("[emperor] unloyal bad behaving vassal found: %s throttling it...", name)

    def _check(self, now: float) -> None:
        """Heartbeats, stop deadlines, throttled respawns that are due."""
        wall = time.time()
        for vassal in list(self.vassals.values()):
            if vassal.killed:
                continue
            if vassal.last_heartbeat and vassal.last_heartbeat + self.required_heartbeat < wall:
                log.warning(
                    "[emperor] vassal %s sent no heartbeat in last %d seconds, brutally respawning it...",
                    vassal.name,
                    self.required_heartbeat,
                )
                vassal.last_heartbeat = 0.0
                vassal.kill()
            elif self.ragnarok and now - self.ragnarok >= self.reload_mercy:
                log.warning("[emperor] NO MERCY for vassal %s !!!", vassal.name)
                vassal.kill()
            elif vassal.cursed_at and not self.ragnarok and now - vassal.cursed_at >= self.curse_tolerance:
                log.warning("[emperor] vassal %s did not leave within %d s: SIGKILL", vassal.name, self.curse_tolerance)
                vassal.kill()
        if self.ragnarok:
            return
        for name, (due, vassal) in list(self.waiting.items()):
            if due <= wall and name not in self.vassals:
                del self.waiting[name]
                self._spawn(vassal)


def build_emperor(config: Config, stop_mode: Callable[[], str]) -> Emperor | None:
    if not config.emperor:
        return None
    cwd = os.getcwd()
    scanners = [Scanner(spec, cwd) for spec in config.emperor]
    emperor = Emperor(scanners, vassal_args(config), config, stop_mode)
    if config.emperor_stats is not None:
        listener = bind_emperor_stats(config.emperor_stats, config.listen)
        emperor.stats = EmperorStatsServer(listener, emperor, config.stats_http, config.stats_minified)
        log.info("*** Emperor stats server enabled on %s fd: %d ***", listener.name, listener.fileno())
    if config.emperor_pidfile:
        emperor.pidfile = Pidfile(config.emperor_pidfile)
        emperor.pidfile.create(os.getpid())
    return emperor


def _close_listener(vassal: Vassal) -> None:
    """The on-demand socket goes with its vassal (its UNIX socket file too, if it is still the one bound)."""
    if vassal.listener is not None:
        vassal.listener.close()
        vassal.listener = None
