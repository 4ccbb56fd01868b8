"""Every ready configuration of conf/ started as its comments say (ports and directories moved with --set)
and a request routed through it; conf/nginx-site.conf in front of one of them with the real nginx."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from tests.support import (
    NGINX,
    REPO,
    Proc,
    ProcessManager,
    Response,
    can_connect,
    connect,
    free_port,
    http_get,
    read_all,
    request_vars,
    router_worker,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

CONF = REPO / "conf"


def start(procs: ProcessManager, name: str, wait_for: int | None = None, **sets: object) -> Proc:
    """``uwsgirouter --set key=value ... conf/NAME`` (underscores in keys become dashes), the order in which
    real uWSGI takes the --set values too."""
    args: list[str] = []
    for key, value in sets.items():
        args += ["--set", f"{key.replace('_', '-')}={value}"]
    return procs.router(*args, str(CONF / name), wait_for=("127.0.0.1", wait_for) if wait_for else None)


def app(procs: ProcessManager, port: int) -> Proc:
    """conf/app.ini on ``port``."""
    return start(procs, "app.ini", port, app_port=port)


def get(port: int, host: str = "example.com", path: str = "/", body: bytes = b"") -> Response:
    method = "POST" if body else "GET"
    return uwsgi_request(
        ("127.0.0.1", port), request_vars(host=host, path=path, method=method, body_len=len(body)), body
    )


def answered_by(response: Response) -> str:
    assert response.status == 200, response.raw
    return response.body.decode().splitlines()[1].removeprefix("answered by ")


def test_use_base(procs: ProcessManager, unix_dir: Path) -> None:
    port = free_port()
    start(procs, "use-base.ini", port, router_port=port, sockets_dir=unix_dir)
    response = wait_until(lambda: (r := get(port, path="/base")).status == 200 and r, 15, what="the app")
    assert response.body.startswith(b"Hello from uwsgirouter: you asked example.com/base\n")
    assert answered_by(response) == f"the app on {unix_dir}/example.com"
    assert get(port, host="other.org").status == 502  # no socket of that name


def test_use_pattern(procs: ProcessManager, unix_dir: Path) -> None:
    (unix_dir / "example.com").mkdir()
    port = free_port()
    start(procs, "use-pattern.ini", port, router_port=port, sockets_dir=unix_dir)
    response = wait_until(lambda: (r := get(port)).status == 200 and r, 15, what="the app")
    assert answered_by(response) == f"the app on {unix_dir}/example.com/uwsgi.sock"


def test_use_cache_filled_by_a_file_script(procs: ProcessManager) -> None:
    port, app_port = free_port(), free_port()
    app(procs, app_port)
    start(procs, "use-cache.ini", port, router_port=port, app_port=app_port)
    assert answered_by(get(port)) == f"the app on 127.0.0.1:{app_port}"
    assert answered_by(get(port, host="example.com:8000")) == f"the app on 127.0.0.1:{app_port}"
    assert get(port, host="other.org").status == 502  # not in the cache


def test_subscription_server_and_subscribers(procs: ProcessManager) -> None:
    port, subscription_port = free_port(), free_port(socket.SOCK_DGRAM)
    start(procs, "subscription-server.ini", port, router_port=port, subscription_port=subscription_port)
    assert get(port).status == 502  # nobody subscribed yet
    start(procs, "subscriber.ini", subscription_port=subscription_port)
    response = wait_until(lambda: (r := get(port)).status == 200 and r, 15, what="the subscription")
    assert answered_by(response) == "a subscriber"
    # every key of conf/mappings.txt
    for host in ("www.example.com", "example.com:8000"):

        def routed(host: str = host) -> bool:
            return get(port, host=host).status == 200

        wait_until(routed, 15, what=f"the key {host}")


def test_code_string_mapper_balances_over_two_nodes(procs: ProcessManager) -> None:
    port, first, second = free_port(), free_port(), free_port()
    app(procs, first)
    app(procs, second)
    procs.router(
        "--set", f"router-port={port}", str(CONF / "code-string.ini"),
        wait_for=("127.0.0.1", port), env={"MAPPER_NODES": f"127.0.0.1:{first} 127.0.0.1:{second}"},
    )  # fmt: skip
    answers = [answered_by(get(port)) for _ in range(4)]
    assert sorted(answers) == sorted([f"the app on 127.0.0.1:{p}" for p in (first, second)] * 2)
    assert answers[0] != answers[1]  # in turn
    assert answered_by(get(port, host="other.org")) == f"the app on 127.0.0.1:{first}"  # the default node


def test_static_nodes_in_turn(procs: ProcessManager) -> None:
    port, first, second = free_port(), free_port(), free_port()
    app(procs, first)
    app(procs, second)
    start(procs, "static-nodes.ini", port, router_port=port, app_port=first, app2_port=second)
    answers = {answered_by(get(port, host=f"any{i}.example")) for i in range(4)}
    assert answers == {f"the app on 127.0.0.1:{p}" for p in (first, second)}


def test_cheap_mode_with_a_shared_socket(procs: ProcessManager) -> None:
    port, subscription_port = free_port(), free_port(socket.SOCK_DGRAM)
    start(procs, "cheap-shared.ini", port, router_port=port, subscription_port=subscription_port)
    # no node yet: the router is cheap, the local app answers every request on the shared socket
    assert {answered_by(get(port)) for _ in range(6)} == {"the local app"}
    start(procs, "subscriber.ini", subscription_port=subscription_port)
    # a node subscribed: the router accepts too, and passes its requests to the node
    wait_until(lambda: answered_by(get(port)) == "a subscriber", 20, what="a request through the router")


def test_post_buffering(procs: ProcessManager, tmp_path: Path) -> None:
    port, app_port = free_port(), free_port()
    app(procs, app_port)
    router = start(procs, "post-buffering.ini", port, router_port=port, app_port=app_port, buffer_dir=tmp_path)
    for size in (100, 100_000):  # in memory, then in a temp file
        response = get(port, body=b"x" * size)
        assert response.status == 200 and f"you sent {size} bytes".encode() in response.body, response.raw
    assert not [p for p in tmp_path.iterdir() if p.is_file() and not p.name.endswith(".log")]  # unlinked
    # a slow upload: half of the body sent, the router holds it and has not connected to the node yet
    worker = router_worker(router)
    body = b"z" * 50_000
    with connect(("127.0.0.1", port)) as client:
        client.sendall(uwsgi_packet(request_vars(method="POST", body_len=len(body))) + body[:25_000])
        accepted = lambda: [c for c in worker.net_connections("tcp") if c.laddr[1] == port and c.raddr]  # noqa: E731
        wait_until(accepted, 10, what="the router to accept the upload")
        time.sleep(0.3)  # time enough for a streaming router to connect (it would at once)
        assert not [c for c in worker.net_connections("tcp") if c.raddr and c.raddr[1] == app_port]
        client.sendall(body[25_000:])
        assert b"you sent 50000 bytes" in read_all(client)


def test_nginx_site_in_front_of_a_router(procs: ProcessManager, tmp_path: Path, unix_dir: Path) -> None:
    if NGINX is None:
        pytest.skip("nginx is not installed (scripts/install)")
    port, http_port = free_port(), free_port()
    start(procs, "use-base.ini", port, router_port=port, sockets_dir=unix_dir)
    conf_dir = tmp_path / "nginx"
    conf_dir.mkdir()
    shutil.copy("/etc/nginx/uwsgi_params", conf_dir / "uwsgi_params")  # `include uwsgi_params` reads it here
    site = (CONF / "nginx-site.conf").read_text()
    assert "listen 80;" in site and "server 127.0.0.1:3017;" in site
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};").replace("127.0.0.1:3017", f"127.0.0.1:{port}")
    (conf_dir / "site.conf").write_text(site)
    temp_paths = "".join(f"{kind}_temp_path {conf_dir}/{kind};\n" for kind in ("proxy", "fastcgi", "uwsgi", "scgi"))
    (conf_dir / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {conf_dir}/nginx.pid;\n"
        f"error_log {conf_dir}/error.log warn;\nevents {{ worker_connections 64; }}\n"
        f"http {{\naccess_log off;\nclient_body_temp_path {conf_dir}/body;\n{temp_paths}include site.conf;\n}}\n"
    )
    nginx = procs.start([NGINX, "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf")], "nginx")
    wait_until(lambda: can_connect(("127.0.0.1", http_port)) or not nginx.alive(), 15, what="nginx")
    assert nginx.alive(), (conf_dir / "error.log").read_text()
    response = wait_until(lambda: (r := http_get(http_port, "/through/nginx")).status == 200 and r, 15, what="app")
    assert response.body.startswith(b"Hello from uwsgirouter: you asked example.com/through/nginx\n")
    upload = http_get(http_port, "/upload", method="POST", body=b"y" * 200_000)
    assert upload.status == 200 and b"you sent 200000 bytes" in upload.body
