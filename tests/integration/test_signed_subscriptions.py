"""Signed subscriptions with real processes: uWSGI 2.0.31 instances signing to uwsgirouter, uwsgirouter
instances signing to uWSGI's fastrouter, and what our router refuses (wrong key, unsigned, replays:
docs/differences.md, "Signed subscriptions").

Keys are generated here. Replays use packets captured from a real uWSGI instance: it announces to a UDP
socket the test owns, and the test relays what it chooses to the router, then replays it.

uWSGI 2.0 unsubscribes from its SIGINT handler with the ``--subscribe-to`` string it cuts in place while
announcing: a SIGINT that lands during an announce (even just after its packet left, before the string is
mended) sends the unsubscribe unsigned, which we refuse, rightly. So the tests stop a uWSGI instance only
once it announced (seen on the capture socket) and its master is back asleep in its loop.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.test_subscriptions import (
    LOOPBACK,
    REAL_UWSGI,
    UWSGIROUTER,
    Router,
    instance_name,
    new_node_pattern,
    start_instance,
    start_router,
    tcp_ports,
)
from tests.support import UWSGI, Proc, ProcessManager, wait_until
from uwsgirouter.protocol import Command, Subscription, decode_subscription

pytestmark = pytest.mark.integration

KEY = "example.com"


@dataclass
class Keys:
    """A directory of public keys for the router, and the private keys instances sign with."""

    public_dir: Path
    private: Path  #: the key of example.com
    stranger: Path  #: a key the router does not know


def _write_private(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )


@pytest.fixture(scope="module")
def key_pair() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
def keys(tmp_path: Path, key_pair: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> Keys:
    own, stranger = key_pair
    public_dir = tmp_path / "public"
    public_dir.mkdir()
    (public_dir / f"{KEY}.pem").write_bytes(
        own.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    _write_private(tmp_path / "private.pem", own)
    _write_private(tmp_path / "stranger.pem", stranger)
    return Keys(public_dir, tmp_path / "private.pem", tmp_path / "stranger.pem")


@pytest.fixture(scope="module", autouse=True)
def uwsgi_signs() -> None:
    """Real uWSGI signs and checks only when it was built with OpenSSL's headers."""
    assert UWSGI, "uWSGI 2.0.31 is not installed (scripts/install)"
    usage = subprocess.run([UWSGI, "--help"], capture_output=True, text=True, check=False).stdout
    assert "--subscriptions-sign-check" in usage, "uWSGI was built without OpenSSL: scripts/install (libssl-dev)"


def rejected(router: Router) -> int:
    return int(router.stats().get("subscription_packets_rejected", 0))


def wait_rejected(router: Router, count: int, what: str) -> None:
    wait_until(lambda: rejected(router) >= count, 10, interval=0.05, what=what)


class Capture:
    """A UDP socket an instance announces to; the test relays chosen packets to the router, or replays them."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.address = f"{LOOPBACK}:{self.sock.getsockname()[1]}"
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def next(self, command: Command, above: int = 0, timeout: float = 15.0) -> tuple[bytes, Subscription]:
        """The next captured packet carrying ``command`` and a ``unix`` above ``above``."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                datagram = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no {command.name} packet with unix above {above} in {timeout} s") from None
            sub = decode_subscription(datagram)
            assert sub.sign is not None and sub.unix is not None, sub
            if sub.command == command and sub.unix > above:
                return datagram, sub

    def send(self, router: Router, datagram: bytes) -> None:
        self.out.sendto(datagram, (LOOPBACK, router.subscription_port))

    def close(self) -> None:
        self.sock.close()
        self.out.close()


@pytest.fixture
def capture() -> Iterator[Capture]:
    relay = Capture()
    try:
        yield relay
    finally:
        relay.close()


