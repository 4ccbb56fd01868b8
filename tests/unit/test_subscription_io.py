"""The subscription client's grammar and packets, and the server's datagram handling, on real sockets."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from uwsgirouter.protocol import Command, Subscription, decode_subscription, encode_subscription
from uwsgirouter.subscription.client import Subscriber, Target, parse_subscribe2, parse_subscribe_to
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.subscription.server import RESUBSCRIBED_RECORD, SubscriptionServer
from uwsgirouter.subscription.table import Change, NodeTable


def test_subscribe_to_grammar() -> None:
    assert parse_subscribe_to("127.0.0.1:7000:example.com", "127.0.0.1:3031", []) == [
        Target("127.0.0.1:7000", "example.com", "127.0.0.1:3031")
    ]
    # the key starts after the second colon, so it may hold colons; ,5 is modifier1
    assert parse_subscribe_to("127.0.0.1:7000:unbit.it:8000,5", "a:1", []) == [
        Target("127.0.0.1:7000", "unbit.it:8000", "a:1", 5)
    ]
    # ADDR= announces another address; =N= names shared socket N
    assert parse_subscribe_to("10.0.0.1:99=127.0.0.1:7000:k", None, [])[0].address == "10.0.0.1:99"
    assert parse_subscribe_to("=1=127.0.0.1:7000:k", None, ["s0:1", "s1:2"])[0].address == "s1:2"
    # a UNIX datagram server: the key follows the next colon
    assert parse_subscribe_to("/run/sub.sock:example.com", "a:1", []) == [Target("/run/sub.sock", "example.com", "a:1")]
    # without the required colons, or without any address to announce, nothing is sent (as uWSGI)
    assert parse_subscribe_to("127.0.0.1:7000", "a:1", []) == []
    assert parse_subscribe_to("127.0.0.1:7000:k", None, []) == []


def test_mapping_file(tmp_path: Path) -> None:
    mapping = tmp_path / "mappings.txt"
    mapping.write_text("# keys\nunbit.it\nunbit.it:8000,5\n\nuwsgi.it\nprojects.unbit.it", encoding="utf-8")
    targets = parse_subscribe_to(f"127.0.0.1:7000:@{mapping}", "127.0.0.1:3031", [])
    assert [(t.key, t.modifier1) for t in targets] == [
        ("unbit.it", 0),
        ("unbit.it:8000", 5),
        ("uwsgi.it", 0),
        ("projects.unbit.it", 0),
    ]
    assert parse_subscribe_to(f"127.0.0.1:7000:@{tmp_path}/missing.txt", "a:1", []) == []


def test_subscribe2() -> None:
    (target,) = parse_subscribe2(
        {"server": "127.0.0.1:7000", "key": "k", "socket": "1", "weight": "3", "modifier1": "5"},
        ["s0:1", "s1:2"],
        "s0:1",
    )
    assert (target.address, target.weight, target.modifier1) == ("s1:2", 3, 5)
    assert parse_subscribe2({"key": "k"}, [], "a:1") == []


def test_subscriber_sends_uwsgi_packets_and_unsubscribes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        target = Target(f"127.0.0.1:{port}", "example.com", "127.0.0.1:3031", 5)
        subscriber = Subscriber([target], frequency=10, cores=2, weight=0, force_modifier1=None)
        try:
            subscriber.tick(100.0)
            sub = decode_subscription(server.recv(4096))
            assert (sub.key, sub.address, sub.command, sub.modifier1, sub.cores) == (
                b"example.com",
                b"127.0.0.1:3031",
                Command.SUBSCRIBE,
                5,
                2,
            )
            assert subscriber.next_at == 101.0, "the second announce comes one second later"
            subscriber.tick(101.0)
            server.recv(4096)
            assert subscriber.next_at == 111.0, "then every --subscribe-freq seconds"
            subscriber.unsubscribe()
            assert decode_subscription(server.recv(4096)).command == Command.UNSUBSCRIBE
        finally:
            subscriber.close()


def test_auto_weight_and_forced_modifier() -> None:
    subscriber = Subscriber([Target("127.0.0.1:9", "k", "a:1", 5)], weight=4, force_modifier1=7)
    try:
        sub = decode_subscription(subscriber.packet(subscriber.targets[0], Command.SUBSCRIBE))
        assert (sub.weight, sub.modifier1) == (4, 7)
    finally:
        subscriber.close()


def test_check_file_suppresses_announces_until_it_is_removed(tmp_path: Path) -> None:
    """uWSGI 2.0's subscribe2 check=FILE: no packet while FILE exists (at start, one second later, then on
    every --subscribe-freq tick); once FILE is gone, the next tick announces again."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        flag = tmp_path / "maintenance"
        flag.touch()
        target = Target(f"127.0.0.1:{server.getsockname()[1]}", "k", "a:1", check_file=str(flag))
        subscriber = Subscriber([target], frequency=10)
        try:
            for now in (100.0, 101.0, 111.0):
                subscriber.tick(now)
            with pytest.raises(BlockingIOError):
                server.recv(4096)  # nothing was sent while the check file exists
            flag.unlink()
            subscriber.tick(121.0)
            server.settimeout(5)
            sub = decode_subscription(server.recv(4096))
            assert (sub.command, sub.key, sub.address) == (Command.SUBSCRIBE, b"k", b"a:1")
            subscriber.tick(131.0)
            assert decode_subscription(server.recv(4096)).command == Command.SUBSCRIBE, "and on every tick after"
        finally:
            subscriber.close()


def test_notify_ack_on_a_new_node(tmp_path: Path) -> None:
    ack_path = str(tmp_path / "ack.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ack:
        ack.bind(ack_path)
        ack.settimeout(5)
        server = SubscriptionServer([], NodeTable(), TableImage(1 << 16))
        packet = encode_subscription(
            Subscription(key=b"example.com", address=b"127.0.0.1:3031", notify=ack_path.encode())
        )
        assert server.handle_datagram(packet, now=1.0, wall=1.0) is Change.ADDED
        assert ack.recv(512) == b"[subscription ack] example.com => new node: 127.0.0.1:3031"


def test_resubscribe_forwards_once_with_our_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        from uwsgirouter.address import TcpAddress

        server = SubscriptionServer(
            [],
            NodeTable(),
            TableImage(1 << 16),
            resubscribe=[TcpAddress("127.0.0.1", peer.getsockname()[1])],
            own_address=b"127.0.0.1:3017",
        )
        packet = encode_subscription(Subscription(key=b"k", address=b"127.0.0.1:3031"))
        server.handle_datagram(packet, now=1.0, wall=1.0)
        forwarded = peer.recv(4096)
        assert decode_subscription(forwarded).address == b"127.0.0.1:3017"
        assert RESUBSCRIBED_RECORD in forwarded
        # a packet that was itself forwarded is never forwarded again: no loop between two routers
        server.handle_datagram(forwarded, now=2.0, wall=2.0)
        peer.setblocking(False)
        try:
            peer.recv(4096)
        except BlockingIOError:
            pass
        else:
            raise AssertionError("a resubscribed packet was forwarded again")
        server.close()


def test_announces_carry_the_notify_address() -> None:
    subscriber = Subscriber([Target("127.0.0.1:9", "k", "a:1")], notify="/run/acks.sock")
    try:
        assert decode_subscription(subscriber.packet(subscriber.targets[0], Command.SUBSCRIBE)).notify == (
            b"/run/acks.sock"
        )
    finally:
        subscriber.close()
