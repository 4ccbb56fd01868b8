"""The two chains under test, started side by side on one backend and one nginx.

    A: wrk -> nginx :PA (uwsgi_pass) -> uwsgirouter --fastrouter :RA --fastrouter-to :BE -> uWSGI app :BE
    B: wrk -> nginx :PB (uwsgi_pass) -> uwsgi --fastrouter :RB --fastrouter-to :BE --master -> same app

The sequential workload skips nginx and talks uwsgi to :RA and :RB directly.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.workloads import INSTANCE, BenchError, Workload, answer_ok, http_request, uwsgi_exchange, uwsgi_packet
from tools.harness import Proc, ProcessManager, TimedOut, can_connect, free_port, nginx_conf, wait_until

REPO = Path(__file__).resolve().parent.parent.parent
APP = REPO / "tests" / "apps" / "instance_app.py"

#: Settings of the bench's nginx beside its servers.
NGINX_SETTINGS = """
    # keep the 1 MiB request body and the 64 KiB response in memory: no temp-file disk noise
    client_body_buffer_size 2m;
    uwsgi_buffer_size 16k;
    uwsgi_buffers 8 16k;
    uwsgi_read_timeout 30s;
    uwsgi_send_timeout 30s;"""

NGINX_SERVER = """
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        server_name localhost;
        location / {{
            include {params};
            uwsgi_pass 127.0.0.1:{router_port};
        }}
    }}
