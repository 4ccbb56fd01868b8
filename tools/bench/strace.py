"""System calls per request: ``strace -c -f`` attached to a router's process tree during a separate short run.

strace slows the traced router several times over, so the run it watches is never one of the timed ones; only
its counts are used (calls and failed calls per request, and which calls they are).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.chains import Chain
from tools.bench.measure import Load
from tools.bench.workloads import BenchError
from tools.harness import ProcessManager, TimedOut, wait_until


@dataclass
class SyscallCount:
    workload: str
    chain: str
    threads: int
    requests: int
    calls: int
    errors: int
    by_name: dict[str, int] = field(default_factory=dict)  # calls per system call name

    @property
    def per_request(self) -> float:
        return self.calls / self.requests if self.requests else float("nan")

    @property
    def errors_per_request(self) -> float:
        return self.errors / self.requests if self.requests else float("nan")


def parse_summary(text: str) -> tuple[int, int, dict[str, int]]:
    """(total calls, total failed calls, calls by name) from ``strace -c`` output. The numeric columns are
    right-aligned under the dashed rule and may be blank (errors, usecs/call), so they are cut by its spans."""
    lines = text.splitlines()
    rule = next((line for line in lines if line.startswith("------")), None)
    if rule is None:
        return 0, 0, {}  # nothing was called at all: strace prints no table
    spans, start = [], 0
    for part in rule.split(" "):
        if part:
            spans.append((start, start + len(part)))
        start += len(part) + 1
    by_name: dict[str, int] = {}
    calls = errors = 0
    for line in lines:
        if line.startswith(("------", "% time")) or not line.strip():
            continue
        cells = [line[a:b].strip() for a, b in spans[:-1]] + [line[spans[-1][0] :].strip()]
        if len(cells) < 6 or not cells[3].isdigit():
            continue
        name = cells[5]
        if name == "total":
            calls, errors = int(cells[3]), int(cells[4] or 0)
        else:
            by_name[name] = by_name.get(name, 0) + int(cells[3])
    return calls, errors, by_name


def count_syscalls(
    procs: ProcessManager, strace: str, chain: Chain, load: Callable[[], Load], tag: str
) -> tuple[Load, int, int, dict[str, int]]:
    """Attach ``strace -c -f`` to every process of the chain's router tree, run ``load``, detach; return the
    load's result and the totals."""
    pids = [p.pid for p in chain.proc.tree()]
    out = procs.tmp_path / f"strace-{tag}.txt"
    argv = [strace, "-c", "-f", "-o", str(out)]
    for pid in pids:
        argv += ["-p", str(pid)]
    tracer = procs.start(argv, f"strace-{tag}")
    try:
        try:
            wait_until(
                lambda: tracer.log().count(" attached") >= len(pids) or not tracer.alive(),
                15,
                what=f"strace attaching to {chain.name}'s processes {pids}",
            )
        except TimedOut as exc:
            raise BenchError(f"{exc}\n{tracer.log_tail()}") from exc
        if not tracer.alive():
            raise BenchError(
                f"strace could not attach to {chain.name} (status {tracer.popen.returncode}; it needs ptrace "
                f"rights: root, or kernel.yama.ptrace_scope=0):\n{tracer.log_tail()}"
            )
        result = load()
        tracer.signal(signal.SIGINT)  # detach and write the summary
        try:
            tracer.wait(30)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"strace did not detach from {chain.name}:\n{tracer.log_tail()}") from exc
    finally:
        procs.finish(tracer)
    if tracer.popen.returncode not in (0, -signal.SIGINT):
        raise BenchError(f"strace exited with status {tracer.popen.returncode}:\n{tracer.log_tail()}")
    calls, errors, by_name = parse_summary(read(out))
    return result, calls, errors, by_name


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