def stop_after_announces(instance: Proc, capture: Capture, count: int) -> None:
    """SIGINT a uWSGI instance after its ``count``-th next announce reached the capture socket (its announce
    at start + 1 s is then behind it, the next one 10 s ahead), once its master sleeps in its loop again."""
    for _ in range(count):
        capture.next(Command.SUBSCRIBE)
    master = psutil.Process(instance.pid)
    wait_until(
        lambda: master.status() == psutil.STATUS_SLEEPING, 5, interval=0.002, what="the uWSGI master done announcing"
    )
    instance.signal(signal.SIGINT)


# -- signing instances get routed, both ways -------------------------------------------------------------------


def test_real_uwsgi_instances_signing_are_routed_by_uwsgirouter(
    procs: ProcessManager, keys: Keys, capture: Capture
) -> None:
    router = start_router(procs, UWSGIROUTER, "--subscriptions-sign-check", f"SHA1:{keys.public_dir}")
    address = f"{LOOPBACK}:{tcp_ports(1)[0]}"
    # uwsgi --subscribe-to 127.0.0.1:PORT:example.com,0,SHA1:private.pem (and to the capture socket, to
    # know when it announces)
    signing = f"{KEY},0,SHA1:{keys.private}"
    subscribe = ("--subscribe-to", f"{router.server}:{signing}", "--subscribe-to", f"{capture.address}:{signing}")
    instance = start_instance(procs, REAL_UWSGI, "signed", address, *subscribe)
    router.wait_node(KEY, address)
    response = router.request(KEY)
    assert instance_name(response) == "signed", response.raw
    # its signed unsubscribe (unix = now + 1) is verified and honoured too
    stop_after_announces(instance, capture, 2)
    wait_until(lambda: f"{KEY} => node {address} unsubscribed" in router.proc.log(), 10, what="the unsubscribe")
    assert "bad signature" not in router.proc.log()


@pytest.mark.parametrize("syntax", ["subscribe-to", "subscribe2"])
def test_uwsgirouter_instances_signing_are_routed_by_real_uwsgi(procs: ProcessManager, keys: Keys, syntax: str) -> None:
    router = start_router(procs, REAL_UWSGI, "--subscriptions-sign-check", f"SHA1:{keys.public_dir}")
    address = f"{LOOPBACK}:{tcp_ports(1)[0]}"
    if syntax == "subscribe-to":
        announce = ("--subscribe-to", f"{router.server}:{KEY},0,SHA1:{keys.private}")
    else:
        announce = ("--subscribe2", f"server={router.server},key={KEY},sign=SHA1:{keys.private}")
    start_instance(procs, UWSGIROUTER, "ours", address, "-M", *announce)
    router.wait_node(KEY, address)  # uWSGI verified the signature: it refuses unsigned packets with sign-check on
    response = router.request(KEY)
    assert instance_name(response) == "ours", response.raw


# -- what uwsgirouter refuses ----------------------------------------------------------------------------------


def test_an_instance_signing_with_the_wrong_key_is_refused(procs: ProcessManager, keys: Keys) -> None:
    router = start_router(procs, UWSGIROUTER, "--subscriptions-sign-check", f"SHA1:{keys.public_dir}")
    address = f"{LOOPBACK}:{tcp_ports(1)[0]}"
    start_instance(
        procs, REAL_UWSGI, "intruder", address, "--subscribe-to", f"{router.server}:{KEY},0,SHA1:{keys.stranger}"
    )
    wait_rejected(router, 2, "the intruder's announces refused")
    wait_until(lambda: f"{KEY} => {address}: bad signature" in router.proc.log(), 5, what="the refusal logged")
    assert not new_node_pattern(KEY).search(router.proc.log())
    assert router.keys() == {}
    assert instance_name(router.request(KEY)) is None