"""

# nginx's stock uwsgi_params, so the bench does not depend on /etc/nginx.
UWSGI_PARAMS = """
uwsgi_param  QUERY_STRING       $query_string;
uwsgi_param  REQUEST_METHOD     $request_method;
uwsgi_param  CONTENT_TYPE       $content_type;
uwsgi_param  CONTENT_LENGTH     $content_length;
uwsgi_param  REQUEST_URI        $request_uri;
uwsgi_param  PATH_INFO          $document_uri;
uwsgi_param  DOCUMENT_ROOT      $document_root;
uwsgi_param  SERVER_PROTOCOL    $server_protocol;
uwsgi_param  REQUEST_SCHEME     $scheme;
uwsgi_param  HTTPS              $https if_not_empty;
uwsgi_param  REMOTE_ADDR        $remote_addr;
uwsgi_param  REMOTE_PORT        $remote_port;
uwsgi_param  SERVER_PORT        $server_port;
uwsgi_param  SERVER_NAME        $server_name;
"""


@dataclass
class Chain:
    key: str  # "A" (uwsgirouter) or "B" (uWSGI)
    name: str
    proc: Proc  # the router's master; its process tree is what gets measured
    router_port: int
    nginx_port: int
    response_size: dict[str, int] = field(default_factory=dict)  # bytes on the wire per workload, from the check


@dataclass
class Setup:
    chains: list[Chain]
    nginx_dir: Path


def wait_listening(proc: Proc, port: int, timeout: float = 30.0) -> None:
    try:
        wait_until(lambda: can_connect(("127.0.0.1", port)) or not proc.alive(), timeout, what=f"{proc.name}:{port}")
    except TimedOut as exc:
        raise BenchError(f"{exc}\n{proc.log_tail()}") from exc
    if not proc.alive():
        raise BenchError(f"{proc.name} exited at start (status {proc.popen.returncode}):\n{proc.log_tail()}")


def wait_tree(proc: Proc, size: int) -> None:
    """Wait until ``proc`` has forked its router processes (``size`` processes in its tree)."""

    def complete() -> bool:
        return len(proc.tree()) >= size or not proc.alive()

    try:
        wait_until(complete, 15, what=f"{proc.name}'s {size - 1} router process(es)")
    except TimedOut as exc:
        raise BenchError(f"{exc}\n{proc.log_tail()}") from exc
    if not proc.alive():
        raise BenchError(f"{proc.name} exited:\n{proc.log_tail()}")


def start_chains(
    procs: ProcessManager,
    tools: dict[str, str],
    router_processes: int,
    router_args: str,
    uwsgi_router_args: str,
) -> Setup:
    """Start the backend, both routers and nginx; return once every one of them answers connections."""
    backend_port, ra_port, rb_port, na_port, nb_port = (free_port() for _ in range(5))
    backend = procs.start(
        [
            tools["uwsgi"],
            *("--socket", f"127.0.0.1:{backend_port}", "--wsgi-file", str(APP)),
            *("--master", "--processes", "2", "--disable-logging", "--die-on-term"),
        ],
        "backend-uwsgi",
        {"INSTANCE": INSTANCE},
    )
    scaling = ["--fastrouter-processes", str(router_processes)] if router_processes > 1 else []
    router_a = procs.start(
        [
            tools["uwsgirouter"],
            *("--fastrouter", f"127.0.0.1:{ra_port}", "--fastrouter-to", f"127.0.0.1:{backend_port}"),
            *scaling,
            *shlex.split(router_args),
        ],
        "uwsgirouter",
    )
    # --die-on-term only so that our SIGTERM stops it (uWSGI 2.0 would reload instead); no effect on serving
    router_b = procs.start(
        [
            tools["uwsgi"],
            *("--fastrouter", f"127.0.0.1:{rb_port}", "--fastrouter-to", f"127.0.0.1:{backend_port}"),
            *("--master", "--die-on-term"),
            *scaling,
            *shlex.split(uwsgi_router_args),
        ],
        "uwsgi-fastrouter",
    )
    ndir = procs.tmp_path / "nginx"
    ndir.mkdir()
    (ndir / "uwsgi_params").write_text(UWSGI_PARAMS)
    servers = "".join(
        NGINX_SERVER.format(port=np, router_port=rp, params=ndir / "uwsgi_params")
        for np, rp in ((na_port, ra_port), (nb_port, rb_port))
    )
    (ndir / "nginx.conf").write_text(nginx_conf(ndir, NGINX_SETTINGS + servers, connections=4096))
    nginx = procs.start(
        [tools["nginx"], "-p", str(ndir), "-c", str(ndir / "nginx.conf"), "-e", str(ndir / "error.log")], "nginx"
    )

    wait_listening(backend, backend_port)
    wait_listening(router_a, ra_port)
    wait_listening(router_b, rb_port)
    wait_listening(nginx, na_port)
    wait_listening(nginx, nb_port)
    # the router trees are complete (master + its router processes) before the first CPU sample
    for proc in (router_a, router_b):
        wait_tree(proc, 1 + router_processes)
    chains = [Chain("A", "uwsgirouter", router_a, ra_port, na_port), Chain("B", "uWSGI", router_b, rb_port, nb_port)]
    return Setup(chains, ndir)


def check_chain(chain: Chain, workloads: Sequence[Workload]) -> None:
    """Each workload answered with 200 and exactly the expected body, or the bench stops before measuring."""
    for workload in workloads:
        expected = workload.expected_body()
        if workload.sequential:
            try:
                raw = uwsgi_exchange(chain.router_port, uwsgi_packet(workload, chain.router_port))
            except OSError as exc:
                raise BenchError(f"{chain.name}: {workload.label} request failed: {exc}") from exc
            if not answer_ok(raw, expected):
                raise BenchError(
                    f"{chain.name}: {workload.label} answered wrongly (expected 200 with {len(expected)} bytes): "
                    f"{raw[:200]!r}\nrouter log:\n{chain.proc.log_tail()}"
                )
            chain.response_size[workload.name] = len(raw)
            continue
        try:
            status, body, wire = http_request(chain.nginx_port, workload)
        except OSError as exc:
            raise BenchError(f"{chain.name}: {workload.label} request failed: {exc}") from exc
        if status != 200 or body != expected:
            raise BenchError(
                f"{chain.name}: {workload.label} answered {status} with {len(body)} bytes "
                f"(expected 200 with {len(expected)} bytes): {body[:200]!r}\n"
                f"router log:\n{chain.proc.log_tail()}"
            )
        chain.response_size[workload.name] = wire
