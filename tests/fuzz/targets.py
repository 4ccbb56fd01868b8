"""The fuzz targets: one invariant checker per parser, plus the seeds and tokens that start a fuzzer off.

``tools/fuzz.py`` drives these checkers with atheris (coverage-guided); ``test_fuzz_corpus.py`` replays
the stored corpus through the very same checkers in CI, so a fixed crash stays fixed. A checker returns
normally when the input keeps the invariant and raises ``Violation`` when it does not; any other
exception escaping a checker is a crash in the code under test.
"""

from __future__ import annotations

import atexit
import dataclasses
import random
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from uwsgirouter.config import REGISTRY, format_show_config, load_config
from uwsgirouter.config.checks import check_config
from uwsgirouter.errors import ConfigError
from uwsgirouter.protocol import (
    HEADER_SIZE,
    MAX_VARS_SIZE,
    NEED_DATA,
    Body,
    Command,
    ConnectionClosed,
    EndOfInput,
    LocalProtocolError,
    RemoteProtocolError,
    RequestHead,
    RequestReader,
    Subscription,
    content_length,
    decode_subscription,
    decode_vars,
    encode_packet,
    encode_subscription,
    routing_key,
)

__all__ = ["CORPUS_ROOT", "CRASHES_ROOT", "TARGETS", "Target", "Violation"]

REPO = Path(__file__).resolve().parents[2]
CORPUS_ROOT = Path(__file__).resolve().parent / "corpus"
CRASHES_ROOT = Path(__file__).resolve().parent / "crashes"
PROTOCOL_DATA = REPO / "tests" / "protocol" / "data"


class Violation(Exception):
    """An input broke a target's invariant (a wrong answer rather than a crash)."""


def _require(condition: bool, message: str) -> None:
    # Not ``assert``: the checkers must keep working under ``python -O``.
    if not condition:
        raise Violation(message)


@dataclass(frozen=True)
class Target:
    """What ``tools/fuzz`` needs to fuzz one parser and what CI needs to replay its corpus."""

    name: str
    summary: str
    check: Callable[[bytes], None]
    #: modules whose code the fuzzer instruments and the corpus minimiser measures
    modules: tuple[str, ...]
    seeds: Callable[[], dict[str, bytes]]
    tokens: Callable[[], list[bytes]]
    #: longest input the fuzzer generates (libFuzzer ``-max_len``)
    max_len: int = 4096
    #: seconds one input may take before libFuzzer reports a hang
    timeout: int = 10

    @property
    def corpus(self) -> Path:
        return CORPUS_ROOT / self.name

    def corpus_files(self) -> list[Path]:
        return sorted(p for p in self.corpus.iterdir() if p.is_file()) if self.corpus.is_dir() else []


# --- request: RequestReader fed whole and in pieces ------------------------------------------------------

#: a small vars limit as well as the wire maximum, so that the 431 path is reachable with short inputs
_REQUEST_LIMITS = (MAX_VARS_SIZE, 40)
#: how many leading bytes are also fed one at a time (past the head nothing depends on the split)
_BYTEWISE_PREFIX = 300

Outcome = tuple[object, ...]


def _run_reader(chunks: list[bytes], limit: int) -> Outcome:
    """Feed ``chunks`` then EOF, draining after each; the result is comparable across chunkings."""
    reader = RequestReader(limit)
    head: RequestHead | None = None
    body: list[bytes] = []
    try:
        for chunk in [*filter(None, chunks), b""]:
            reader.receive_data(chunk)
            while True:
                event = reader.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, RequestHead):
                    _require(head is None, "a second RequestHead")
                    _require(reader.head_complete, "head_complete is False after the RequestHead")
                    head = event
                elif isinstance(event, Body):
                    _require(head is not None, "Body before the RequestHead")
                    _require(bool(event.data), "an empty Body event")
                    body.append(event.data)
                elif isinstance(event, EndOfInput):
                    _require(head is not None and not chunk, "EndOfInput before the head or before EOF")
                    _require(isinstance(reader.next_event(), EndOfInput), "EndOfInput is not sticky")
                    return ("head", head, b"".join(body))
                else:
                    _require(isinstance(event, ConnectionClosed), f"unknown event {event!r}")
                    _require(head is None and not chunk and not any(chunks), "ConnectionClosed after data")
                    return ("closed",)
    except RemoteProtocolError as exc:
        _require(exc.error_status_hint in (400, 431), f"status hint {exc.error_status_hint}")
        for again in (reader.next_event, lambda: reader.receive_data(b"x")):
            try:
                again()
            except RemoteProtocolError as second:
                _require(second.error_status_hint == exc.error_status_hint, "the error state changed its hint")
            else:
                raise Violation("the reader left the error state") from None
        return ("error", str(exc), exc.error_status_hint)
    raise Violation("the reader still needs data after EOF")


