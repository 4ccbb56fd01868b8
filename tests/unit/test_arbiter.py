"""The master's logic, driven through a recording fake of the OS: no real fork, kill or wait."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from uwsgirouter.arbiter import (
    APP,
    APP_LOAD_ERROR,
    BACKOFF_FIRST_S,
    IMMEDIATE_STOP_GRACE_S,
    MIN_LIFETIME_S,
    RELOAD_BOOT_TIMEOUT_S,
    ROUTER,
    WORKER_BOOT_ERROR,
    WORKER_RECYCLED,
    Arbiter,
    WorkerSpec,
)
from uwsgirouter.errors import HaltServer
from uwsgirouter.heartbeat import Counters, HeartbeatTable
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

    def exit(self, status: int) -> None:
        raise AssertionError(f"the master called exit({status}): only a forked child may")


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
    fake.exit = lambda status: calls.append(status)  # type: ignore[method-assign]
    arbiter.spawn(ROUTER, 1)
    assert calls == [0]


def test_exit_status_helpers() -> None:
    from uwsgirouter.oscalls import describe_status, exit_code

    assert describe_status(exited(3)) == "exit status 3"
    assert describe_status(killed(signal.SIGKILL)).startswith("signal SIGKILL")
    assert exit_code(exited(4)) == 4
    assert exit_code(killed(signal.SIGTERM)) is None
    assert os.WIFSIGNALED(killed(signal.SIGTERM))


# --- edges tools/mutation found unguarded -----------------------------------------------------------


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_counters_of_exited_processes_add_up_per_worker_id() -> None:
    arbiter, fake = make()
    arbiter.spawn_all()
    for pid, (requests, exceptions, tx, running_us) in ((1001, (5, 1, 100, 7000)), (1002, (7, 2, 50, 3000))):
        slot = arbiter.workers[pid].spec.slot
        arbiter.heartbeats.beat(slot, pid, fake.now, requests=requests, counters=Counters(exceptions, tx, running_us))
        fake.now += 60
        fake.exits.append((pid, killed(signal.SIGKILL)))
        arbiter.reap()
        arbiter.tick()
    record = arbiter.records[ROUTER, 1]
    assert (record.requests, record.exceptions, record.tx, record.running_us) == (12, 3, 150, 10000)
    assert record.respawn_count == 3  # the first spawn and two respawns
    assert abs(record.last_spawn - time.time()) < 60


def test_a_beat_left_by_another_process_is_not_counted() -> None:
    arbiter, fake = make()
    arbiter.spawn_all()
    arbiter.heartbeats.beat(arbiter.workers[1001].spec.slot, 999, fake.now, requests=5)
    fake.exits += [(4242, exited(0)), (1001, killed(signal.SIGKILL))]  # 4242: a child that is no worker
    arbiter.reap()
    assert arbiter.records[ROUTER, 1].requests == 0


def test_no_free_heartbeat_slot_halts() -> None:
    arbiter, _ = make(routers=1)
    arbiter.heartbeats = HeartbeatTable(1)
    arbiter.spawn(ROUTER, 1)
    with pytest.raises(HaltServer) as info:
        arbiter.spawn(ROUTER, 2)
    assert (info.value.reason, info.value.exit_status) == ("no free heartbeat slot (internal error)", 1)


def test_the_child_exits_with_launchs_status_or_3_when_it_raises(caplog: pytest.LogCaptureFixture) -> None:
    arbiter, fake = make()
    exits: list[int] = []
    specs: list[WorkerSpec] = []
    fake.fork = lambda: 0  # type: ignore[method-assign]
    fake.exit = lambda status: exits.append(status)  # type: ignore[method-assign]

    def launch(spec: WorkerSpec) -> int:
        specs.append(spec)
        if spec.number == 2:
            raise RuntimeError("boom")
        return 7

    arbiter.launch = launch
    arbiter.spawn(ROUTER, 1)
    with caplog.at_level(logging.ERROR, "uwsgirouter.master"):
        arbiter.spawn(APP, 2)
    assert exits == [7, WORKER_BOOT_ERROR]
    assert [(spec.kind, spec.number) for spec in specs] == [(ROUTER, 1), (APP, 2)]
    assert messages(caplog) == ["worker 2 crashed"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_immediate_stop_kills_at_its_deadline_and_ignores_a_later_graceful_one(
    signum: int, caplog: pytest.LogCaptureFixture
) -> None:
    arbiter, fake = make(routers=1, apps=1)
    arbiter.spawn_all()
    arbiter.handle_signal(signum)
    assert arbiter.stopping == "immediate"
    assert all(worker.retiring_since == fake.now for worker in arbiter.workers.values())  # stats: "retiring"
    arbiter.handle_signal(signal.SIGTERM)
    arbiter.handle_signal(signum)
    assert fake.kills == [(1001, signal.SIGINT), (1002, signal.SIGINT)]
    fake.now += IMMEDIATE_STOP_GRACE_S - 0.01
    arbiter.tick()
    assert len(fake.kills) == 2
    fake.now += 0.01  # exactly at the deadline
    with caplog.at_level(logging.WARNING, "uwsgirouter.master"):
        arbiter.tick()
        arbiter.tick()  # once each
    assert fake.kills[2:] == [(1001, signal.SIGKILL), (1002, signal.SIGKILL)]
    assert messages(caplog) == [
        "fastrouter 1 (pid 1001) still running at the deadline: SIGKILL",
        "worker 1 (pid 1002) still running at the deadline: SIGKILL",
    ]


def test_a_graceful_stop_keeps_the_retiring_time_of_a_retiring_worker() -> None:
    arbiter, fake = make()
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    arbiter.reload()
    beat_all(arbiter, fake)
    arbiter.tick()
    retired = arbiter.workers[1001].retiring_since
    assert retired == fake.now
    fake.now += 1
    arbiter.stop("graceful")
    assert arbiter.workers[1001].retiring_since == retired
    assert arbiter.workers[1002].retiring_since == fake.now


def test_generations_and_reload_kinds(caplog: pytest.LogCaptureFixture) -> None:
    arbiter, fake = make(routers=1)
    arbiter.spawn_all()
    with caplog.at_level(logging.INFO, "uwsgirouter.master"):
        for number, (reread, brutal, signum) in enumerate(
            [(True, False, signal.SIGUSR2), (False, True, signal.SIGINT), (True, True, signal.SIGINT)], 1
        ):
            beat_all(arbiter, fake)
            arbiter.tick()
            arbiter.reload(reread=reread, brutal=brutal)
            assert arbiter.generation == number
            assert arbiter.workers[fake.forked[-1]].spec.generation == number
            beat_all(arbiter, fake)
            arbiter.tick()
            assert arbiter.reloading is False
            assert fake.kills[-1] == (fake.forked[-2], signum)
            fake.exits.append((fake.forked[-2], exited(0)))
            arbiter.reap()
    starts = [message for message in messages(caplog) if "starting generation" in message]
    assert starts == [
        "graceful reload: starting generation 1",
        "brutal reload of the workers: starting generation 2",
        "brutal reload: starting generation 3",
    ]


def test_a_new_generation_that_never_beats_takes_over_after_the_boot_timeout() -> None:
    arbiter, fake = make()
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    arbiter.reload()
    fake.now += RELOAD_BOOT_TIMEOUT_S - 0.01
    arbiter.heartbeats.beat(arbiter.workers[1001].spec.slot, 1001, fake.now)
    arbiter.tick()
    assert fake.kills == []
    fake.now += 0.01
    arbiter.heartbeats.beat(arbiter.workers[1001].spec.slot, 1001, fake.now)
    arbiter.tick()
    assert fake.kills == [(1001, signal.SIGUSR2)]


def test_a_retiring_worker_is_killed_once_just_after_its_mercy(caplog: pytest.LogCaptureFixture) -> None:
    arbiter, fake = make(worker_reload_mercy=5)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    arbiter.reload()
    beat_all(arbiter, fake)
    arbiter.tick()
    fake.now += 5  # exactly the mercy: not yet
    beat_all(arbiter, fake)
    arbiter.tick()
    assert fake.kills == [(1001, signal.SIGUSR2)]
    fake.now += 0.01
    beat_all(arbiter, fake)
    with caplog.at_level(logging.WARNING, "uwsgirouter.master"):
        arbiter.tick()
        arbiter.tick()
    assert fake.kills == [(1001, signal.SIGUSR2), (1001, signal.SIGKILL)]
    assert messages(caplog) == ["fastrouter 1 (pid 1001) did not finish within 5 s: SIGKILL"]


def test_a_boot_failure_of_the_new_generation_kills_only_its_own_workers(caplog: pytest.LogCaptureFixture) -> None:
    arbiter, fake = make(routers=0, apps=2)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    arbiter.reload()  # 1003 and 1004
    fake.exits.append((1003, exited(APP_LOAD_ERROR)))
    with caplog.at_level(logging.ERROR, "uwsgirouter.master"):
        arbiter.reap()
    assert fake.kills == [(1004, signal.SIGKILL)]
    assert arbiter.workers[1004].retiring_since == fake.now
    assert arbiter.reloading is False
    assert messages(caplog) == [
        "reload aborted: worker 1 of the new generation could not start (exit status 4); "
        "the previous workers keep serving"
    ]
    fake.exits.append((1004, killed(signal.SIGKILL)))
    arbiter.reap()
    assert not arbiter.respawns  # expected: it was told to go
    arbiter.reload()
    assert arbiter.reloading is True and arbiter.generation == 2


def test_a_new_worker_that_beat_before_a_boot_failure_is_respawned_and_the_reload_goes_on() -> None:
    arbiter, fake = make(routers=1)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    arbiter.reload()
    arbiter.heartbeats.beat(arbiter.workers[1002].spec.slot, 1002, fake.now)
    fake.exits.append((1002, exited(APP_LOAD_ERROR)))
    arbiter.reap()
    assert arbiter.reloading is True
    assert [(r.kind, r.number) for r in arbiter.respawns] == [(ROUTER, 1)]


@pytest.mark.parametrize("seen_by", ["tick", "reap"])
def test_one_booted_router_means_a_later_boot_failure_is_only_respawned(seen_by: str) -> None:
    arbiter, fake = make(routers=2)
    arbiter.spawn_all()
    arbiter.heartbeats.beat(arbiter.workers[1001].spec.slot, 1001, fake.now)
    if seen_by == "tick":
        arbiter.tick()
    else:  # it beat, then died before the master looked
        fake.exits.append((1001, killed(signal.SIGSEGV)))
        arbiter.reap()
    fake.exits.append((1002, exited(WORKER_BOOT_ERROR)))
    arbiter.reap()  # no HaltServer
    assert (ROUTER, 2) in [(r.kind, r.number) for r in arbiter.respawns]


def test_a_crash_before_the_first_beat_is_respawned_with_a_back_off() -> None:
    arbiter, fake = make()
    arbiter.spawn_all()
    fake.exits.append((1001, killed(signal.SIGSEGV)))
    arbiter.reap()
    assert [r.due for r in arbiter.respawns] == [fake.now + BACKOFF_FIRST_S]


def test_the_back_off_counts_quick_deaths_in_a_row_only(caplog: pytest.LogCaptureFixture) -> None:
    arbiter, fake = make()
    arbiter.spawn_all()
    delays = []
    with caplog.at_level(logging.WARNING, "uwsgirouter.master"):
        for life in (0.5, 0.5, MIN_LIFETIME_S, 0.5):  # a life of exactly MIN_LIFETIME_S was a real one
            (pid,) = arbiter.workers
            arbiter.heartbeats.beat(arbiter.workers[pid].spec.slot, pid, fake.now)
            arbiter.tick()
            fake.now += life
            fake.exits.append((pid, killed(signal.SIGSEGV)))
            arbiter.reap()
            delays.append(round(arbiter.respawns[0].due - fake.now, 3))
            fake.now = arbiter.respawns[0].due
            arbiter.tick()
    assert delays == [BACKOFF_FIRST_S, BACKOFF_FIRST_S * 2, 0.0, BACKOFF_FIRST_S]
    assert "fastrouter 1 died right after its start 2 time(s) in a row; next try in 0.2 s" in messages(caplog)


def test_heartbeats_of_every_worker_are_read(caplog: pytest.LogCaptureFixture) -> None:
    arbiter, fake = make(routers=3, router_harakiri=3)
    arbiter.spawn_all()
    arbiter.heartbeats.beat(arbiter.workers[1002].spec.slot, 1002, fake.now)  # 1001 never beats
    arbiter.heartbeats.beat(arbiter.workers[1003].spec.slot, 1003, fake.now)
    fake.now += 3  # exactly the limit: not yet
    arbiter.tick()
    assert fake.kills == []
    fake.now += 1
    with caplog.at_level(logging.ERROR, "uwsgirouter.master"):
        arbiter.tick()
        arbiter.tick()  # killed once
    assert fake.kills == [(1002, signal.SIGKILL), (1003, signal.SIGKILL)]
    assert messages(caplog) == [
        "HARAKIRI on fastrouter 2 (pid 1002): its loop has been stuck for 4 s",
        "HARAKIRI on fastrouter 3 (pid 1003): its loop has been stuck for 4 s",
    ]
    assert [arbiter.records[ROUTER, n].harakiri_count for n in (1, 2, 3)] == [0, 1, 1]
    assert ROUTER in arbiter.booted_kinds


def test_app_harakiri_only_for_a_request_running_longer_than_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    arbiter, fake = make(routers=0, apps=1, app_harakiri=5)
    arbiter.spawn_all()
    slot = arbiter.workers[1001].spec.slot
    arbiter.heartbeats.beat(slot, 1001, fake.now)  # idle
    fake.now += 60
    arbiter.heartbeats.beat(slot, 1001, fake.now, busy_since=fake.now - 5)  # busy for exactly the limit
    arbiter.tick()
    assert fake.kills == []
    arbiter.heartbeats.beat(slot, 1001, fake.now, busy_since=fake.now - 6)
    with caplog.at_level(logging.ERROR, "uwsgirouter.master"):
        arbiter.tick()
        arbiter.tick()
    assert fake.kills == [(1001, signal.SIGKILL)]
    assert messages(caplog) == ["HARAKIRI on worker 1 (pid 1001): one request has been running for 6 s"]
    assert arbiter.records[APP, 1].harakiri_count == 1


def test_a_worker_that_cannot_boot_says_how_it_ended() -> None:
    arbiter, fake = make(apps=1, routers=0)
    arbiter.spawn_all()
    fake.exits.append((1001, exited(APP_LOAD_ERROR)))
    with pytest.raises(HaltServer) as info:
        arbiter.reap()
    assert info.value.reason == "worker 1 could not start (exit status 4); see the log above"


def test_going_cheap_retires_the_app_workers_only_and_spawns_none_until_told() -> None:
    arbiter, fake = make(routers=1, apps=2)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    fake.exits.append((1003, killed(signal.SIGSEGV)))  # dies right after its start: respawn after a back-off
    arbiter.reap()
    arbiter.go_cheap()
    assert fake.kills == [(1002, signal.SIGUSR2)], "retired gracefully (uWSGI kills), the router untouched"
    fake.exits.append((1002, exited(0)))
    fake.now += 60
    arbiter.reap()
    arbiter.tick()
    assert list(arbiter.workers) == [1001] and not arbiter.respawns  # the pending respawn went too
    arbiter.go_cheap()
    arbiter.reload()  # a reload while cheap: a new router, still no app worker
    assert fake.forked == [1001, 1002, 1003, 1004]
    beat_all(arbiter, fake)
    arbiter.tick()
    assert not arbiter.reloading and (1001, signal.SIGUSR2) in fake.kills
    arbiter.leave_cheap()
    assert [(w.spec.kind, w.spec.number) for w in arbiter.workers.values()][-2:] == [(APP, 1), (APP, 2)]
    assert not arbiter.cheap and fake.forked[-2:] == [1005, 1006]


def test_cheap_from_the_start_forks_routers_only() -> None:
    arbiter, fake = make(routers=1, apps=2, cheap=True)
    arbiter.spawn_all()
    assert [w.spec.kind for w in arbiter.workers.values()] == [ROUTER]
    arbiter.stop("graceful")
    arbiter.leave_cheap()  # a connection during a stop spawns nothing
    assert fake.forked == [1001]


def test_a_killed_worker_does_not_stop_the_check_of_the_others() -> None:
    arbiter, fake = make(routers=3, router_harakiri=3)
    arbiter.spawn_all()
    for pid in (1001, 1002, 1003):
        arbiter.heartbeats.beat(arbiter.workers[pid].spec.slot, pid, fake.now)
    fake.now += 4
    for pid in (1001, 1003):  # 1002 is stuck
        arbiter.heartbeats.beat(arbiter.workers[pid].spec.slot, pid, fake.now)
    arbiter.tick()
    assert fake.kills == [(1002, signal.SIGKILL)]
    fake.now += 4
    arbiter.heartbeats.beat(arbiter.workers[1001].spec.slot, 1001, fake.now)  # 1003 is stuck now
    arbiter.tick()
    assert fake.kills == [(1002, signal.SIGKILL), (1003, signal.SIGKILL)]


def test_harakiris_add_up_per_worker_id() -> None:
    arbiter, fake = make(routers=1, router_harakiri=3)
    arbiter.spawn_all()
    for _ in range(2):
        (pid,) = arbiter.workers
        arbiter.heartbeats.beat(arbiter.workers[pid].spec.slot, pid, fake.now)
        fake.now += 4
        arbiter.tick()
        fake.exits.append((pid, killed(signal.SIGKILL)))
        arbiter.reap()
        arbiter.tick()
    assert arbiter.records[ROUTER, 1].harakiri_count == 2


def test_a_recycled_app_worker_is_respawned_at_once_under_its_id() -> None:
    arbiter, fake = make(routers=1, apps=2)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    fake.now += 0.5  # even right after its start: leaving to be replaced is not a crash
    fake.exits.append((1003, exited(WORKER_RECYCLED)))
    arbiter.reap()
    arbiter.tick()
    assert fake.forked[-1] == 1004 and arbiter.workers[1004].spec.kind == APP
    assert arbiter.workers[1004].spec.number == 2 and arbiter.records[APP, 2].respawn_count == 2


def test_dead_workers_are_respawned_unless_cheap_holds_back_the_app_workers() -> None:
    arbiter, fake = make(routers=1, apps=1)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    fake.now += 60
    fake.exits.append((1002, killed(signal.SIGKILL)))  # an app worker, not cheap: respawned
    arbiter.reap()
    arbiter.tick()
    assert fake.forked == [1001, 1002, 1003] and arbiter.workers[1003].spec.kind == APP
    arbiter.go_cheap()
    fake.exits.append((1001, killed(signal.SIGKILL)))  # the router, while cheap: respawned
    arbiter.reap()
    arbiter.tick()
    assert fake.forked == [1001, 1002, 1003, 1004] and arbiter.workers[1004].spec.kind == ROUTER


def test_going_cheap_counts_and_keeps_the_routers_respawn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uwsgirouter.master")
    arbiter, fake = make(routers=1, apps=3, worker_reload_mercy=10)
    arbiter.spawn_all()
    fake.exits.append((1001, killed(signal.SIGSEGV)))  # the router dies at once: respawn after a back-off
    arbiter.reap()
    arbiter.go_cheap()
    assert "going cheap: 3 app worker(s) retiring; spawned again on the next connection" in messages(caplog)
    fake.now += BACKOFF_FIRST_S
    arbiter.tick()
    assert fake.forked[-1] == 1005 and arbiter.workers[1005].spec.kind == ROUTER
    # a retiring app worker that does not finish within the mercy is killed
    fake.now += 11
    arbiter.tick()
    assert sorted(pid for pid, signum in fake.kills if signum == signal.SIGKILL) == [1002, 1003, 1004]


def test_going_cheap_is_refused_without_app_workers_or_during_a_stop() -> None:
    arbiter, fake = make(routers=1, apps=0)
    arbiter.spawn_all()
    arbiter.go_cheap()
    assert not arbiter.cheap and fake.kills == []
    arbiter, fake = make(routers=1, apps=1)
    arbiter.spawn_all()
    arbiter.stop("graceful")
    arbiter.go_cheap()
    assert not arbiter.cheap and fake.kills == [(1001, signal.SIGTERM), (1002, signal.SIGTERM)]


def test_signal_apps_reaches_the_app_workers_only() -> None:
    arbiter, fake = make(routers=1, apps=2)
    arbiter.spawn_all()
    arbiter.signal_apps(signal.SIGTSTP)
    assert fake.kills == [(1002, signal.SIGTSTP), (1003, signal.SIGTSTP)]


def test_a_reload_asked_for_while_the_old_workers_still_finish_waits_for_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two reloads in a row (``echo r > fifo`` twice): the second comes while the first one's old workers
    still finish their requests and hold their heartbeat slots. It starts once they left; the master never
    stops for want of a slot."""
    arbiter, fake = make(routers=1, apps=1)
    arbiter.spawn_all()
    beat_all(arbiter, fake)
    arbiter.tick()
    arbiter.handle_signal(signal.SIGHUP)
    beat_all(arbiter, fake)
    arbiter.tick()  # generation 1 serves; 1001 and 1002 retire
    assert not arbiter.reloading
    with caplog.at_level(logging.INFO, "uwsgirouter.master"):
        arbiter.handle_signal(signal.SIGHUP)
        arbiter.tick()
    assert fake.forked == [1001, 1002, 1003, 1004], "no slot for a third generation yet"
    assert "it starts once they left" in caplog.text
    fake.exits += [(1001, exited(0)), (1002, exited(0))]
    arbiter.reap()
    arbiter.tick()
    assert fake.forked == [1001, 1002, 1003, 1004, 1005, 1006]
    assert arbiter.generation == 2 and arbiter.reloading
