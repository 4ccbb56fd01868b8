"""Signed subscriptions and sender credentials: who may change the node table.

Wire format (uWSGI 2.0, ``--subscriptions-sign-check DIGEST:DIR``): a signing node appends a ``unix`` var
(its clock, plus 1 for an unsubscribe), signs every var byte from offset 4 up to and including that
record with its private key (``EVP_Sign*``: PKCS#1 v1.5 for RSA, ECDSA for EC keys) and appends the
signature as the last var, ``sign``. The server checks it against ``DIR/<key>.pem``.

Replay safety is ours (docs/differences.md, "Signed subscriptions"): uWSGI never advances its anti-replay counter and
does not check
unsubscribes, so a captured packet can be replayed. Here every accepted packet, subscribe or
unsubscribe, advances the counter of its (key, node); a packet whose ``unix`` is not above the counter
is refused; a counter is remembered until it falls out of the tolerance window, which outlives the node
itself, so nothing captured can be replayed after the node left either. A (key, node) without a counter
must carry a ``unix`` within the tolerance of our clock.

Everything here is pure except the key files and sockets it is pointed at; clocks are passed in.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from uwsgirouter.protocol import Command, Subscription
from uwsgirouter.text import printable

log = logging.getLogger("uwsgirouter.subscription")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: OpenSSL digest names (``EVP_get_digestbyname``) we accept, upper-cased, without an ``RSA-`` prefix.
_DIGESTS: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "MD5": hashes.MD5,
    "SHA1": hashes.SHA1,
    "SHA-1": hashes.SHA1,
    "SHA224": hashes.SHA224,
    "SHA-224": hashes.SHA224,
    "SHA2-224": hashes.SHA224,
    "SHA256": hashes.SHA256,
    "SHA-256": hashes.SHA256,
    "SHA2-256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA-384": hashes.SHA384,
    "SHA2-384": hashes.SHA384,
    "SHA512": hashes.SHA512,
    "SHA-512": hashes.SHA512,
    "SHA2-512": hashes.SHA512,
    "SHA3-224": hashes.SHA3_224,
    "SHA3-256": hashes.SHA3_256,
    "SHA3-384": hashes.SHA3_384,
    "SHA3-512": hashes.SHA3_512,
}
#: A PEM key file larger than this is not a key (and is not read into memory).
MAX_KEY_FILE = 64 * 1024
#: Key files are looked at (stat) at most this often per key, so a flood costs no system calls.
KEY_RECHECK_S = 1.0
#: Key files remembered (found or missing); the oldest is forgotten first.
KEY_CACHE_SIZE = 4096
#: Counters remembered at most; beyond it new (key, node) pairs are refused until old ones expire.
MAX_COUNTERS = 65536
_CREDENTIALS: Final = struct.Struct("iII")  # struct ucred: pid_t, uid_t, gid_t
_KEY_FILE_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_KEY_FILE_BYTES: Final = bytes(b if b in _KEY_FILE_SAFE else ord("_") for b in range(256))


def digest_by_name(name: str) -> hashes.HashAlgorithm:
    """The digest OpenSSL knows as ``name`` (SHA1, sha256, RSA-SHA256, ...); ValueError if unknown."""
    normal = name.strip().upper()
    normal = normal.removeprefix("RSA-")
    try:
        return _DIGESTS[normal]()
    except KeyError:
        raise ValueError(f"unknown digest {name!r} (use SHA1, SHA256, SHA512, ...)") from None


def split_sign_spec(spec: str) -> tuple[hashes.HashAlgorithm, str]:
    """``DIGEST:PATH`` (split at the first colon, as uWSGI) -> (digest, path); ValueError if malformed."""
    name, colon, path = spec.partition(":")
    if not colon or not name or not path:
        raise ValueError("not DIGEST:PATH")
    if "\0" in path:
        raise ValueError("the path contains a NUL byte")
    return digest_by_name(name), path


def key_file(directory: str, key: bytes) -> bytes:
    """``DIR/<key>.pem`` with every key byte outside ``[A-Za-z0-9._-]`` replaced by ``_`` (as uWSGI)."""
    safe = key.translate(_KEY_FILE_BYTES)
    return os.fsencode(directory) + b"/" + safe + b".pem"


def sign(private_key: PrivateKey, data: bytes, digest: hashes.HashAlgorithm) -> bytes:
    """What ``EVP_SignFinal`` produces for this key type."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), digest)
    return private_key.sign(data, ec.ECDSA(digest))