def _chunkings(data: bytes) -> Iterator[list[bytes]]:
    """Ways to split ``data``: bytewise over the head, at the header and head edges, and at random cuts."""
    size = len(data)
    if size < 2:
        return
    yield [data[i : i + 1] for i in range(min(size, _BYTEWISE_PREFIX))] + [data[_BYTEWISE_PREFIX:]]
    head_end = HEADER_SIZE + (data[1] | data[2] << 8) if size >= HEADER_SIZE else size
    for cut in sorted({1, 2, 3, 4, 5, head_end - 1, head_end, head_end + 1}):
        if 0 < cut < size:
            yield [data[:cut], data[cut:]]
    rng = random.Random(zlib.crc32(data))  # deterministic: the same input always gets the same cuts
    cuts = sorted(rng.sample(range(1, size), min(5, size - 1)))
    yield [data[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True)]


def _check_head(data: bytes, limit: int, head: RequestHead, body: bytes) -> None:
    size = len(head.raw) - HEADER_SIZE
    _require(data.startswith(head.raw), "raw is not the start of the input")
    _require(size == (data[1] | data[2] << 8) and size <= limit, "raw does not match the header's size")
    _require(body == data[len(head.raw) :], "body bytes were lost or invented")
    _require((head.modifier1, head.modifier2) == (data[0], data[3]), "modifiers do not match the header")
    _require(head.vars == tuple(decode_vars(head.raw[HEADER_SIZE:])), "vars differ from decode_vars")
    _require(encode_packet(head.vars, head.modifier1, head.modifier2) == head.raw, "vars do not re-encode to raw")
    key = routing_key(head.vars)
    _require(len(key) <= 255 and (not key or any(key == v for _, v in head.vars)), f"routing key {key!r}")
    try:
        _require(content_length(head.vars) >= 0, "negative CONTENT_LENGTH")
    except RemoteProtocolError:
        pass


def check_request(data: bytes) -> None:
    """RequestReader only returns events or raises RemoteProtocolError, and any split agrees with the whole."""
    for limit in _REQUEST_LIMITS:
        whole = _run_reader([data], limit)
        if whole[0] == "head":
            head, body = whole[1], whole[2]
            assert isinstance(head, RequestHead) and isinstance(body, bytes)
            _check_head(data, limit, head, body)
        elif whole[0] == "error" and len(data) >= HEADER_SIZE:
            oversized = (data[1] | data[2] << 8) > limit
            _require((whole[2] == 431) == oversized, f"status hint {whole[2]} for this header")
        for chunks in _chunkings(data):
            split = _run_reader(chunks, limit)
            if split != whole:
                cuts = [len(c) for c in chunks]
                raise Violation(f"limit {limit}: chunks of {cuts[:12]} give {split!r:.300}, whole gives {whole!r:.300}")


def _request_seeds() -> dict[str, bytes]:
    seeds = {p.stem: p.read_bytes() for p in sorted(PROTOCOL_DATA.glob("*/request_*.bin"))}
    nginx = [(b"REQUEST_METHOD", b"POST"), (b"HTTP_HOST", b"example.com"), (b"CONTENT_LENGTH", b"5")]
    seeds["post_with_body"] = encode_packet(nginx) + b"hello"
    seeds["fastrouter_key_locked"] = encode_packet(
        [(b"UWSGI_FASTROUTER_KEY", b"a"), (b"HTTP_HOST", b"b"), (b"SERVER_NAME", b"c")], 5, 1
    )
    seeds["over_small_limit"] = encode_packet([(b"HTTP_HOST", b"x" * 60)])
    seeds["header_only"] = b"\x00\x10\x00"
    return seeds


def _request_tokens() -> list[bytes]:
    return [b"HTTP_HOST", b"SERVER_NAME", b"UWSGI_FASTROUTER_KEY", b"CONTENT_LENGTH", b"\x00\x00", b"\xff\xff"]