def test_unsigned_announces_are_refused(procs: ProcessManager, keys: Keys) -> None:
    router = start_router(procs, UWSGIROUTER, "--subscriptions-sign-check", f"SHA1:{keys.public_dir}")
    address = f"{LOOPBACK}:{tcp_ports(1)[0]}"
    start_instance(procs, REAL_UWSGI, "unsigned", address, "--subscribe-to", f"{router.server}:{KEY}")
    wait_rejected(router, 2, "the unsigned announces refused")
    wait_until(lambda: "unsigned packet refused" in router.proc.log(), 5, what="the refusal logged")
    assert router.keys() == {}
    assert instance_name(router.request(KEY)) is None


def signed_node_relayed(
    procs: ProcessManager, keys: Keys, capture: Capture
) -> tuple[Router, str, bytes, Subscription, bytes, Subscription]:
    """A real uWSGI instance announced through the capture socket: its subscribe is relayed (the node is
    added), then it stops and its unsubscribe is relayed (the node is removed). Returns the router, the
    node's address and both packets, for replaying."""
    router = start_router(procs, UWSGIROUTER, "--subscriptions-sign-check", f"SHA1:{keys.public_dir}")
    address = f"{LOOPBACK}:{tcp_ports(1)[0]}"
    signing = f"{capture.address}:{KEY},0,SHA1:{keys.private}"
    instance = start_instance(procs, REAL_UWSGI, "first", address, "--subscribe-to", signing)
    subscribe, subscribed = capture.next(Command.SUBSCRIBE)
    capture.send(router, subscribe)
    router.wait_node(KEY, address)
    stop_after_announces(instance, capture, 1)  # uWSGI unsubscribes when it stops
    unsubscribe, unsubscribed = capture.next(Command.UNSUBSCRIBE)
    instance.wait(15)
    capture.send(router, unsubscribe)
    wait_until(lambda: f"{KEY} => node {address} unsubscribed" in router.proc.log(), 10, what="the unsubscribe")
    assert router.keys() == {}
    return router, address, subscribe, subscribed, unsubscribe, unsubscribed


def test_a_replayed_subscribe_is_refused_even_after_the_node_left(
    procs: ProcessManager, keys: Keys, capture: Capture
) -> None:
    router, address, subscribe, subscribed, _, _ = signed_node_relayed(procs, keys, capture)
    before = rejected(router)
    capture.send(router, subscribe)  # uWSGI 2.0 would take the node back
    wait_rejected(router, before + 1, "the replayed subscribe refused")
    wait_until(lambda: "invalid (sniffed ?) subscribe refused" in router.proc.log(), 5, what="the refusal logged")
    assert router.keys() == {}
    assert len(new_node_pattern(KEY, address).findall(router.proc.log())) == 1
    assert instance_name(router.request(KEY)) is None
    assert subscribed.unix is not None and rejected(router) == before + 1


def test_a_replayed_unsubscribe_is_refused(procs: ProcessManager, keys: Keys, capture: Capture) -> None:
    router, address, _, _, unsubscribe, unsubscribed = signed_node_relayed(procs, keys, capture)
    assert unsubscribed.unix is not None
    # the instance starts again; its first announce newer than the unsubscribe brings the node back
    start_instance(
        procs, REAL_UWSGI, "second", address, "--subscribe-to", f"{capture.address}:{KEY},0,SHA1:{keys.private}"
    )
    resubscribe, _ = capture.next(Command.SUBSCRIBE, above=unsubscribed.unix)
    capture.send(router, resubscribe)
    wait_until(lambda: len(new_node_pattern(KEY, address).findall(router.proc.log())) == 2, 10, what="the node back")
    router.wait_routing_view(KEY, [address])
    before = rejected(router)
    capture.send(router, unsubscribe)  # uWSGI 2.0 would drop the node again
    wait_rejected(router, before + 1, "the replayed unsubscribe refused")
    wait_until(lambda: "invalid (sniffed ?) unsubscribe refused" in router.proc.log(), 5, what="the refusal logged")
    assert list(router.nodes(KEY)) == [address]
    assert instance_name(router.request(KEY)) == "second"
