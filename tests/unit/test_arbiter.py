"""The master's logic, driven through a recording fake of the OS: no real fork, kill or wait."""

from __future__ import annotations

import os
import signal

import pytest

from uwsgirouter.arbiter import (
    APP,
    APP_LOAD_ERROR,
    BACKOFF_FIRST_S,
    IMMEDIATE_STOP_GRACE_S,
    ROUTER,
    Arbiter,
    WorkerSpec,
)
from uwsgirouter.errors import HaltServer
from uwsgirouter.heartbeat import HeartbeatTable
from uwsgirouter.oscalls import OsCalls


def exited(code: int) -> int:
    return code << 8


def killed(signum: int) -> int:
    return signum


class FakeOs(OsCalls):
    def __init__(self) -> None:
        self.now = 100.0
        self.next_pid = 1000
        self.forked: list[int] = []
        self.kills: list[tuple[int, int]] = []
        self.exits: list[tuple[int, int]] = []

    def fork(self) -> int:
        self.next_pid += 1
        self.forked.append(self.next_pid)
        return self.next_pid

    def kill(self, pid: int, signum: int) -> None:
        self.kills.append((pid, signum))

    def waitpid(self) -> tuple[int, int]:
        return self.exits.pop(0) if self.exits else (0, 0)

    def monotonic(self) -> float:
        return self.now


def make(routers: int = 1, apps: int = 0, **kwargs: float) -> tuple[Arbiter, FakeOs]:
    fake = FakeOs()
    launched: list[WorkerSpec] = []

    def launch(spec: WorkerSpec) -> int:
        launched.append(spec)
        return 0

    arbiter = Arbiter(
        launch=launch,
        heartbeats=HeartbeatTable(2 * (routers + apps)),
        routers=routers,
        apps=apps,
        oscalls=fake,
        **kwargs,  # type: ignore[arg-type]
    )
    return arbiter, fake


def beat_all(arbiter: Arbiter, fake: FakeOs) -> None:
    for pid, worker in arbiter.workers.items():
        arbiter.heartbeats.beat(worker.spec.slot, pid, fake.now)


def test_spawn_all_forks_routers_then_apps_with_distinct_slots() -> None:
    arbiter, fake = make(routers=2, apps=3)
    arbiter.spawn_all()
    kinds = [(w.spec.kind, w.spec.number) for w in arbiter.workers.values()]
    assert kinds == [(ROUTER, 1), (ROUTER, 2), (APP, 1), (APP, 2), (APP, 3)]
    assert len({w.spec.slot for w in arbiter.workers.values()}) == 5
    assert fake.forked == [1001, 1002, 1003, 1004, 1005]


def test_unexpected_death_is_respawned_at_once_after_a_long_life() -> None:
    arbiter, fake = make()
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    fake.now += 60
    fake.exits.append((1001, killed(signal.SIGKILL)))
    arbiter.reap()
    arbiter.tick()
    assert 1001 not in arbiter.workers
    assert [w.spec.number for w in arbiter.workers.values()] == [1]
    assert fake.forked == [1001, 1002]


def test_quick_deaths_back_off_exponentially() -> None:
    arbiter, fake = make()
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    delays = []
    for _ in range(4):
        (pid,) = arbiter.workers
        fake.now += 0.01
        fake.exits.append((pid, killed(signal.SIGSEGV)))
        arbiter.reap()
        due = arbiter.respawns[0].due
        delays.append(round(due - fake.now, 3))
        fake.now = due
        arbiter.tick()
    assert delays == [BACKOFF_FIRST_S, BACKOFF_FIRST_S * 2, BACKOFF_FIRST_S * 4, BACKOFF_FIRST_S * 8]


def test_a_worker_that_cannot_boot_at_start_halts_the_master() -> None:
    arbiter, fake = make(apps=1, routers=0)
    arbiter.spawn_all()
    fake.exits.append((1001, exited(APP_LOAD_ERROR)))
    with pytest.raises(HaltServer) as info:
        arbiter.reap()
    assert info.value.exit_status == APP_LOAD_ERROR
    assert "worker 1 could not start" in info.value.reason


def test_a_worker_that_beat_before_dying_was_booted_even_if_the_master_had_not_looked_yet() -> None:
    arbiter, fake = make(apps=0, routers=1)
    arbiter.spawn_all()
    beat_all(arbiter, fake)  # the router beat, then crashed before the master's next tick
    fake.exits.append((1001, exited(APP_LOAD_ERROR)))
    arbiter.reap()
    assert [respawn.kind for respawn in arbiter.respawns] == [ROUTER]


def test_a_boot_failure_after_a_successful_boot_is_only_respawned() -> None:
    arbiter, fake = make(apps=1, routers=0)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    fake.exits.append((1001, exited(APP_LOAD_ERROR)))
    arbiter.reap()
    assert arbiter.respawns


