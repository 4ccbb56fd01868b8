"""The seed's "Getting started", "Way 1" and "Way 2" examples, as written, with real uWSGI backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import REPO, ProcessManager, free_port, http_get, request_vars, uwsgi_request, wait_until

pytestmark = pytest.mark.integration


def test_getting_started_binds_every_address_and_answers_502(procs: ProcessManager, tmp_path: Path) -> None:
    port = free_port()
    unix = str(tmp_path / "uwsgi.sock")
    abstract = f"foobar-{port}"
    procs.router(
        "--fastrouter",
        f"127.0.0.1:{port}",
        "--fastrouter",
        unix,
        "--fastrouter",
        f"@{abstract}",
        wait_for=("127.0.0.1", port),
    )
    for address in (("127.0.0.1", port), unix, b"\0" + abstract.encode() + b"\0"):
        response = uwsgi_request(address)
        assert response.status == 502
        assert b"example.com" in response.body


def test_way1_use_base_routes_by_host(procs: ProcessManager, tmp_path: Path) -> None:
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    procs.uwsgi_backend(str(sockets / "example.com"), "one", wait_for=str(sockets / "example.com"))
    procs.uwsgi_backend(str(sockets / "unbit.it"), "two", wait_for=str(sockets / "unbit.it"))
    port = free_port()
    procs.router(
        "--fastrouter", f"127.0.0.1:{port}", "--fastrouter-use-base", f"{sockets}/", wait_for=("127.0.0.1", port)
    )
    assert b"instance=one" in uwsgi_request(("127.0.0.1", port), request_vars("example.com")).body
    assert b"instance=two" in uwsgi_request(("127.0.0.1", port), request_vars("unbit.it")).body
    assert uwsgi_request(("127.0.0.1", port), request_vars("missing.org")).status == 502


def test_way2_use_pattern_through_nginx(procs: ProcessManager, tmp_path: Path) -> None:
    site = tmp_path / "sockets" / "example.com"
    site.mkdir(parents=True)
    procs.uwsgi_backend(str(site / "uwsgi.sock"), "pattern", wait_for=str(site / "uwsgi.sock"))
    router_port, http_port = free_port(), free_port()
    procs.router(
        "--fastrouter",
        f"127.0.0.1:{router_port}",
        "--fastrouter-use-pattern",
        f"{tmp_path}/sockets/%s/uwsgi.sock",
        wait_for=("127.0.0.1", router_port),
    )
    procs.nginx(f"127.0.0.1:{router_port}", http_port)
    response = http_get(http_port, host="example.com")
    assert response.status == 200
    assert b"instance=pattern host=example.com" in response.body
    assert http_get(http_port, host="other.org").status == 502


def test_the_quickstart_configuration_routes_a_request(procs: ProcessManager, unix_dir: Path) -> None:
    """conf/quickstart.ini as scripts/quickstart runs it, on a free port (quickstart-port), in a fresh sockets
    directory (scripts/quickstart creates its own)."""
    port = free_port()
    procs.router(
        "--set", f"quickstart-port={port}", "--set", f"sockets-dir={unix_dir}", str(REPO / "conf" / "quickstart.ini"),
        wait_for=("127.0.0.1", port),
    )  # fmt: skip
    response = wait_until(
        lambda: (
            (r := uwsgi_request(("127.0.0.1", port), request_vars(host="example.com", path="/hello"))).status == 200
            and r
        ),
        15,
        what="the quickstart app",
    )
    assert b"Hello from uwsgirouter: you asked example.com/hello" in response.body