# --- subscription: decode_subscription, signed packets included ------------------------------------------

_U16 = struct.Struct("<H")
#: a re-encoded block is at most this much longer than the datagram it came from (the number vars)
_ENCODE_SLACK = 400


def check_subscription(data: bytes) -> None:
    """RemoteProtocolError or a sane Subscription; re-encoding it decodes to the same subscription."""
    try:
        sub = decode_subscription(data)
    except RemoteProtocolError:
        return
    _require(0 < len(sub.key) <= 255 and 0 < len(sub.address) <= 255, "key or address outside 1..255 bytes")
    _require(sub.command == (Command.SUBSCRIBE if data[3] == 0 else Command.UNSUBSCRIBE), "wrong command")
    _require(sub.notify is None or len(sub.notify) <= 101, "notify over 101 bytes")
    for name in ("modifier1", "modifier2"):
        _require(0 <= getattr(sub, name) <= 255, f"{name} outside 0..255")
    for name in ("cores", "load", "weight", "unix"):
        value = getattr(sub, name)
        _require(value is None or 0 <= value < 2**64, f"{name} outside 0..2**64-1")
    if sub.sign is None:
        _require(sub.signed_data is None, "signed_data without sign")
    else:
        record = _U16.pack(4) + b"sign" + _U16.pack(len(sub.sign)) + sub.sign
        _require(data.endswith(record), "sign is not the last record")
        _require(sub.signed_data == data[HEADER_SIZE : len(data) - len(record)], "signed_data is not what sign covers")

    try:
        encoded = encode_subscription(sub)
    except LocalProtocolError:
        _require(len(data) + _ENCODE_SLACK > MAX_VARS_SIZE, "the encoder refuses a subscription the decoder gave")
        return
    again = decode_subscription(encoded)
    _require(
        dataclasses.replace(again, signed_data=None) == dataclasses.replace(sub, signed_data=None),
        f"round trip changed {sub!r:.200} into {again!r:.200}",
    )
    _require(encode_subscription(again) == encoded, "encoding is not a fixed point")
    if sub.sign is not None:
        unsigned = encode_subscription(dataclasses.replace(sub, sign=None))
        _require(again.signed_data == unsigned[HEADER_SIZE:], "the signed region differs from the unsigned datagram")


def _subscription_seeds() -> dict[str, bytes]:
    seeds = {p.stem: p.read_bytes() for p in sorted(PROTOCOL_DATA.glob("*/subscription_*.bin"))}
    base = Subscription(key=b"example.com", address=b"127.0.0.1:3031", cores=2, load=1, weight=8)
    seeds["signed_unix"] = encode_subscription(dataclasses.replace(base, unix=1700000000, sign=b"\x5a" * 64))
    seeds["signed_empty_sign"] = encode_subscription(dataclasses.replace(base, unix=0, sign=b""))
    seeds["unsubscribe_notify_sni"] = encode_subscription(
        dataclasses.replace(base, command=Command.UNSUBSCRIBE, notify=b"/tmp/n", sni_key=b"k", sni_crt=b"c")
    )
    return seeds


def _subscription_tokens() -> list[bytes]:
    names = [b"key", b"address", b"modifier1", b"modifier2", b"cores", b"load", b"weight", b"notify"]
    names += [b"unix", b"sign", b"sni_key", b"sni_crt", b"sni_ca"]
    return [_U16.pack(len(n)) + n for n in names] + [b"18446744073709551615", b"\xe0"]


# --- ini: arbitrary INI text through the public loader ---------------------------------------------------

#: an input that loads slower than this counts as a hang, even though it finishes
INI_SLOW_SECONDS = 2.0
#: the loader reads the files an INI names (``ini =``, ``@(...)``); keep it away from devices that never end
_INI_OFF_LIMITS = (b"/dev", b"/proc", b"/sys")
_INI_ENVIRON = {"FUZZ": "fuzz", "FUZZ_NUMBER": "4", "UWSGI_PROCNAME_PREFIX": "%(fuzz) "}
_ini_dir: Path | None = None


def _ini_path() -> Path:
    """A private file to write each case to, removed at exit (tools/fuzz also points TMPDIR at its work dir)."""
    global _ini_dir
    if _ini_dir is None:
        _ini_dir = Path(tempfile.mkdtemp(prefix="uwsgirouter-fuzz-"))
        atexit.register(shutil.rmtree, _ini_dir, True)
    return _ini_dir / "fuzz.ini"


