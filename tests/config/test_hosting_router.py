"""The production router file of the uwsgi.it hosting service (tests/config/data/hosting_router.ini, with its
included local.ini) loads and runs with warnings for what uwsgirouter lacks only: its dgram-router lines.

Started as a real process it binds its UNIX subscription socket, opens it to unprivileged instances with its
hook-as-gateway, routes a node that signs its announces over that socket, refuses an unsigned one, forwards
each accepted subscription to its fastrouter-resubscribe UNIX datagram socket, logs to its logto file and
stops on SIGHUP (exit-on-reload)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import (
    ROUTER,
    ProcessManager,
    can_connect,
    connect,
    free_port,
    read_all,
    request_vars,
    short_unix_dir,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)
from uwsgirouter.config import load_config
from uwsgirouter.protocol import decode_subscription

DATA = Path(__file__).with_name("data")


def write_hosting_files(tmp_path: Path, port: int = 3017, stats_port: int = 5004) -> Path:
    (tmp_path / "subscribe").mkdir()
    (tmp_path / "domains").mkdir()
    (tmp_path / "local.ini").write_text((DATA / "hosting_local.ini").read_text())
    text = (
        (DATA / "hosting_router.ini")
        .read_text()
        .format(
            tmp=tmp_path,
            port=port,
            stats_port=stats_port,
            dgram_port=3022,
            user=pwd.getpwuid(os.getuid()).pw_name,
            group=grp.getgrgid(os.getgid()).gr_name,
        )
    )
    path = tmp_path / "fastrouter.ini"
    path.write_text(text)
    return path


def test_the_hosting_router_file_loads_with_only_what_is_missing_named(tmp_path: Path) -> None:
    path = write_hosting_files(tmp_path)
    warnings: list[str] = []
    config = load_config([str(path)], {}, warn=warnings.append)
    origin = f"{path} [uwsgi]"
    assert warnings == [
        f"uWSGI option --dgram-router ({origin}) is not implemented by uwsgirouter: ignored",
        f"uWSGI option --dgram-router-psk-in ({origin}) is not implemented by uwsgirouter: ignored",
        f"uWSGI option --dgram-router-to ({origin}) is not implemented by uwsgirouter: ignored",
        "uWSGI plugins not available in uwsgirouter, ignored: dgram_router",
    ]
    assert [str(a) for a in config.fastrouter] == ["127.0.0.1:3017"]  # %(public_ip) from the included file
    assert [str(hook) for hook in config.hook_as_gateway] == [f"chmod:{tmp_path}/subscribe/fastrouter 666"]
    assert config.subscriptions_use_credentials and config.subscriptions_sign_check == f"SHA1:{tmp_path}/domains"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """The file's UNIX sockets need short paths (AF_UNIX: 107 bytes)."""
    path = short_unix_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write_keys(directory: Path, key: str) -> Path:
    """The router's public key directory (subscriptions-sign-check) gets KEY.pem; returns the node's private key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / "domains" / f"{key}.pem").write_bytes(public)
    path = directory / "node.pem"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return path


def _stats(port: int) -> dict[str, object]:
    with connect(("127.0.0.1", port)) as sock:
        document: dict[str, object] = json.loads(read_all(sock))
    return document


@pytest.mark.integration
def mode_of(path: Path) -> int | None:
    """A file's permission bits, None while it does not exist yet."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def test_the_hosting_router_file_starts_and_routes_a_signed_node_with_only_dgram_router_warned(
    procs: ProcessManager, short_dir: Path
) -> None:
    port, stats_port, node_port = free_port(), free_port(), free_port()
    ini = write_hosting_files(short_dir, port, stats_port)
    private = _write_keys(short_dir, "example.com")
    subscribe = short_dir / "subscribe"
    # where the file's fastrouter-resubscribe forwards every accepted subscription (a UNIX datagram socket)
    forwarded = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    forwarded.bind(str(subscribe / "dgram"))
    forwarded.settimeout(15)
    try:
        router = procs.start([*ROUTER, str(ini)], "hosting-router")
        wait_until(lambda: can_connect(("127.0.0.1", port)) or not router.alive(), 15, what="the hosting router")
        assert router.alive(), router.log()
        # its hook-as-gateway opened the subscription socket to unprivileged instances
        wait_until(lambda: mode_of(subscribe / "fastrouter") == 0o666, what="the chmod hook")
        # a node of the hosting service: real uWSGI, signing its announces over the UNIX socket
        node = procs.uwsgi_backend(
            f"127.0.0.1:{node_port}",
            "customer",
            "--subscribe-to",
            f"{subscribe / 'fastrouter'}:example.com,0,SHA1:{private}",
            wait_for=("127.0.0.1", node_port),
        )
        response = wait_until(
            lambda: (r := uwsgi_request(("127.0.0.1", port), request_vars("example.com"))).status == 200 and r,
            15,
            what="a request routed to the subscribed node",
        )
        assert b"customer" in response.body, response.raw
        datagram = forwarded.recv(65536)
        resubscribed = decode_subscription(datagram)
        # forwarded as uWSGI does: the same key, this router as the node (the next tier routes through it)
        assert (resubscribed.key, resubscribed.address) == (b"example.com", f"127.0.0.1:{port}".encode())
        log_file = short_dir / "fastrouter.log"
        logged = log_file.read_text()
        assert f"example.com => new node: 127.0.0.1:{node_port}" in logged
        # an unsigned announce over the same socket is refused (subscriptions-sign-check), its sender's
        # credentials read by the kernel (subscriptions-use-credentials)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as intruder:
            pairs = {"key": "intruder.example", "address": f"127.0.0.1:{node_port}", "modifier1": "0"}
            intruder.sendto(uwsgi_packet(pairs, modifier1=224), str(subscribe / "fastrouter"))
        wait_until(lambda: _stats(stats_port).get("subscription_packets_rejected") == 1, what="the refusal")
        assert uwsgi_request(("127.0.0.1", port), request_vars("intruder.example")).status == 502
        # exit-on-reload: SIGHUP stops the router
        router.signal(signal.SIGHUP)
        assert router.wait(15) == 0
        node.signal(signal.SIGINT)
    finally:
        forwarded.close()
    logged = log_file.read_text()
    assert "exit-on-reload: stopping instead of reloading" in logged
    for trouble in ("Traceback", "error", "ignored", "not implemented", "bad signature", "warning"):
        assert trouble not in logged.lower(), logged
    origin = f"{ini} [uwsgi]"
    assert router.log().splitlines() == [  # what the router said outside its log file: the load warnings
        f"uwsgirouter: uWSGI option --dgram-router ({origin}) is not implemented by uwsgirouter: ignored",
        f"uwsgirouter: uWSGI option --dgram-router-psk-in ({origin}) is not implemented by uwsgirouter: ignored",
        f"uwsgirouter: uWSGI option --dgram-router-to ({origin}) is not implemented by uwsgirouter: ignored",
        "uwsgirouter: uWSGI plugins not available in uwsgirouter, ignored: dgram_router",
    ]