def test_graceful_stop_sends_term_then_kill_at_the_mercy_deadline() -> None:
    arbiter, fake = make(routers=1, apps=1, reload_mercy=10)
    arbiter.spawn_all()
    arbiter.handle_signal(signal.SIGTERM)
    assert sorted(fake.kills) == [(1001, signal.SIGTERM), (1002, signal.SIGTERM)]
    fake.exits.append((1001, exited(0)))
    arbiter.reap()
    fake.now += 9
    arbiter.tick()
    assert (1002, signal.SIGKILL) not in fake.kills
    fake.now += 2
    arbiter.tick()
    assert (1002, signal.SIGKILL) in fake.kills
    fake.exits.append((1002, killed(signal.SIGKILL)))
    arbiter.reap()
    assert arbiter.finished
    assert not arbiter.respawns


def test_immediate_stop_escalates_a_graceful_one() -> None:
    arbiter, fake = make()
    arbiter.spawn_all()
    arbiter.handle_signal(signal.SIGTERM)
    arbiter.handle_signal(signal.SIGINT)
    assert fake.kills == [(1001, signal.SIGTERM), (1001, signal.SIGINT)]
    fake.now += IMMEDIATE_STOP_GRACE_S + 0.1
    arbiter.tick()
    assert fake.kills[-1] == (1001, signal.SIGKILL)


def test_reload_starts_the_new_generation_before_retiring_the_old() -> None:
    arbiter, fake = make(routers=1, apps=1)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    arbiter.handle_signal(signal.SIGHUP)
    assert fake.forked == [1001, 1002, 1003, 1004]
    arbiter.tick()
    assert fake.kills == [], "the old workers must keep serving until the new ones are up"
    beat_all(arbiter, fake)
    arbiter.tick()
    assert sorted(fake.kills) == [(1001, signal.SIGUSR2), (1002, signal.SIGUSR2)]
    fake.exits += [(1001, exited(0)), (1002, exited(0))]
    arbiter.reap()
    arbiter.tick()
    assert sorted(arbiter.workers) == [1003, 1004]
    assert not arbiter.respawns


def test_a_reload_whose_workers_cannot_boot_keeps_the_old_ones() -> None:
    arbiter, fake = make(routers=0, apps=1)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    arbiter.handle_signal(signal.SIGHUP)
    fake.exits.append((1002, exited(APP_LOAD_ERROR)))
    arbiter.reap()
    arbiter.tick()
    assert (1001, signal.SIGUSR2) not in fake.kills
    assert not arbiter.reloading
    assert 1001 in arbiter.workers


def test_a_retiring_worker_past_its_mercy_is_killed() -> None:
    arbiter, fake = make(worker_reload_mercy=5)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    arbiter.handle_signal(signal.SIGHUP)
    beat_all(arbiter, fake)
    arbiter.tick()
    fake.now += 6
    beat_all(arbiter, fake)
    arbiter.tick()
    assert (1001, signal.SIGKILL) in fake.kills


def test_an_invalid_configuration_on_reload_keeps_everything_running() -> None:
    def broken() -> None:
        raise ValueError("bad value")

    arbiter, fake = make()
    arbiter.reload_config = broken
    arbiter.spawn_all()
    arbiter.handle_signal(signal.SIGHUP)
    assert fake.forked == [1001]
    assert not arbiter.reloading


def test_router_harakiri_kills_a_stuck_loop() -> None:
    arbiter, fake = make(router_harakiri=3)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    fake.now += 2
    arbiter.tick()
    assert not fake.kills
    fake.now += 2
    arbiter.tick()
    assert fake.kills == [(1001, signal.SIGKILL)]


def test_app_harakiri_kills_a_worker_stuck_on_one_request() -> None:
    arbiter, fake = make(routers=0, apps=1, app_harakiri=5)
    arbiter.spawn_all()
    worker = arbiter.workers[1001]
    arbiter.heartbeats.beat(worker.spec.slot, 1001, fake.now, busy_since=fake.now)
    fake.now += 6
    arbiter.heartbeats.beat(worker.spec.slot, 1001, fake.now, busy_since=fake.now - 6)
    arbiter.tick()
    assert fake.kills == [(1001, signal.SIGKILL)]


def test_the_child_side_of_fork_runs_launch_and_exits() -> None:
    arbiter, fake = make()
    calls: list[int] = []
    fake.fork = lambda: 0  # type: ignore[method-assign]
    fake.exit = calls.append  # type: ignore[method-assign]
    arbiter.spawn(ROUTER, 1)
    assert calls == [0]


def test_exit_status_helpers() -> None:
    from uwsgirouter.oscalls import describe_status, exit_code

    assert describe_status(exited(3)) == "exit status 3"
    assert describe_status(killed(signal.SIGKILL)).startswith("signal SIGKILL")
    assert exit_code(exited(4)) == 4
    assert exit_code(killed(signal.SIGTERM)) is None
    assert os.WIFSIGNALED(killed(signal.SIGTERM))