def check_ini(data: bytes) -> None:
    """A Config or a one-line ConfigError, never another exception, and never slower than INI_SLOW_SECONDS."""
    if any(word in data for word in _INI_OFF_LIMITS):
        return
    path = _ini_path()
    path.write_bytes(data)
    warnings: list[str] = []
    started = time.monotonic()
    try:
        config = load_config([str(path)], _INI_ENVIRON, warn=warnings.append)
        check_config(config)
        format_show_config(config.entries)
    except ConfigError as exc:
        message = str(exc)
        _require(bool(message) and "\n" not in message, f"ConfigError is not one line: {message[:200]!r}")
    elapsed = time.monotonic() - started
    _require(elapsed < INI_SLOW_SECONDS, f"loading took {elapsed:.1f} s")
    _require(all("\n" not in w for w in warnings), "a warning is not one line")


def _ini_seeds() -> dict[str, bytes]:
    files = [*sorted(REPO.glob("conf/*.ini")), *sorted(REPO.glob("tests/config/data/*.ini"))]
    seeds = {p.stem: p.read_bytes() for p in files}
    lines = {
        "magic": ["procname = %n-%s-%d-%e-%x-%0-%%-%z", "wsgi-file = %dapp.py"],
        "placeholders": [
            "processes = 4",
            "base = /srv",
            "fastrouter-use-base = %(base)/s/",
            "procname = %(processes + 2)",
        ],
        "math": ["a = 7", "b = %(a * 3)", "c = %(b / a)", "d = %(c ++)", "e = %(a - 9 --)", "procname = %(a b c)"],
        "math_chain": ["a = 99999", "b = %(a * a)", "c = %(b * b)", "d = %(c - b)", "procname = %(d / a ++)"],
        "math_big": ["a = " + "9" * 80, "b = %(a * a)", "c = %(b * b)", "procname = %(c * c - 1)"],
        "env_and_at": ["procname = $(FUZZ)-$(MISSING)", "fastrouter-use-base = @(%p)"],
        "sections": ["ini = %p:other", "set = x=1", "[uwsgi]", "master = true", "[other]", "processes = 1"],
        "self_include": ["ini = %p"],
        "self_reference": ["x = %(x)%(x)", "procname = %(x)"],
        "router": [
            "fastrouter = 127.0.0.1:3017",
            "fastrouter-to = =0",
            "shared-socket = :0",
            "cache2 = name=a,items=2",
        ],
        "subscriber": ["subscribe-to = 127.0.0.1:7000:example.com", "subscribe2 = server=:7000,key=k", "weight = 3"],
        "strict": ["strict = true", "unknown-thing = 1"],
    }
    seeds.update({name: "".join(f"{line}\n" for line in ["[uwsgi]", *text]).encode() for name, text in lines.items()})
    return seeds


def _ini_tokens() -> list[bytes]:
    words = ["[uwsgi]", "\n[", "%(", "$(", "@(", "%p", "%d", "%s", "%x", "%0", "%%", " + ", " * ", " / ", " - "]
    words += [" ++", " --", "ini = ", "set = ", "=", ":", "\\", ";", "#", "true", "false", "127.0.0.1:0", "@a", "=0"]
    words += sorted(REGISTRY.by_name)
    return [w.encode() for w in words]


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "request",
            "RequestReader fed whole and split: events or RemoteProtocolError, the same either way",
            check_request,
            ("uwsgirouter.protocol.request", "uwsgirouter.protocol.packet"),
            _request_seeds,
            _request_tokens,
        ),
        Target(
            "subscription",
            "decode_subscription (signed too): RemoteProtocolError or a Subscription that round-trips",
            check_subscription,
            ("uwsgirouter.protocol.subscription", "uwsgirouter.protocol.packet"),
            _subscription_seeds,
            _subscription_tokens,
        ),
        Target(
            "ini",
            "INI text through load_config: a Config or a one-line ConfigError, in bounded time",
            check_ini,
            (
                "uwsgirouter.config.ini",
                "uwsgirouter.config.loader",
                "uwsgirouter.config.model",
                "uwsgirouter.config.setting",
                "uwsgirouter.config.converters",
                "uwsgirouter.config.checks",
                "uwsgirouter.config.presentation",
                "uwsgirouter.address",
            ),
            _ini_seeds,
            _ini_tokens,
        ),
    )
}