def verify(public_key: PublicKey, signature: bytes, data: bytes, digest: hashes.HashAlgorithm) -> bool:
    """What ``EVP_VerifyFinal`` accepts for this key type."""
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), digest)
        else:
            public_key.verify(signature, data, ec.ECDSA(digest))
    except InvalidSignature:
        return False
    return True


def load_private_key(path: str) -> PrivateKey:
    """An RSA or EC private key from an unencrypted PEM file; ValueError names what is wrong."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the private key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"the private key {path} is encrypted; uWSGI cannot sign with it either") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path} holds no PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: only RSA and EC keys can sign subscriptions")
    return key


def _load_public_key(data: bytes) -> PublicKey | str:
    """The key, or why the data holds none."""
    if len(data) > MAX_KEY_FILE:
        return "is too large to be a public key"
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        return "holds no PEM public key"
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return "holds neither an RSA nor an EC key"
    return key


@dataclass(frozen=True, slots=True)
class Credentials:
    """SCM_CREDENTIALS of a datagram's sender, as the kernel vouches for them."""

    pid: int
    uid: int
    gid: int


def enable_credentials(sock: socket.socket) -> None:
    """Ask the kernel to attach the sender's credentials to every datagram (UNIX sockets only)."""
    if sock.family == socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


def receive_with_credentials(sock: socket.socket, size: int) -> tuple[bytes, Credentials | None]:
    """One datagram and its sender's credentials (None when the kernel attached none)."""
    data, ancillary, _flags, _address = sock.recvmsg(size, socket.CMSG_SPACE(_CREDENTIALS.size))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDENTIALS.size:
            pid, uid, gid = _CREDENTIALS.unpack_from(payload)
            return data, Credentials(pid, uid, gid)
    return data, None


@dataclass(slots=True)
class _CachedKey:
    identity: tuple[int, int, int] | None  # (mtime_ns, size, inode) of the file; None when missing
    key: PublicKey | None
    error: str
    checked_at: float


class PublicKeys:
    """Public keys by file, loaded once and again only when the file changes (seen by stat, at most
    once a second per file), so a key can be added, rotated or removed without a restart."""

    def __init__(self, capacity: int = KEY_CACHE_SIZE, recheck: float = KEY_RECHECK_S) -> None:
        self.capacity = capacity
        self.recheck = recheck
        self._cache: OrderedDict[bytes, _CachedKey] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, path: bytes, now: float) -> PublicKey | str:
        """The key in ``path``, or why there is none; ``now`` is a monotonic clock."""
        entry = self._cache.get(path)
        if entry is not None and now - entry.checked_at < self.recheck:
            return entry.key if entry.key is not None else entry.error
        shown = os.fsdecode(path)
        try:
            status = os.stat(path)
            identity: tuple[int, int, int] | None = (status.st_mtime_ns, status.st_size, status.st_ino)
        except OSError:
            identity = None
        if entry is not None and entry.identity == identity:
            entry.checked_at = now
            return entry.key if entry.key is not None else entry.error
        key: PublicKey | None = None
        if identity is None:
            error = f"no public key {shown}"
        else:
            try:
                with open(path, "rb") as handle:
                    loaded = _load_public_key(handle.read(MAX_KEY_FILE + 1))
            except OSError as exc:
                loaded = f"cannot be read ({exc.strerror})"
            if isinstance(loaded, str):
                error = f"public key {shown} {loaded}"
            else:
                key, error = loaded, ""
            if entry is not None:
                log.info("public key file %s changed; %s", shown, "reloaded" if key is not None else error)
        self._cache[path] = _CachedKey(identity, key, error, now)
        self._cache.move_to_end(path)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return key if key is not None else error


class ReplayCounters:
    """The last accepted ``unix`` of each (key, node), kept until it is older than the tolerance: past
    that, the freshness check alone refuses anything it could have refused."""

    def __init__(self, max_entries: int = MAX_COUNTERS) -> None:
        self.max_entries = max_entries
        self._last: dict[tuple[bytes, bytes], int] = {}

    def __len__(self) -> int:
        return len(self._last)

    def get(self, key: bytes, address: bytes) -> int | None:
        return self._last.get((key, address))

    def advance(self, key: bytes, address: bytes, unix: int, oldest: int) -> bool:
        """Store ``unix``; False when the store is full even after forgetting counters below ``oldest``."""
        pair = (key, address)
        if pair not in self._last and len(self._last) >= self.max_entries:
            self.forget_older_than(oldest)
            if len(self._last) >= self.max_entries:
                return False
        self._last[pair] = unix
        return True

    def forget_older_than(self, oldest: int) -> int:
        """Drop counters below ``oldest``; returns how many."""
        stale = [pair for pair, unix in self._last.items() if unix < oldest]
        for pair in stale:
            del self._last[pair]
        return len(stale)


