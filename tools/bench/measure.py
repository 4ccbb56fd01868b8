"""One measured run: the load (wrk through nginx, or the sequential client) and what the router spent on it.

The router's cost is read from outside: user and system CPU seconds of its whole process tree (master and
every router process) sampled with psutil right before and right after the load, and the lines it logged
meanwhile. Per request figures divide by the requests the load generator completed.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tools.bench.chains import Chain
from tools.bench.workloads import BenchError, Workload, answer_ok, uwsgi_exchange, uwsgi_packet
from tools.harness import Proc, ProcessManager

# What both routers log when a client goes away mid-response. wrk stops with up to --connections requests in
# flight and nginx then drops those upstream connections, so a few such lines per run are expected.
ABORT_PATTERNS = ("Broken pipe", "Connection reset by peer", "client connection lost", "client error")


@dataclass
class Load:
    """What the load generator saw in one run."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    bytes: int
    errors: dict[str, int]  # connect/read/write/timeout (socket errors) and status (non-2xx, wrong body)

    @classmethod
    def combined(cls, loads: list[Load]) -> Load:
        """Several runs as one: counts and durations added; latencies are not combined (NaN)."""
        errors: dict[str, int] = {}
        for load in loads:
            for key, value in load.errors.items():
                errors[key] = errors.get(key, 0) + value
        nan = float("nan")
        return cls(
            requests=sum(x.requests for x in loads),
            seconds=sum(x.seconds for x in loads),
            p50_ms=nan,
            p90_ms=nan,
            p99_ms=nan,
            mean_ms=nan,
            max_ms=nan,
            bytes=sum(x.bytes for x in loads),
            errors=errors,
        )


@dataclass
class Run:
    workload: str
    chain: str  # "A" uwsgirouter, "B" uWSGI
    threads: int  # wrk threads; 0 for the sequential client
    round: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int
    errors_detail: dict[str, int]
    bytes_per_response: float
    expected_bytes_per_response: int
    cpu_user_s: float
    cpu_system_s: float
    user_us: float  # router CPU per request, microseconds
    system_us: float
    cpu_us: float
    router_cpu_pct: float
    router_pids_changed: bool
    abort_log_lines: int
    new_log_lines: list[str]


def cpu_snapshot(proc: Proc) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of every process in ``proc``'s tree, by pid."""
    snap = {}
    for p in proc.tree():
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            snap[p.pid] = (t.user, t.system)
    return snap


class LogCursor:
    """Lines appended to a log file since the previous call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return [line for line in data.decode(errors="replace").splitlines() if line.strip()]


class Window:
    """The router's CPU and log lines between ``open`` and ``close`` (one measured run)."""

    def __init__(self, chain: Chain, router_log: LogCursor, nginx_log: LogCursor) -> None:
        self.chain, self.router_log, self.nginx_log = chain, router_log, nginx_log
        self.before: dict[int, tuple[float, float]] = {}

    def open(self) -> None:
        if not self.chain.proc.alive():
            raise BenchError(f"{self.chain.name} router died:\n{self.chain.proc.log_tail()}")
        self.router_log.new_lines()
        self.nginx_log.new_lines()
        self.before = cpu_snapshot(self.chain.proc)

    def close(self, workload: Workload, threads: int, round_no: int, load: Load) -> Run:
        after = cpu_snapshot(self.chain.proc)
        user = sum(u for u, _ in after.values()) - sum(self.before.get(pid, (0.0, 0.0))[0] for pid in after)
        system = sum(s for _, s in after.values()) - sum(self.before.get(pid, (0.0, 0.0))[1] for pid in after)
        # this chain's lines in nginx's error log name its router port
        marker = f"127.0.0.1:{self.chain.router_port}"
        router_lines = self.router_log.new_lines()
        aborts = [line for line in router_lines if any(p in line for p in ABORT_PATTERNS)]
        new_lines = [f"router: {line}" for line in router_lines if line not in aborts]
        new_lines += [f"nginx: {line}" for line in self.nginx_log.new_lines() if marker in line]
        n, seconds = load.requests, load.seconds

        def per_request(cpu: float) -> float:
            return cpu / n * 1e6 if n else float("nan")

        return Run(
            workload=workload.name,
            chain=self.chain.key,
            threads=threads,
            round=round_no,
            seconds=seconds,
            requests=n,
            rps=n / seconds if seconds else 0.0,
            p50_ms=load.p50_ms,
            p90_ms=load.p90_ms,
            p99_ms=load.p99_ms,
            mean_ms=load.mean_ms,
            max_ms=load.max_ms,
            non2xx=load.errors.get("status", 0),
            socket_errors=sum(v for k, v in load.errors.items() if k != "status"),
            errors_detail=dict(load.errors),
            bytes_per_response=load.bytes / n if n else 0.0,
            expected_bytes_per_response=self.chain.response_size[workload.name],
            cpu_user_s=user,
            cpu_system_s=system,
            user_us=per_request(user),
            system_us=per_request(system),
            cpu_us=per_request(user + system),
            router_cpu_pct=100 * (user + system) / seconds if seconds else 0.0,
            router_pids_changed=set(self.before) != set(after),
            abort_log_lines=len(aborts),
            new_log_lines=new_lines,
        )


