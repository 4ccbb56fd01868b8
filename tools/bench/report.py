"""The report: per wrk thread count and for the sequential client, medians over the rounds of every metric for
both routers and their ratio uwsgirouter / uWSGI; the system-call breakdown; the per-run table; JSON."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from tools.bench.measure import Run
from tools.bench.strace import SyscallCount
from tools.bench.workloads import Workload

HEADER = ["workload", "metric", "uwsgirouter", "uWSGI 2.0.31", "ratio"]

# (label, value of a run, format); CPU figures are the router's whole process tree
METRICS: list[tuple[str, Callable[[Run], float], str]] = [
    ("req/s", lambda r: r.rps, "{:.0f}"),
    ("p50 ms", lambda r: r.p50_ms, "{:.2f}"),
    ("p99 ms", lambda r: r.p99_ms, "{:.2f}"),
    ("router CPU user us/req", lambda r: r.user_us, "{:.1f}"),
    ("router CPU system us/req", lambda r: r.system_us, "{:.1f}"),
    ("router CPU total us/req", lambda r: r.cpu_us, "{:.1f}"),
    ("router CPU % of a core", lambda r: r.router_cpu_pct, "{:.0f}"),
]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else "-"


def comparison_rows(
    runs: Sequence[Run], syscalls: Sequence[SyscallCount], workloads: Sequence[Workload], threads: int
) -> list[list[str]]:
    rows = []
    for w in workloads:
        a = [r for r in runs if r.workload == w.name and r.chain == "A" and r.threads == threads]
        b = [r for r in runs if r.workload == w.name and r.chain == "B" and r.threads == threads]
        if not a or not b:
            continue
        first = True
        for label, value, fmt in METRICS:
            ma = statistics.median(value(r) for r in a)
            mb = statistics.median(value(r) for r in b)
            rows.append([w.label if first else "", label, fmt.format(ma), fmt.format(mb), ratio(ma, mb)])
            first = False
        sa = [s for s in syscalls if s.workload == w.name and s.chain == "A" and s.threads == threads]
        sb = [s for s in syscalls if s.workload == w.name and s.chain == "B" and s.threads == threads]
        if sa and sb:
            for label, attr in (
                ("syscalls/req (strace)", "per_request"),
                ("failed syscalls/req", "errors_per_request"),
            ):
                va = statistics.median(getattr(s, attr) for s in sa)
                vb = statistics.median(getattr(s, attr) for s in sb)
                rows.append(["", label, f"{va:.1f}", f"{vb:.1f}", ratio(va, vb)])
            ra, rb = (str(sum(s.requests for s in x)) for x in (sa, sb))
            rows.append(["", "requests under strace", ra, rb, "-"])
        ea = f"{sum(r.non2xx for r in a)} / {sum(r.socket_errors for r in a)}"
        eb = f"{sum(r.non2xx for r in b)} / {sum(r.socket_errors for r in b)}"
        rows.append(["", "errors: non-2xx / socket (sum)", ea, eb, "-"])
        la, lb = (f"{sum(len(r.new_log_lines) for r in x)} / {sum(r.abort_log_lines for r in x)}" for x in (a, b))
        rows.append(["", "log lines: other / client-abort (sum)", la, lb, "-"])
    return rows


def syscall_rows(syscalls: Sequence[SyscallCount], workloads: Sequence[Workload], top: int = 8) -> list[list[str]]:
    """The calls each router makes per request, the most frequent first (per workload and wrk thread count)."""
    rows = []
    labels = {w.name: w.label for w in workloads}
    keys = sorted({(s.workload, s.threads) for s in syscalls}, key=lambda k: ([*labels].index(k[0]), k[1]))
    for workload, threads in keys:
        pair = {s.chain: s for s in syscalls if s.workload == workload and s.threads == threads}
        if set(pair) != {"A", "B"} or not all(s.requests for s in pair.values()):
            continue
        a, b = pair["A"], pair["B"]
        names = sorted(
            set(a.by_name) | set(b.by_name),
            key=lambda n: -max(a.by_name.get(n, 0) / max(a.requests, 1), b.by_name.get(n, 0) / max(b.requests, 1)),
        )
        title = labels[workload] + (f" (-t{threads})" if threads else "")
        for i, name in enumerate(names[:top]):
            va, vb = a.by_name.get(name, 0) / max(a.requests, 1), b.by_name.get(name, 0) / max(b.requests, 1)
            rows.append([title if i == 0 else "", name, f"{va:.2f}", f"{vb:.2f}", ratio(va, vb)])
    return rows


def per_run_rows(runs: Sequence[Run], workloads: Sequence[Workload]) -> list[list[str]]:
    labels = {w.name: w.label for w in workloads}
    return [
        [
            labels[r.workload] + (f" -t{r.threads}" if r.threads else ""),
            f"{r.round} {'uwsgirouter' if r.chain == 'A' else 'uWSGI'}",
            f"{r.rps:.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.user_us:.1f}",
            f"{r.system_us:.1f}",
            f"{r.router_cpu_pct:.0f}",
            f"{r.non2xx}/{r.socket_errors}",
            f"{r.bytes_per_response:.0f}",
        ]
        for r in runs
    ]


PER_RUN_HEADER = [
    "workload",
    "round router",
    "req/s",
    "p50 ms",
    "p99 ms",
    "user us/req",
    "sys us/req",
    "CPU %",
    "non-2xx/sock",
    "bytes/resp",
]


def format_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(wd) if i < 2 else c.rjust(wd) for i, (c, wd) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), "  ".join("-" * wd for wd in widths), *(line(r) for r in rows)])


def problems(runs: Sequence[Run], connections: int) -> list[str]:
    """What went wrong during the runs, one line each (errors, respawns, unexpected log lines)."""
    out = []
    for r in runs:
        name = f"{'uwsgirouter' if r.chain == 'A' else 'uWSGI'} {r.workload}" + (f" -t{r.threads}" if r.threads else "")
        where = f"{name} round {r.round}"
        if r.non2xx or r.socket_errors:
            out.append(f"{where}: errors {r.errors_detail}")
        if r.router_pids_changed:
            out.append(f"{where}: router processes changed during the run")
        out += [f"{where}: {line}" for line in r.new_log_lines[:5]]
        if len(r.new_log_lines) > 5:
            out.append(f"{where}: ... {len(r.new_log_lines) - 5} more log lines")
        if r.abort_log_lines > connections:
            out.append(f"{where}: {r.abort_log_lines} client-abort log lines")
    return out


def run_flags(run: Run, connections: int) -> list[str]:
    """Warnings for the progress line of one run."""
    flags = []
    if run.non2xx or run.socket_errors:
        flags.append(f"ERRORS {run.errors_detail}")
    expected = run.expected_bytes_per_response
    if abs(run.bytes_per_response - expected) > 0.02 * max(expected, 1):
        flags.append(f"bytes/response {run.bytes_per_response:.0f} != {expected}")
    if run.router_pids_changed:
        flags.append("router processes changed during the run (CPU undercounted)")
    if run.new_log_lines:
        flags.append(f"{len(run.new_log_lines)} new log line(s)")
    if run.abort_log_lines > connections:
        flags.append(f"{run.abort_log_lines} client-abort log lines (more than --connections)")
    return flags


def machine_info() -> dict[str, str]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def tool_version(argv: list[str]) -> str:
    """The first line a tool prints for its version, '?' when it cannot be run."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "?"
