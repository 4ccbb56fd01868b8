"""Command line, tools, and the safe frame around a run: signals, the temp dir, and every process stopped."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tools.bench
from tools.bench.run import Bench, log
from tools.bench.workloads import WORKLOADS, BenchError
from tools.harness import ProcessManager, TimedOut

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
INSTALL_HINT = "run scripts/install (as root it also installs the Debian packages nginx-light and wrk)"

# --quick's values for the settings not given on the command line
QUICK = {"duration": 2, "warmup": 1, "rounds": 2, "sequential_requests": 5000, "strace_duration": 1}
NORMAL = {"duration": 5, "warmup": 1, "rounds": 3, "sequential_requests": 20000, "strace_duration": 2}


def find_tools(need_strace: bool) -> dict[str, str]:
    tools: dict[str, str] = {}
    missing = []
    for name in ("uwsgi", "uwsgirouter"):
        path = VENV_BIN / name
        if os.access(path, os.X_OK):
            tools[name] = str(path)
        else:
            missing.append(f"{path} ({INSTALL_HINT})")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    found = {"nginx": (nginx, "nginx-light"), "wrk": (shutil.which("wrk"), "wrk")}
    if need_strace:
        found["strace"] = (shutil.which("strace"), "strace")
    for name, (path_found, pkg) in found.items():
        if path_found:
            tools[name] = path_found
        else:
            missing.append(f"{name} (scripts/install as root, or: apt-get install {pkg})")
    if missing:
        raise BenchError("missing: " + "; ".join(missing))
    return tools


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    doc = tools.bench.__doc__ or ""
    p = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The comparison tables go to stdout, progress and per-run lines to stderr.",
    )
    p.add_argument("--duration", type=int, help="whole seconds of one wrk run (default 5, --quick 2)")
    p.add_argument("--rounds", type=int, help="rounds per workload, each runs A then B (default 3, --quick 2)")
    p.add_argument("--connections", "-c", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument(
        "--threads", "-t", default="1,2", help="wrk thread counts, each measured in its own table (default 1,2)"
    )
    p.add_argument(
        "--warmup", type=int, help="unmeasured wrk seconds per chain before a workload's first round (default 1)"
    )
    p.add_argument(
        "--sequential-requests",
        type=int,
        help="requests per run of seq12 (default 20000, --quick 5000; CPU time comes in 10 ms ticks)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a little over a minute: 2 s runs, 2 rounds, 5000 sequential requests"
    )
    p.add_argument(
        "--workloads",
        default=",".join(w.name for w in WORKLOADS),
        help="comma-separated subset of: " + ", ".join(w.name for w in WORKLOADS),
    )
    p.add_argument(
        "--router-processes",
        type=int,
        default=1,
        help="router processes of both routers (--fastrouter-processes N for each; default 1)",
    )
    p.add_argument(
        "--strace",
        action="store_true",
        help="also count system calls per request: strace -c -f attached during a separate short run",
    )
    p.add_argument("--strace-duration", type=int, help="seconds of each wrk run under strace (default 2, --quick 1)")
    p.add_argument("--router-args", default="", help="extra arguments for uwsgirouter (one shell-quoted string)")
    p.add_argument("--uwsgi-router-args", default="", help="extra arguments for uWSGI's fastrouter")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    p.add_argument("--per-run", action="store_true", help="also print every run in the stdout report")
    p.add_argument("--json", metavar="FILE", help="write every run's numbers and the settings to FILE")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with all logs (kept anyway on failure)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else NORMAL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = set(names) - {w.name for w in WORKLOADS}
    if unknown or not names:
        p.error(f"unknown workload(s): {', '.join(sorted(unknown)) or '(none)'}")
    args.workload_list = [w for w in WORKLOADS if w.name in names]
    try:
        args.thread_list = sorted({int(t) for t in args.threads.split(",") if t.strip()})
    except ValueError:
        p.error(f"--threads takes comma-separated numbers, not {args.threads!r}")
    if not args.thread_list or args.thread_list[0] < 1 or args.connections < args.thread_list[-1]:
        p.error("need --connections >= every --threads >= 1")
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.sequential_requests < 1:
        p.error("need --rounds >= 1, --duration > 0, --warmup >= 0 and --sequential-requests >= 1")
    if args.router_processes < 1 or args.strace_duration < 1:
        p.error("need --router-processes >= 1 and --strace-duration >= 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (a background job)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        found = find_tools(args.strace)
    except BenchError as exc:
        log(f"bench: {exc}")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="uwsgirouter-bench-"))
    procs = ProcessManager(tmp)
    keep = args.keep_tmp
    status = 0
    try:
        status = Bench(args, found, procs).run()
    except (BenchError, TimedOut) as exc:
        log(f"bench: {exc}")
        keep, status = True, 1
    except KeyboardInterrupt:
        log("bench: interrupted")
        status = 130
    finally:
        # ignore a second Ctrl-C while tearing down, so nothing is left running
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        try:
            procs.stop_all()
        except AssertionError as exc:
            log(f"bench: {exc}")
            keep, status = True, status or 1
        if keep:
            log(f"bench: logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


def entry() -> None:
    sys.exit(main(sys.argv[1:]))