@dataclass(frozen=True)
class WrkSettings:
    wrk: str
    connections: int
    timeout_s: int = 10


def run_wrk(
    procs: ProcessManager, settings: WrkSettings, port: int, workload: Workload, threads: int, duration: float, tag: str
) -> Load:
    """One wrk run against nginx on ``port``, bounded by its duration plus a minute."""
    script = procs.tmp_path / f"{workload.name}.lua"
    if not script.exists():
        script.write_text(workload.lua())
    argv = [
        settings.wrk,
        f"-t{threads}",
        f"-c{settings.connections}",
        f"-d{duration:g}s",
        *("--timeout", f"{settings.timeout_s}s", "--latency", "-s", str(script)),
        f"http://127.0.0.1:{port}{workload.path}",
    ]
    proc = procs.start(argv, f"wrk-{tag}")
    try:
        proc.wait(duration + 60)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {shlex.join(argv)}") from exc
    finally:
        procs.finish(proc)
    out = proc.log()
    for line in out.splitlines():
        if line.startswith("BENCH_RESULT "):
            res: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            return Load(
                requests=int(res["requests"]),
                seconds=res["duration_us"] / 1e6,
                p50_ms=res["p50_us"] / 1000,
                p90_ms=res["p90_us"] / 1000,
                p99_ms=res["p99_us"] / 1000,
                mean_ms=res["mean_us"] / 1000,
                max_ms=res["max_us"] / 1000,
                bytes=int(res["bytes"]),
                errors={k: int(res[k]) for k in ("connect", "read", "write", "timeout", "status")},
            )
    raise BenchError(f"wrk printed no result (status {proc.popen.returncode}): {shlex.join(argv)}\n{out[-2000:]}")


def run_sequential(port: int, workload: Workload, requests: int, timeout: float = 30.0) -> Load:
    """``requests`` uwsgi requests sent one after the other straight to the router on ``port``, each on a new
    connection, as nginx sends them; each answer is checked (a wrong one counts as a status error)."""
    packet = uwsgi_packet(workload, port)
    expected = workload.expected_body()
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    total_bytes = 0
    started = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        try:
            raw = uwsgi_exchange(port, packet, timeout)
        except TimeoutError:
            errors["timeout"] += 1
            continue
        except OSError:
            errors["read"] += 1
            continue
        latencies.append(time.perf_counter() - t0)
        total_bytes += len(raw)
        if not answer_ok(raw, expected):
            errors["status"] += 1
    seconds = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, int(q * len(ms)))]

    return Load(
        requests=len(latencies),
        seconds=seconds,
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        mean_ms=statistics.fmean(ms),
        max_ms=ms[-1],
        bytes=total_bytes,
        errors=errors,
    )
