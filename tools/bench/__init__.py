"""Benchmark uwsgirouter against real uWSGI 2.0.31's fastrouter, side by side, in one interleaved run.

Two chains share one backend (a real uWSGI instance serving tests/apps/instance_app.py) and one nginx
with two server blocks:

    A: wrk -> nginx :PA (uwsgi_pass) -> uwsgirouter --fastrouter :RA --fastrouter-to :BE -> uWSGI app :BE
    B: wrk -> nginx :PB (uwsgi_pass) -> uwsgi --fastrouter :RB --fastrouter-to :BE --master -> same app

Workloads: a 12-byte GET, a 64 KiB GET and a 1 MiB POST through wrk and nginx, each at every wrk thread
count of --threads (1 and 2: one thread leaves the 2-core machine headroom, two saturate it), and seq12:
one client of the bench's own sending 12-byte GETs one after the other straight to each router over
uwsgi (no nginx, no wrk), the cost of one request with no concurrency to amortise it.

Runs are interleaved (A, B, A, B, ... for N rounds) so machine noise hits both routers alike. Per run:
requests/s, latency p50/p99, errors, bytes per response, what the router and nginx logged, and the
router's CPU per request split into user and system time (psutil, the router's whole process tree,
sampled right before and after the load). With --strace, one more short run per router, workload and
thread count under `strace -c -f` counts its system calls per request. Every metric is reported for
both routers as the median over the rounds, with the ratio uwsgirouter / uWSGI.

Every process runs in its own session with its output in a temp dir (tools/harness.py, shared with the
tests); all of them are killed (TERM, then KILL, the whole process group) on exit, on an error and on
Ctrl-C, and the temp dir is removed (kept on failure or with --keep-tmp).

    .venv/bin/python -m tools.bench             # 4 workloads, -t1 and -t2, 3 rounds, 5 s runs (about 4 min)
    .venv/bin/python -m tools.bench --quick     # a little over a minute
    .venv/bin/python -m tools.bench --strace --markdown
    .venv/bin/python -m tools.bench --help      (scripts/bench runs the same)
"""