class SubscriptionGuard:
    """Decides whether a decoded datagram may touch the node table; the server asks it first.

    ``check`` returns None to accept, else the reason for the refusal (a line for the log).
    """

    def __init__(
        self,
        *,
        sign_check: tuple[hashes.HashAlgorithm, str] | None = None,
        tolerance: int = 60,
        skip_uids: Iterable[int] = (),
        credentials_dirs: Sequence[str] = (),
        use_credentials: bool = False,
        max_counters: int = MAX_COUNTERS,
        keys: PublicKeys | None = None,
    ) -> None:
        self.digest: hashes.HashAlgorithm | None = sign_check[0] if sign_check is not None else None
        self.key_dir = sign_check[1] if sign_check is not None else ""
        self.tolerance = tolerance
        self.skip_uids = frozenset(skip_uids)
        self.credentials_dirs = [os.fsencode(d) for d in credentials_dirs]
        self.use_credentials = use_credentials
        self.counters = ReplayCounters(max_counters)
        self.keys = keys if keys is not None else PublicKeys()

    def reads_credentials(self, sock: socket.socket) -> bool:
        """Datagrams of ``sock`` are read with their sender's credentials (``--subscriptions-use-credentials``)."""
        return self.use_credentials and sock.family == socket.AF_UNIX

    def receive(self, sock: socket.socket, size: int) -> tuple[bytes, Credentials | None]:
        return receive_with_credentials(sock, size)

    def check(self, sub: Subscription, now: float, wall: float, credentials: Credentials | None = None) -> str | None:
        """``now`` is monotonic (key file rechecks), ``wall`` the Unix time (freshness)."""
        if self.credentials_dirs:
            refused = self._check_credentials(sub, credentials)
            if refused:
                return refused
        if self.digest is None:
            return None
        if credentials is not None and credentials.uid in self.skip_uids:
            return None  # --subscriptions-sign-skip-uid: the kernel vouches for this sender
        return self._check_signature(sub, now, int(wall))

    def _check_credentials(self, sub: Subscription, credentials: Credentials | None) -> str | None:
        """uWSGI's rule: some DIR+key (plain concatenation) must belong to the sender's uid and gid."""
        if credentials is None:
            return (
                f"{_node(sub)}: no sender credentials (--subscriptions-credentials-check needs a UNIX "
                "subscription server and --subscriptions-use-credentials)"
            )
        for directory in self.credentials_dirs:
            try:
                status = os.stat(directory + sub.key)
            except (OSError, ValueError):
                continue
            if status.st_uid == credentials.uid and status.st_gid == credentials.gid:
                return None
        return f"{_node(sub)}: no credentials file for this key owned by uid {credentials.uid} gid {credentials.gid}"

    def _check_signature(self, sub: Subscription, now: float, wall: int) -> str | None:
        assert self.digest is not None
        if sub.sign is None or sub.signed_data is None or sub.unix is None:
            return f"{_node(sub)}: unsigned packet refused (--subscriptions-sign-check)"
        # Cheap checks first: a flood of captured packets costs no signature verification.
        unix, oldest = sub.unix, wall - self.tolerance
        if unix < oldest or unix > wall + self.tolerance:
            return f"{_node(sub)}: invalid (sniffed ?) packet, unix {unix} is more than {self.tolerance} s away"
        last = self.counters.get(sub.key, sub.address)
        if last is not None and unix <= last:
            what = "unsubscribe" if sub.command == Command.UNSUBSCRIBE else "subscribe"
            return f"{_node(sub)}: invalid (sniffed ?) {what} refused, unix {unix} is not above {last}"
        public_key = self.keys.get(key_file(self.key_dir, sub.key), now)
        if isinstance(public_key, str):
            return f"{_node(sub)}: {public_key}"
        if not verify(public_key, sub.sign, sub.signed_data, self.digest):
            return f"{_node(sub)}: bad signature"
        if not self.counters.advance(sub.key, sub.address, unix, oldest):
            return f"{_node(sub)}: too many signed nodes to remember; refused"
        return None

    def tick(self, wall: float) -> None:
        """Once a second: forget counters the freshness check has made useless (bounds the memory)."""
        self.counters.forget_older_than(int(wall) - self.tolerance)


def _node(sub: Subscription) -> str:
    return f"{printable(sub.key)} => {printable(sub.address)}"
