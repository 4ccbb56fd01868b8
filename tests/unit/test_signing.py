"""Signed subscriptions: the server's guard (signature, freshness, replays, key files, credentials) and the
instance's signer. Packets are signed here with ``cryptography`` directly, as uWSGI's ``EVP_Sign*`` does
(PKCS#1 v1.5), so the guard is checked against the wire format rather than against our own signer."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from uwsgirouter.address import TcpAddress
from uwsgirouter.errors import ConfigError
from uwsgirouter.protocol import Command, Subscription, decode_subscription, encode_subscription
from uwsgirouter.subscription.client import Signer, Subscriber, Target, parse_subscribe2, parse_subscribe_to
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.subscription.server import SubscriptionServer
from uwsgirouter.subscription.signing import (
    Credentials,
    PublicKeys,
    SubscriptionGuard,
    digest_by_name,
    enable_credentials,
    key_file,
    receive_with_credentials,
    split_sign_spec,
)
from uwsgirouter.subscription.table import Change, NodeTable

KEY = b"example.com"
NODE = b"127.0.0.1:3031"
T0 = 1_700_000_000  # the wall clock of these tests
TOLERANCE = 60


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_public(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def write_private(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def packet(
    key: rsa.RSAPrivateKey | None,
    unix: int | None,
    command: Command = Command.SUBSCRIBE,
    address: bytes = NODE,
    subscription_key: bytes = KEY,
) -> bytes:
    """A datagram as uWSGI sends it: vars, ``unix``, then ``sign`` over the vars (SHA1, PKCS#1 v1.5)."""
    sub = Subscription(subscription_key, address, command, cores=2, weight=1, unix=unix)
    datagram = encode_subscription(sub)
    if key is None:
        return datagram
    signature = key.sign(datagram[4:], padding.PKCS1v15(), hashes.SHA1())
    return encode_subscription(replace(sub, sign=signature))


@pytest.fixture
def keys_dir(tmp_path: Path, private_key: rsa.RSAPrivateKey) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    write_public(directory / "example.com.pem", private_key)
    return directory


@pytest.fixture
def guard(keys_dir: Path) -> SubscriptionGuard:
    return SubscriptionGuard(sign_check=(hashes.SHA1(), str(keys_dir)), tolerance=TOLERANCE)


def check(guard: SubscriptionGuard, datagram: bytes, wall: float = T0, now: float = 0.0) -> str | None:
    return guard.check(decode_subscription(datagram), now, wall)


# -- the signature -----------------------------------------------------------------------------------------------


def test_a_good_packet_is_accepted(guard: SubscriptionGuard, private_key: rsa.RSAPrivateKey) -> None:
    assert check(guard, packet(private_key, T0)) is None
    assert guard.counters.get(KEY, NODE) == T0


def test_a_packet_signed_with_another_key_is_refused(guard: SubscriptionGuard, other_key: rsa.RSAPrivateKey) -> None:
    reason = check(guard, packet(other_key, T0))
    assert reason == "example.com => 127.0.0.1:3031: bad signature"
    assert guard.counters.get(KEY, NODE) is None  # a refused packet advances nothing


def test_a_tampered_packet_is_refused(guard: SubscriptionGuard, private_key: rsa.RSAPrivateKey) -> None:
    datagram = packet(private_key, T0)
    tampered = datagram.replace(b"127.0.0.1:3031", b"127.0.0.1:6666")
    assert tampered != datagram
    assert check(guard, tampered) == "example.com => 127.0.0.1:6666: bad signature"
    later = packet(private_key, T0 + 1).replace(b"\x01\x001", b"\x01\x009")  # cores 2 kept, weight 1 -> 9
    assert later != packet(private_key, T0 + 1)
    assert check(guard, later) == "example.com => 127.0.0.1:3031: bad signature"


def test_unsigned_packets_are_refused(guard: SubscriptionGuard) -> None:
    assert check(guard, packet(None, None)) == (
        "example.com => 127.0.0.1:3031: unsigned packet refused (--subscriptions-sign-check)"
    )
    assert check(guard, packet(None, T0)) is not None  # a unix var alone is no signature
    assert check(guard, packet(None, None, Command.UNSUBSCRIBE)) is not None


def test_a_key_without_a_public_key_file_is_refused(
    guard: SubscriptionGuard, keys_dir: Path, other_key: rsa.RSAPrivateKey
) -> None:
    signer = other_key
    reason = check(guard, packet(signer, T0, subscription_key=b"other.org"))
    assert reason == f"other.org => 127.0.0.1:3031: no public key {keys_dir}/other.org.pem"
    (keys_dir / "broken.org.pem").write_text("not a key")
    reason = check(guard, packet(signer, T0, subscription_key=b"broken.org"))
    assert reason == f"broken.org => 127.0.0.1:3031: public key {keys_dir}/broken.org.pem holds no PEM public key"


def test_key_file_names_are_sanitised_as_uwsgi_does() -> None:
    assert key_file("/keys", b"port.com:8080") == b"/keys/port.com_8080.pem"
    assert key_file("/keys", b"../../etc/x") == b"/keys/.._.._etc_x.pem"
    assert key_file("/keys", b"a-b_c.D9\xff\x00") == b"/keys/a-b_c.D9__.pem"


# -- freshness and replays (docs/differences.md, "Signed subscriptions") ----------------------------------------------


def test_a_replayed_subscribe_is_refused(guard: SubscriptionGuard, private_key: rsa.RSAPrivateKey) -> None:
    first = packet(private_key, T0)
    assert check(guard, first) is None
    assert check(guard, first, wall=T0 + 5) == (
        f"example.com => 127.0.0.1:3031: invalid (sniffed ?) subscribe refused, unix {T0} is not above {T0}"
    )
    assert check(guard, packet(private_key, T0 + 10), wall=T0 + 10) is None  # the counter advances ...
    assert check(guard, packet(private_key, T0 + 5), wall=T0 + 11) is not None  # ... so older packets are refused
    assert guard.counters.get(KEY, NODE) == T0 + 10


def test_a_replayed_unsubscribe_is_refused(guard: SubscriptionGuard, private_key: rsa.RSAPrivateKey) -> None:
    assert check(guard, packet(private_key, T0)) is None
    unsubscribe = packet(private_key, T0 + 3, Command.UNSUBSCRIBE)  # uWSGI sends now + 1
    assert check(guard, unsubscribe, wall=T0 + 2) is None
    # the node comes back, then someone replays the unsubscribe they captured
    assert check(guard, packet(private_key, T0 + 4), wall=T0 + 4) is None
    reason = check(guard, unsubscribe, wall=T0 + 5)
    assert reason is not None and "invalid (sniffed ?) unsubscribe refused" in reason


def test_nothing_captured_replays_after_the_node_left(guard: SubscriptionGuard, private_key: rsa.RSAPrivateKey) -> None:
    subscribe = packet(private_key, T0)
    unsubscribe = packet(private_key, T0 + 6, Command.UNSUBSCRIBE)
    assert check(guard, subscribe) is None
    assert check(guard, unsubscribe, wall=T0 + 5) is None  # the node left
    for wall in (T0 + 10, T0 + 30, T0 + TOLERANCE + 5):  # within the tolerance of the last counter
        guard.tick(wall)
        assert check(guard, subscribe, wall=wall) is not None
        assert check(guard, unsubscribe, wall=wall) is not None
    guard.tick(T0 + 6 + TOLERANCE + 1)  # the counter is forgotten once the freshness check covers it
    assert len(guard.counters) == 0
    assert check(guard, subscribe, wall=T0 + 6 + TOLERANCE + 1) is not None
    assert check(guard, unsubscribe, wall=T0 + 6 + TOLERANCE + 1) is not None


def test_a_new_node_must_be_fresh(guard: SubscriptionGuard, private_key: rsa.RSAPrivateKey) -> None:
    reason = check(guard, packet(private_key, T0 - TOLERANCE - 1))
    assert reason == (
        f"example.com => 127.0.0.1:3031: invalid (sniffed ?) packet, unix {T0 - TOLERANCE - 1} is more than "
        f"{TOLERANCE} s away"
    )
    assert check(guard, packet(private_key, T0 + TOLERANCE + 1)) is not None  # from the future: same
    assert check(guard, packet(private_key, T0 - TOLERANCE)) is None  # the edge of the window is fine


def test_counters_are_per_key_and_node(guard: SubscriptionGuard, private_key: rsa.RSAPrivateKey) -> None:
    assert check(guard, packet(private_key, T0)) is None
    assert check(guard, packet(private_key, T0, address=b"127.0.0.1:3032")) is None


def test_the_counter_store_is_bounded(keys_dir: Path, private_key: rsa.RSAPrivateKey) -> None:
    guard = SubscriptionGuard(sign_check=(hashes.SHA1(), str(keys_dir)), tolerance=TOLERANCE, max_counters=3)
    for port in range(3):
        assert check(guard, packet(private_key, T0, address=b"10.0.0.1:%d" % port)) is None
    reason = check(guard, packet(private_key, T0, address=b"10.0.0.1:9"))
    assert reason == "example.com => 10.0.0.1:9: too many signed nodes to remember; refused"
    assert check(guard, packet(private_key, T0 + 1, address=b"10.0.0.1:0"), wall=T0 + 1) is None  # known: fine
    assert len(guard.counters) == 3
    # counters older than the tolerance make room (on the tick, or when a new node needs the place)
    later = T0 + TOLERANCE + 1
    assert check(guard, packet(private_key, later, address=b"10.0.0.1:9"), wall=later) is None
    assert len(guard.counters) == 2  # 10.0.0.1:0 (counter T0 + 1) and :9
    guard.tick(T0 + 1 + TOLERANCE + 1)
    assert len(guard.counters) == 1


# -- key files change on disk ------------------------------------------------------------------------------------


def test_a_changed_key_file_is_picked_up_without_a_restart(
    guard: SubscriptionGuard, keys_dir: Path, private_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    assert check(guard, packet(private_key, T0), now=100.0) is None
    replacement = keys_dir / "new.pem"
    write_public(replacement, other_key)
    os.replace(replacement, keys_dir / "example.com.pem")  # the key is rotated
    # looked at no more than once a second: within the second the old key still holds
    assert check(guard, packet(other_key, T0 + 1), wall=T0 + 1, now=100.5) == (
        "example.com => 127.0.0.1:3031: bad signature"
    )
    assert check(guard, packet(other_key, T0 + 2), wall=T0 + 2, now=101.1) is None
    assert check(guard, packet(private_key, T0 + 3), wall=T0 + 3, now=101.2) is not None
    (keys_dir / "example.com.pem").unlink()  # the key is withdrawn
    reason = check(guard, packet(other_key, T0 + 4), wall=T0 + 4, now=102.3)
    assert reason is not None and "no public key" in reason


def test_the_key_cache_is_bounded_and_rechecks_once_a_second(keys_dir: Path, private_key: rsa.RSAPrivateKey) -> None:
    keys = PublicKeys(capacity=2)
    for name in (b"a", b"b", b"c", b"d"):
        assert isinstance(keys.get(key_file(str(keys_dir), name), 0.0), str)  # missing files are cached too
    assert len(keys) == 2
    path = key_file(str(keys_dir), b"a")
    write_public(keys_dir / "a.pem", private_key)
    assert isinstance(keys.get(path, 0.5), rsa.RSAPublicKey)  # forgotten, so read again at once
    (keys_dir / "a.pem").unlink()
    assert isinstance(keys.get(path, 0.9), rsa.RSAPublicKey)  # cached for a second
    assert isinstance(keys.get(path, 1.6), str)


# -- digests and EC keys -----------------------------------------------------------------------------------------


def test_digest_names_are_openssl_names() -> None:
    assert isinstance(digest_by_name("SHA1"), hashes.SHA1)
    assert isinstance(digest_by_name("sha256"), hashes.SHA256)
    assert isinstance(digest_by_name("RSA-SHA512"), hashes.SHA512)
    assert isinstance(digest_by_name("sha3-256"), hashes.SHA3_256)
    with pytest.raises(ValueError, match="unknown digest"):
        digest_by_name("MD4")
    digest, path = split_sign_spec("SHA256:/etc/keys:with:colons")
    assert isinstance(digest, hashes.SHA256) and path == "/etc/keys:with:colons"
    with pytest.raises(ValueError):
        split_sign_spec("SHA256")


def test_ec_keys_sign_and_verify(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    write_public(tmp_path / "example.com.pem", ec_key)
    write_private(tmp_path / "private.pem", ec_key)
    guard = SubscriptionGuard(sign_check=(hashes.SHA256(), str(tmp_path)), tolerance=TOLERANCE)
    signer = Signer(f"SHA256:{tmp_path}/private.pem")
    datagram = signer.sign(Subscription(KEY, NODE), T0)
    assert check(guard, datagram) is None


# -- credentials -------------------------------------------------------------------------------------------------


def test_skip_uid_needs_kernel_credentials(keys_dir: Path) -> None:
    skipping = SubscriptionGuard(sign_check=(hashes.SHA1(), str(keys_dir)), tolerance=TOLERANCE, skip_uids=[1000])
    unsigned = decode_subscription(packet(None, None))
    assert skipping.check(unsigned, 0.0, T0, Credentials(pid=1, uid=1000, gid=1000)) is None
    assert skipping.check(unsigned, 0.0, T0, Credentials(pid=1, uid=1001, gid=1000)) is not None
    assert skipping.check(unsigned, 0.0, T0, None) is not None  # UDP: nobody vouches for the sender


def test_credentials_check_wants_a_file_owned_by_the_sender(tmp_path: Path) -> None:
    directory = tmp_path / "owners"
    directory.mkdir()
    (directory / "example.com").write_text("")
    owner = os.stat(directory / "example.com")
    guard = SubscriptionGuard(credentials_dirs=[f"{directory}/", str(tmp_path / "missing/")], use_credentials=True)
    sub = decode_subscription(packet(None, None))
    assert guard.check(sub, 0.0, T0, Credentials(1, owner.st_uid, owner.st_gid)) is None
    reason = guard.check(sub, 0.0, T0, Credentials(1, owner.st_uid + 1, owner.st_gid))
    assert reason == (
        f"example.com => 127.0.0.1:3031: no credentials file for this key owned by uid {owner.st_uid + 1} "
        f"gid {owner.st_gid}"
    )
    assert guard.check(sub, 0.0, T0, Credentials(1, owner.st_uid, owner.st_gid + 1)) is not None
    assert guard.check(replace(sub, key=b"other.org"), 0.0, T0, Credentials(1, owner.st_uid, owner.st_gid))
    assert guard.check(replace(sub, command=Command.UNSUBSCRIBE), 0.0, T0, None) is not None
    # plain concatenation, as uWSGI: "DIR" without a slash names DIRexample.com
    (tmp_path / "prefix-example.com").write_text("")
    prefixed = SubscriptionGuard(credentials_dirs=[f"{tmp_path}/prefix-"], use_credentials=True)
    assert prefixed.check(sub, 0.0, T0, Credentials(1, owner.st_uid, owner.st_gid)) is None


def test_credentials_come_from_the_kernel(tmp_path: Path) -> None:
    path = str(tmp_path / "sub.sock")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client,
    ):
        server.bind(path)
        enable_credentials(server)
        client.sendto(b"hello", path)
        assert receive_with_credentials(server, 100) == (b"hello", Credentials(os.getpid(), os.getuid(), os.getgid()))


# -- the instance side -------------------------------------------------------------------------------------------


def test_subscribe_to_and_subscribe2_take_a_sign_field(tmp_path: Path) -> None:
    (target,) = parse_subscribe_to("127.0.0.1:7000:example.com,5,SHA1:/k/priv.pem", "a:1", [])
    assert (target.key, target.modifier1, target.sign) == ("example.com", 5, "SHA1:/k/priv.pem")
    assert parse_subscribe_to("127.0.0.1:7000:example.com", "a:1", [])[0].sign is None
    (target,) = parse_subscribe2({"server": "s:1", "key": "k", "sign": "SHA256:/k/p.pem"}, [], "a:1")
    assert target.sign == "SHA256:/k/p.pem"
    mapping = tmp_path / "map.txt"
    mapping.write_text("example.com,0,SHA1:/k/priv.pem\n")
    assert [t.sign for t in parse_subscribe_to(f"127.0.0.1:7000:@{mapping}", "a:1", [])] == [None]  # as uWSGI


def test_signed_packets_have_uwsgis_layout(tmp_path: Path, private_key: rsa.RSAPrivateKey) -> None:
    write_private(tmp_path / "private.pem", private_key)
    signer = Signer(f"SHA1:{tmp_path}/private.pem")
    datagram = signer.sign(Subscription(KEY, NODE, cores=2), T0 + 0.7)
    sub = decode_subscription(datagram)
    assert sub.unix == T0 and sub.sign is not None and sub.signed_data is not None
    # signed: every var byte from offset 4 up to and including the unix record; sign comes last
    assert sub.signed_data == datagram[4 : datagram.index(b"\x04\x00sign")]
    assert sub.signed_data.endswith(b"\x04\x00unix\x0a\x00%d" % T0)
    private_key.public_key().verify(sub.sign, sub.signed_data, padding.PKCS1v15(), hashes.SHA1())
    # unsubscribes carry now + 1 (as uWSGI); unix never repeats
    assert decode_subscription(signer.sign(Subscription(KEY, NODE, Command.UNSUBSCRIBE), T0 + 0.9)).unix == T0 + 1
    assert decode_subscription(signer.sign(Subscription(KEY, NODE), T0 + 1.2)).unix == T0 + 2


def test_signer_errors_stop_the_instance_and_key_changes_are_followed(
    tmp_path: Path, private_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(ConfigError, match="cannot read the private key"):
        Signer(f"SHA1:{tmp_path}/missing.pem")
    with pytest.raises(ConfigError, match="unknown digest"):
        Signer(f"MD4:{tmp_path}/missing.pem")
    path = tmp_path / "private.pem"
    write_private(path, private_key)
    subscriber = Subscriber([Target("127.0.0.1:1", "example.com", "a:1", sign=f"SHA1:{path}")])
    try:
        first = decode_subscription(subscriber.packet(subscriber.targets[0], Command.SUBSCRIBE, T0))
        assert first.sign is not None and first.signed_data is not None
        private_key.public_key().verify(first.sign, first.signed_data, padding.PKCS1v15(), hashes.SHA1())
        write_private(tmp_path / "next.pem", other_key)
        os.replace(tmp_path / "next.pem", path)
        second = decode_subscription(subscriber.packet(subscriber.targets[0], Command.SUBSCRIBE, T0 + 1))
        assert second.sign is not None and second.signed_data is not None
        other_key.public_key().verify(second.sign, second.signed_data, padding.PKCS1v15(), hashes.SHA1())
    finally:
        subscriber.close()


# -- the subscription server asks the guard first ----------------------------------------------------------------


def test_the_server_refuses_and_counts_what_the_guard_refuses(
    guard: SubscriptionGuard, private_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    server = SubscriptionServer([], NodeTable(), TableImage(1 << 16), guard=guard)
    try:
        assert server.handle_datagram(packet(None, None), now=1.0, wall=T0) is None
        assert server.handle_datagram(packet(private_key, T0), now=1.0, wall=T0) is Change.ADDED
        replayed_unsubscribe = packet(private_key, T0 + 1, Command.UNSUBSCRIBE)
        assert server.handle_datagram(replayed_unsubscribe, now=1.0, wall=T0) is Change.REMOVED
        assert server.handle_datagram(packet(private_key, T0 + 2), now=1.0, wall=T0 + 1) is Change.ADDED
        assert server.handle_datagram(replayed_unsubscribe, now=2.0, wall=T0 + 1) is None  # the node stays
        assert [node.address for node in server.table.keys[KEY]] == [NODE]
        assert server.rejected == 2
        with caplog.at_level(logging.WARNING, logger="uwsgirouter.subscription"):
            server.tick(10.0)
        assert "rejected 1 subscription packet(s); last: example.com => 127.0.0.1:3031: invalid (sniffed ?)" in (
            caplog.text
        )
    finally:
        server.close()


def test_the_server_reads_credentials_on_unix_sockets(tmp_path: Path) -> None:
    path = str(tmp_path / "sub.sock")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client,
    ):
        sock.bind(path)
        sock.setblocking(False)
        enable_credentials(sock)
        owners = tmp_path / "owners"
        owners.mkdir()
        (owners / "example.com").write_text("")  # ours: the kernel says the datagrams come from us
        guard = SubscriptionGuard(credentials_dirs=[f"{owners}/"], use_credentials=True)
        server = SubscriptionServer([sock], NodeTable(), TableImage(1 << 16), guard=guard)
        client.sendto(packet(None, None), path)
        client.sendto(packet(None, None, subscription_key=b"nobody.org"), path)
        server.receive(sock, 1.0)
        assert list(server.table.keys) == [KEY]
        assert server.rejected == 1


def test_refused_packets_are_not_forwarded_to_other_routers(
    guard: SubscriptionGuard, private_key: rsa.RSAPrivateKey
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        resubscribe = [TcpAddress("127.0.0.1", peer.getsockname()[1])]
        server = SubscriptionServer(
            [], NodeTable(), TableImage(1 << 16), resubscribe=resubscribe, own_address=b"127.0.0.1:3017", guard=guard
        )
        try:
            server.handle_datagram(packet(None, None, address=b"10.6.6.6:1"), now=1.0, wall=T0)  # refused
            server.handle_datagram(packet(private_key, T0), now=1.0, wall=T0)  # accepted, forwarded
            assert decode_subscription(peer.recv(4096)).key == KEY
            peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                peer.recv(4096)  # only the accepted packet went on
        finally:
            server.close()


def test_a_sign_check_path_with_a_nul_byte_is_refused_at_start() -> None:
    from uwsgirouter.subscription.signing import split_sign_spec

    with pytest.raises(ValueError, match="NUL"):
        split_sign_spec("SHA1:/tmp\0keys")
