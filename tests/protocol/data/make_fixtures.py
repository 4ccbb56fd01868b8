"""Generate the protocol test fixtures: ``valid/*.bin``, ``invalid/*.bin`` and their ``cases.json``.

Run ``python tests/protocol/data/make_fixtures.py`` after editing a case; commit the output. The
packets are built here by hand (``_record``, ``_header``), not with ``uwsgirouter.protocol``, so a
bug in the encoder cannot hide the same bug in the decoder. ``test_fixtures_are_up_to_date``
checks that the committed files match this script.

Each ``cases.json`` maps a fixture name to its expectations; byte strings are stored as latin-1
text. ``kind`` is ``request`` (fed to ``RequestReader``) or ``subscription`` (``decode_subscription``).
Invalid cases give a fragment of the error message and the status hint.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Pairs = list[tuple[bytes, bytes]]


def _record(key: bytes, value: bytes) -> bytes:
    return struct.pack("<H", len(key)) + key + struct.pack("<H", len(value)) + value


def _vars(pairs: Pairs) -> bytes:
    return b"".join(_record(k, v) for k, v in pairs)


def _header(modifier1: int, size: int, modifier2: int) -> bytes:
    return struct.pack("<BHB", modifier1, size, modifier2)


def _packet(pairs: Pairs, modifier1: int = 0, modifier2: int = 0) -> bytes:
    block = _vars(pairs)
    return _header(modifier1, len(block), modifier2) + block


def _text(value: bytes) -> str:
    return value.decode("latin-1")


NGINX_VARS: Pairs = [
    (b"QUERY_STRING", b"a=1&b=2"),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"REQUEST_URI", b"/app/?a=1&b=2"),
    (b"PATH_INFO", b"/app/"),
    (b"DOCUMENT_ROOT", b"/usr/share/nginx/html"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REQUEST_SCHEME", b"http"),
    (b"REMOTE_ADDR", b"192.0.2.7"),
    (b"REMOTE_PORT", b"52144"),
    (b"SERVER_PORT", b"80"),
    (b"SERVER_NAME", b"_"),
    (b"HTTP_HOST", b"www.example.com:8080"),
    (b"HTTP_USER_AGENT", b"curl/8.5.0"),
    (b"HTTP_ACCEPT", b"*/*"),
]


def _valid_request(
    pairs: Pairs,
    body: bytes = b"",
    *,
    key: bytes,
    length: int = 0,
    m1: int = 0,
    m2: int = 0,
    max_vars_size: int = 65535,
) -> tuple[bytes, dict[str, Any]]:
    expect = {
        "kind": "request",
        "modifier1": m1,
        "modifier2": m2,
        "vars": [[_text(k), _text(v)] for k, v in pairs],
        "body": _text(body),
        "routing_key": _text(key),
        "content_length": length,
        "max_vars_size": max_vars_size,
    }
    return _packet(pairs, m1, m2) + body, expect


def _subscription_fields(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "command": 0,
        "modifier1": 0,
        "modifier2": 0,
        "cores": 0,
        "load": 0,
        "weight": 0,
        "notify": None,
        "unix": None,
        "sign": None,
        "signed_data": None,
        "sni_key": None,
        "sni_crt": None,
        "sni_ca": None,
    }
    base.update({k: _text(v) if isinstance(v, bytes) else v for k, v in fields.items()})
    return base


def _uwsgi_vars(key: bytes = b"example.com", address: bytes = b"127.0.0.1:3031", **numbers: bytes) -> Pairs:
    """The vars a uWSGI node sends, in its order, numbers overridable."""
    values = {b"modifier1": b"0", b"modifier2": b"0", b"cores": b"4", b"load": b"0", b"weight": b"0"}
    values.update({k.encode(): v for k, v in numbers.items()})
    return [(b"key", key), (b"address", address), *values.items()]


def _valid_subscription(data: bytes, **fields: Any) -> tuple[bytes, dict[str, Any]]:
    return data, {"kind": "subscription", "fields": _subscription_fields(**fields)}


def _signed_subscription() -> tuple[bytes, dict[str, Any]]:
    signature = bytes(range(256))  # stands in for an RSA-2048 signature: any bytes, NULs included
    signed = _vars([*_uwsgi_vars(), (b"unix", b"1700000000")])
    block = signed + _record(b"sign", signature)
    data = _header(224, len(block), 0) + block
    return _valid_subscription(
        data,
        key=b"example.com",
        address=b"127.0.0.1:3031",
        cores=4,
        unix=1700000000,
        sign=signature,
        signed_data=signed,
    )


def valid_cases() -> dict[str, tuple[bytes, dict[str, Any]]]:
    big_value = b"v" * (65535 - 2 - 1 - 2)
    return {
        "request_nginx_get": _valid_request(NGINX_VARS, key=b"www.example.com:8080"),
        "request_post_with_body": _valid_request(
            [(b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"11"), (b"SERVER_NAME", b"api.example.com")],
            b"hello world",
            key=b"api.example.com",
            length=11,
        ),
        "request_no_vars": _valid_request([], key=b"", m1=5, m2=2),
        "request_empty_values": _valid_request(
            [(b"HTTP_HOST", b""), (b"SERVER_NAME", b"fallback"), (b"X", b"")], key=b"fallback"
        ),
        "request_duplicate_vars": _valid_request(
            [(b"HTTP_HOST", b"first"), (b"CONTENT_LENGTH", b"1"), (b"HTTP_HOST", b"second"), (b"CONTENT_LENGTH", b"2")],
            b"xy",
            key=b"second",
            length=2,
        ),
        "request_fastrouter_key": _valid_request(
            [(b"UWSGI_FASTROUTER_KEY", b"pool-a"), (b"HTTP_HOST", b"www.example.com")], key=b"pool-a", m1=30
        ),
        "request_binary_vars": _valid_request(
            [(b"\x00\xff", b"\x00\r\n\xfe"), (b"HTTP_HOST", b"h\x00st")], b"\x00\x01", key=b"h\x00st"
        ),
        "request_largest_vars_block": _valid_request([(b"K", big_value)], key=b""),
        "request_at_small_limit": _valid_request([(b"HTTP_HOST", b"abc")], key=b"abc", max_vars_size=16),
        "subscription_uwsgi": _valid_subscription(
            _packet(_uwsgi_vars(), 224, 0), key=b"example.com", address=b"127.0.0.1:3031", cores=4
        ),
        "subscription_unsubscribe": _valid_subscription(
            _packet(_uwsgi_vars(), 224, 1), command=1, key=b"example.com", address=b"127.0.0.1:3031", cores=4
        ),
        "subscription_unsubscribe_m2_2": _valid_subscription(
            _packet(_uwsgi_vars(), 224, 2), command=1, key=b"example.com", address=b"127.0.0.1:3031", cores=4
        ),
        "subscription_header_ignored": _valid_subscription(
            _header(0, 0xFFFF, 0) + _vars(_uwsgi_vars()), key=b"example.com", address=b"127.0.0.1:3031", cores=4
        ),
        "subscription_all_vars": _valid_subscription(
            _packet(
                [
                    *_uwsgi_vars(b"secure.example.com:443", b"/run/app.sock", modifier1=b"5", modifier2=b"7"),
                    (b"sni_key", b"/etc/ssl/k.pem"),
                    (b"sni_crt", b"/etc/ssl/c.pem"),
                    (b"sni_ca", b"/etc/ssl/ca.pem"),
                    (b"notify", b"/run/notify.sock"),
                ],
                224,
            ),
            key=b"secure.example.com:443",
            address=b"/run/app.sock",
            modifier1=5,
            modifier2=7,
            cores=4,
            sni_key=b"/etc/ssl/k.pem",
            sni_crt=b"/etc/ssl/c.pem",
            sni_ca=b"/etc/ssl/ca.pem",
            notify=b"/run/notify.sock",
        ),
        "subscription_signed": _signed_subscription(),
        "subscription_unknown_vars": _valid_subscription(
            _packet(
                [
                    (b"algo", b"lrc"),
                    *_uwsgi_vars(),
                    (b"backup", b"1"),
                    (b"proto", b"uwsgi"),
                    (b"vassal", b"x"),
                    (b"clear", b"1"),
                    (b"inactive", b"1"),
                ],
                224,
            ),
            key=b"example.com",
            address=b"127.0.0.1:3031",
            cores=4,
        ),
        "subscription_numbers": _valid_subscription(
            _packet(
                _uwsgi_vars(
                    modifier1=b"255",
                    modifier2=b"",
                    cores=b"18446744073709551615",
                    load=b"000000000000000000000000000042",
                    weight=b"007",
                ),
                224,
            ),
            key=b"example.com",
            address=b"127.0.0.1:3031",
            modifier1=255,
            cores=2**64 - 1,
            load=42,
            weight=7,
        ),
        "subscription_longest_values": _valid_subscription(
            _packet([*_uwsgi_vars(b"k" * 255, b"a" * 255), (b"notify", b"n" * 101)], 224),
            key=b"k" * 255,
            address=b"a" * 255,
            cores=4,
            notify=b"n" * 101,
        ),
        "subscription_duplicates_last_wins": _valid_subscription(
            _packet([*_uwsgi_vars(b"old.example.com"), (b"key", b"new.example.com"), (b"weight", b"3")], 224),
            key=b"new.example.com",
            address=b"127.0.0.1:3031",
            cores=4,
            weight=3,
        ),
        "subscription_minimal": _valid_subscription(
            _packet([(b"key", b"k"), (b"address", b"a")], 224), key=b"k", address=b"a"
        ),
    }


def _invalid(
    kind: str, data: bytes, error: str, status: int = 400, max_vars_size: int = 65535
) -> tuple[bytes, dict[str, Any]]:
    return data, {"kind": kind, "error": error, "status": status, "max_vars_size": max_vars_size}


def _bad_subscription(pairs: Pairs, error: str) -> tuple[bytes, dict[str, Any]]:
    return _invalid("subscription", _packet(pairs, 224), error)


def invalid_cases() -> dict[str, tuple[bytes, dict[str, Any]]]:
    ok = _vars([(b"HTTP_HOST", b"h")])  # 14 bytes
    return {
        "request_truncated_header": _invalid("request", b"\x00\x10", "closed after 2 of 4 header bytes"),
        "request_truncated_vars": _invalid("request", _header(0, 20, 0) + ok, "closed after 14 of 20 vars bytes"),
        "request_empty_key": _invalid("request", _packet([(b"", b"x")]), "empty key at offset 0"),
        "request_empty_key_later": _invalid(
            "request", _packet([(b"HTTP_HOST", b"h"), (b"", b"")]), "empty key at offset 14"
        ),
        "request_truncated_key_length": _invalid(
            "request", _header(0, 15, 0) + ok + b"\x01", "truncated key length at offset 14"
        ),
        "request_key_past_end": _invalid(
            "request", _header(0, 4, 0) + b"\x05\x00abc", "key of 5 bytes at offset 0 runs past the end"
        ),
        "request_truncated_value_length": _invalid(
            "request", _header(0, 4, 0) + b"\x01\x00K\x00", "truncated value length at offset 3"
        ),
        "request_value_past_end": _invalid(
            "request", _header(0, 6, 0) + b"\x01\x00K\x09\x00v", "value of 9 bytes at offset 3 runs past the end"
        ),
        "request_over_limit": _invalid(
            "request", _packet([(b"K", b"x" * 12)]), "17 bytes is over the limit of 16", 431, 16
        ),
        "subscription_short": _invalid("subscription", b"\xe0\x00\x00", "shorter than the 4-byte header"),
        "subscription_malformed_vars": _invalid(
            "subscription", _header(224, 0, 0) + ok + b"\x09\x00key", "subscription: vars block: key of 9 bytes"
        ),
        "subscription_missing_key": _bad_subscription([(b"address", b"a")], "missing or empty key"),
        "subscription_empty_key": _bad_subscription([(b"key", b""), (b"address", b"a")], "missing or empty key"),
        "subscription_missing_address": _bad_subscription([(b"key", b"k")], "missing or empty address"),
        "subscription_empty_address": _bad_subscription(
            [(b"key", b"k"), (b"address", b"")], "missing or empty address"
        ),
        "subscription_long_key": _bad_subscription(
            [(b"key", b"b" * 300), (b"address", b"a")],
            "key of 300 bytes is longer than 255: b'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'...",
        ),
        "subscription_long_address": _bad_subscription(
            [(b"key", b"k"), (b"address", b"a" * 256)], "address of 256 bytes"
        ),
        "subscription_long_notify": _bad_subscription([*_uwsgi_vars(), (b"notify", b"n" * 102)], "notify of 102 bytes"),
        "subscription_weight_not_number": _bad_subscription(
            _uwsgi_vars(weight=b"abc"), "weight is not a decimal number: b'abc'"
        ),
        "subscription_modifier1_too_big": _bad_subscription(
            _uwsgi_vars(modifier1=b"300"), "modifier1 is out of range 0..255: b'300'"
        ),
        "subscription_modifier2_negative": _bad_subscription(
            _uwsgi_vars(modifier2=b"-1"), "modifier2 is not a decimal number"
        ),
        "subscription_cores_overflow": _bad_subscription(
            _uwsgi_vars(cores=b"18446744073709551616"), "cores is out of range"
        ),
        "subscription_load_float": _bad_subscription(_uwsgi_vars(load=b"1.5"), "load is not a decimal number"),
        "subscription_weight_huge": _bad_subscription(_uwsgi_vars(weight=b"9" * 5000), "weight is out of range"),
        "subscription_weight_unicode_digit": _bad_subscription(
            _uwsgi_vars(weight="\u0661".encode()), "weight is not a decimal"
        ),
        "subscription_unix_not_number": _bad_subscription(
            [*_uwsgi_vars(), (b"unix", b" 1")], "unix is not a decimal number"
        ),
        "subscription_sign_not_last": _bad_subscription(
            [*_uwsgi_vars(), (b"sign", b"sig"), (b"unix", b"1")], "sign must be the last var"
        ),
        "subscription_sign_twice": _bad_subscription(
            [*_uwsgi_vars(), (b"sign", b"sig"), (b"unix", b"1"), (b"sign", b"sig")], "sign must be the last var"
        ),
    }


def build() -> dict[Path, bytes]:
    """Return every fixture file this script owns, path -> content."""
    files: dict[Path, bytes] = {}
    for subdir, cases in (("valid", valid_cases()), ("invalid", invalid_cases())):
        manifest: dict[str, Any] = {}
        for name, (data, expect) in sorted(cases.items()):
            files[HERE / subdir / f"{name}.bin"] = data
            manifest[name] = expect
        files[HERE / subdir / "cases.json"] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    return files


def main() -> int:
    wanted = build()
    for subdir in ("valid", "invalid"):
        (HERE / subdir).mkdir(exist_ok=True)
        for stale in (HERE / subdir).glob("*.bin"):
            if stale not in wanted:
                stale.unlink()
    for path, content in wanted.items():
        path.write_bytes(content)
    print(f"wrote {len(wanted)} files under {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
