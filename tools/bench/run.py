"""The run itself: start the chains, check them, then per workload (and wrk thread count) a warm-up and N
interleaved rounds (A, B, A, B...), then the optional strace runs; finally the report."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

from tools.bench import report
from tools.bench.chains import Chain, Setup, check_chain, start_chains
from tools.bench.measure import Load, LogCursor, Run, Window, WrkSettings, run_sequential, run_wrk
from tools.bench.strace import SyscallCount, count_syscalls
from tools.bench.workloads import Workload
from tools.harness import ProcessManager

# wrk runs under strace go on until this many requests per connection completed, or this many runs
STRACE_REQUESTS_PER_CONNECTION = 10
STRACE_MAX_RUNS = 5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, tools: dict[str, str], procs: ProcessManager) -> None:
        self.args, self.tools, self.procs = args, tools, procs
        self.wrk = WrkSettings(tools["wrk"], args.connections)
        self.runs: list[Run] = []
        self.syscalls: list[SyscallCount] = []

    def load(self, chain: Chain, workload: Workload, threads: int, amount: int, tag: str) -> Load:
        """One load: ``amount`` seconds of wrk through the chain's nginx, or ``amount`` requests of the sequential
        client straight to its router."""
        if workload.sequential:
            return run_sequential(chain.router_port, workload, amount)
        return run_wrk(self.procs, self.wrk, chain.nginx_port, workload, threads, amount, tag)

    def rounds(self, setup: Setup, workload: Workload, threads: int) -> None:
        args = self.args
        chains = setup.chains
        amount = args.sequential_requests if workload.sequential else args.duration
        warmup = max(1, args.sequential_requests // 10) if workload.sequential else args.warmup
        where = f"{workload.name}" + (f"-t{threads}" if threads else "")
        if warmup > 0:
            for chain in chains:
                self.load(chain, workload, threads, warmup, f"{where}-{chain.key}-warmup")
        nginx_log = LogCursor(setup.nginx_dir / "error.log")
        cursors = {c.key: LogCursor(c.proc.log_path) for c in chains}
        for round_no in range(1, args.rounds + 1):
            for chain in chains:
                window = Window(chain, cursors[chain.key], nginx_log)
                window.open()
                load = self.load(chain, workload, threads, amount, f"{where}-{chain.key}-{round_no}")
                run = window.close(workload, threads, round_no, load)
                self.runs.append(run)
                flags = report.run_flags(run, args.connections)
                log(
                    f"  {workload.label:<11} {f'-t{threads}' if threads else 'seq':<4} round {round_no} "
                    f"{chain.name:<11} {run.rps:8.0f} req/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
                    f"CPU {run.user_us:6.1f} user + {run.system_us:6.1f} sys us/req  "
                    f"({run.router_cpu_pct:3.0f}% of a core)" + (f"  !! {'; '.join(flags)}" if flags else "")
                )
        if args.strace:
            for chain in chains:
                self.count_syscalls(chain, workload, threads, f"{where}-{chain.key}-strace")

    def traced_load(self, chain: Chain, workload: Workload, threads: int, tag: str) -> Load:
        """The load strace watches: up to 1000 sequential requests, or wrk runs of --strace-duration until
        they completed STRACE_REQUESTS_PER_CONNECTION requests per connection (at most STRACE_MAX_RUNS runs):
        the requests still in flight when wrk stops are counted in, so there must be many more of the others."""
        args = self.args
        if workload.sequential:
            return self.load(chain, workload, threads, min(args.sequential_requests, 1000), tag)
        loads: list[Load] = []
        for n in range(STRACE_MAX_RUNS):
            loads.append(self.load(chain, workload, threads, args.strace_duration, f"{tag}{n}"))
            if sum(x.requests for x in loads) >= STRACE_REQUESTS_PER_CONNECTION * args.connections:
                break
        return Load.combined(loads)

    def count_syscalls(self, chain: Chain, workload: Workload, threads: int, tag: str) -> None:
        load, calls, errors, by_name = count_syscalls(
            self.procs, self.tools["strace"], chain, partial(self.traced_load, chain, workload, threads, tag), tag
        )
        count = SyscallCount(workload.name, chain.key, threads, load.requests, calls, errors, by_name)
        self.syscalls.append(count)
        few = not workload.sequential and count.requests < STRACE_REQUESTS_PER_CONNECTION * self.args.connections
        log(
            f"  {workload.label:<11} {f'-t{threads}' if threads else 'seq':<4} strace  {chain.name:<11} "
            f"{count.per_request:6.1f} syscalls/req ({count.errors_per_request:.1f} failed) "
            f"over {load.requests} requests"
            + ("  !! too few requests: imprecise (longer --strace-duration)" if few else "")
        )

    def run(self) -> int:
        args = self.args
        workloads: list[Workload] = args.workload_list
        setup = start_chains(self.procs, self.tools, args.router_processes, args.router_args, args.uwsgi_router_args)
        for chain in setup.chains:
            check_chain(chain, workloads)
        trees = {c.name: [p.pid for p in c.proc.tree()] for c in setup.chains}
        log(f"bench: chains answer correctly; router process trees {trees}; logs in {self.procs.tmp_path}")
        load_start = os.getloadavg()
        for workload in workloads:
            for threads in [0] if workload.sequential else args.thread_list:
                self.rounds(setup, workload, threads)
        load_end = os.getloadavg()
        log(f"bench: load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end")
        self.print_report(workloads)
        if args.json:
            self.write_json(Path(args.json), load_start[0], load_end[0])
        return 0

    def versions(self) -> dict[str, str]:
        return {
            "uwsgirouter": report.tool_version([self.tools["uwsgirouter"], "--version"]),
            "uwsgi": report.tool_version([self.tools["uwsgi"], "--version"]),
            "nginx": report.tool_version([self.tools["nginx"], "-v"]),
            "wrk": report.tool_version([self.tools["wrk"], "--version"]),
            "strace": report.tool_version([self.tools["strace"], "-V"]) if "strace" in self.tools else "",
            "git": report.tool_version(["git", "-C", str(Path(__file__).resolve().parents[2]), "describe", "--always"]),
        }

    def print_report(self, workloads: list[Workload]) -> None:
        args = self.args
        md = args.markdown
        info = report.machine_info()
        versions = self.versions()
        when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        processes = f"; --fastrouter-processes {args.router_processes}" if args.router_processes > 1 else ""
        head = (
            f"{when}; {info['nproc']} CPUs ({info['cpu']}); {versions['uwsgirouter']} against uWSGI "
            f"{versions['uwsgi']}{processes}; {args.rounds} rounds, interleaved; medians over rounds; "
            f"ratio = uwsgirouter / uWSGI; CPU = the router's whole process tree"
        )
        print(f"_{head}_" if md else head)
        tables: list[tuple[str, int]] = [
            (
                f"wrk -t{t} -c{args.connections}, {args.duration:g} s per run -> nginx -> router -> uWSGI app",
                t,
            )
            for t in args.thread_list
            if any(not w.sequential for w in workloads)
        ]
        if any(w.sequential for w in workloads):
            tables.append(
                (
                    f"sequential: one client, {args.sequential_requests} requests per run, uwsgi to the router",
                    0,
                )
            )
        for title, threads in tables:
            print(f"\n{'### ' if md else ''}{title}\n")
            if threads == 0:
                tick = 1 / os.sysconf("SC_CLK_TCK")
                print(
                    f"(CPU time comes in ticks of {tick * 1000:g} ms per process: one tick is "
                    f"{tick / args.sequential_requests * 1e6:.1f} us/req of one run)\n"
                )
            print(
                report.format_table(
                    report.HEADER, report.comparison_rows(self.runs, self.syscalls, workloads, threads), md
                )
            )
        if self.syscalls:
            print(f"\n{'### ' if md else ''}system calls per request, most frequent first (strace -c -f)\n")
            print(
                report.format_table(
                    ["workload", "syscall", "uwsgirouter", "uWSGI 2.0.31", "ratio"],
                    report.syscall_rows(self.syscalls, workloads),
                    md,
                )
            )
        if args.per_run:
            print()
            print(report.format_table(report.PER_RUN_HEADER, report.per_run_rows(self.runs, workloads), md))
        found = report.problems(self.runs, args.connections)
        found += [
            f"{'uwsgirouter' if c.chain == 'A' else 'uWSGI'} {c.workload} -t{c.threads}: only {c.requests} requests "
            "under strace, so its system calls per request are imprecise (give a longer --strace-duration)"
            for c in self.syscalls
            if c.threads and c.requests < STRACE_REQUESTS_PER_CONNECTION * args.connections
        ]
        if found:
            print("\nNoticed during the runs:")
            print("\n".join(f"  {p}" for p in found))

    def write_json(self, path: Path, load_start: float, load_end: float) -> None:
        args = self.args
        settings = (
            "duration rounds connections thread_list warmup sequential_requests router_processes strace "
            "strace_duration router_args uwsgi_router_args"
        )
        doc = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "loadavg_1min": {"start": load_start, "end": load_end},
            "machine": report.machine_info(),
            "settings": {k: getattr(args, k) for k in settings.split()},
            "versions": self.versions(),
            "runs": [asdict(r) for r in self.runs],
            "syscalls": [asdict(s) for s in self.syscalls],
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"bench: wrote {path}")
