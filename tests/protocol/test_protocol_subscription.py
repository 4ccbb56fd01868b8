"""Subscription datagrams: decoding (strict, docs/differences.md, "Subscription packets"), encoding as uWSGI does,
round trips."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from uwsgirouter.protocol import (
    SUBSCRIPTION_MODIFIER1,
    Command,
    LocalProtocolError,
    RemoteProtocolError,
    Subscription,
    decode_subscription,
    decode_vars,
    encode_packet,
    encode_subscription,
)

DATA = Path(__file__).parent / "data"
FAST = settings(max_examples=300, deadline=None)
U64 = 2**64 - 1

Pairs = list[tuple[bytes, bytes]]


def uwsgi_vars(**overrides: bytes) -> Pairs:
    """What a uWSGI node sends for ``example.com`` -> ``127.0.0.1:3031``, in its order."""
    values = {
        "key": b"example.com",
        "address": b"127.0.0.1:3031",
        "modifier1": b"0",
        "modifier2": b"0",
        "cores": b"4",
        "load": b"0",
        "weight": b"0",
    }
    values.update(overrides)
    return [(name.encode(), value) for name, value in values.items()]


def datagram(pairs: Pairs, command: int = 0) -> bytes:
    return encode_packet(pairs, SUBSCRIPTION_MODIFIER1, command)


def record(key: bytes, value: bytes) -> bytes:
    return struct.pack("<H", len(key)) + key + struct.pack("<H", len(value)) + value


# --- decoding ------------------------------------------------------------------------------------


def test_decode_what_uwsgi_sends() -> None:
    assert decode_subscription(datagram(uwsgi_vars())) == Subscription(
        key=b"example.com", address=b"127.0.0.1:3031", cores=4
    )


@pytest.mark.parametrize(
    ("modifier2", "command"),
    [(0, Command.SUBSCRIBE), (1, Command.UNSUBSCRIBE), (2, Command.UNSUBSCRIBE), (255, Command.UNSUBSCRIBE)],
)
def test_modifier2_is_the_command(modifier2: int, command: Command) -> None:
    sub = decode_subscription(datagram(uwsgi_vars(), modifier2))
    assert sub.command is command


def test_modifier1_and_size_of_the_header_are_ignored() -> None:
    block = encode_packet(uwsgi_vars())[4:]
    for header in (b"\x00\x00\x00\x00", b"\xe0\xff\xff\x00", b"\x05\x01\x00\x00"):
        assert decode_subscription(header + block).key == b"example.com"


def test_bytes_like_datagram() -> None:
    data = datagram(uwsgi_vars())
    sub = decode_subscription(bytearray(data))  # type: ignore[arg-type]
    assert sub == decode_subscription(data)
    assert type(sub.key) is bytes


def test_optional_vars_and_defaults() -> None:
    sub = decode_subscription(datagram([(b"key", b"k"), (b"address", b"/run/a.sock")]))
    assert sub == Subscription(key=b"k", address=b"/run/a.sock")
    assert (sub.modifier1, sub.modifier2, sub.cores, sub.load, sub.weight) == (0, 0, 0, 0, 0)
    optional = (sub.notify, sub.unix, sub.sign, sub.signed_data, sub.sni_key, sub.sni_crt, sub.sni_ca)
    assert optional == (None,) * 7


def test_all_vars() -> None:
    pairs = [
        *uwsgi_vars(modifier1=b"5", modifier2=b"7", cores=b"8", load=b"3", weight=b"2"),
        (b"sni_key", b"k.pem"),
        (b"sni_crt", b"c.pem"),
        (b"sni_ca", b""),
        (b"notify", b"/run/n.sock"),
        (b"unix", b"1700000001"),
    ]
    sub = decode_subscription(datagram(pairs))
    assert sub == Subscription(
        key=b"example.com",
        address=b"127.0.0.1:3031",
        modifier1=5,
        modifier2=7,
        cores=8,
        load=3,
        weight=2,
        notify=b"/run/n.sock",
        unix=1700000001,
        sni_key=b"k.pem",
        sni_crt=b"c.pem",
        sni_ca=b"",
    )


def test_unknown_vars_are_ignored_and_duplicates_last_wins() -> None:
    pairs = [(b"algo", b"lrc"), *uwsgi_vars(), (b"backup", b"1"), (b"weight", b"9"), (b"key", b"other")]
    sub = decode_subscription(datagram(pairs))
    assert (sub.key, sub.weight) == (b"other", 9)


def test_numbers() -> None:
    sub = decode_subscription(
        datagram(uwsgi_vars(modifier1=b"255", modifier2=b"", cores=str(U64).encode(), load=b"0" * 40 + b"1"))
    )
    assert (sub.modifier1, sub.modifier2, sub.cores, sub.load) == (255, 0, U64, 1)
    assert decode_subscription(datagram([*uwsgi_vars(), (b"unix", b"")])).unix == 0


def test_signed_datagram() -> None:
    signed = encode_packet([*uwsgi_vars(), (b"unix", b"1700000000")])[4:]
    data = datagram([*uwsgi_vars(), (b"unix", b"1700000000"), (b"sign", b"\x00SIG\xff")])
    sub = decode_subscription(data)
    assert sub.sign == b"\x00SIG\xff"
    assert sub.signed_data == signed
    assert data == data[:4] + signed + record(b"sign", b"\x00SIG\xff")
    assert "signed_data" not in repr(sub)
    assert decode_subscription(datagram([(b"key", b"k"), (b"address", b"a"), (b"sign", b"")])).signed_data == (
        record(b"key", b"k") + record(b"address", b"a")
    )


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([(b"address", b"a")], "missing or empty key"),
        ([(b"key", b""), (b"address", b"a")], "missing or empty key"),
        ([(b"key", b"k")], "missing or empty address"),
        ([(b"key", b"k"), (b"address", b"")], "missing or empty address"),
        ([(b"key", b"k" * 256), (b"address", b"a")], "key of 256 bytes is longer than 255"),
        ([(b"key", b"k"), (b"address", b"a" * 256)], "address of 256 bytes is longer than 255"),
        ([(b"key", b"k"), (b"address", b"a"), (b"notify", b"n" * 102)], "notify of 102 bytes is longer than 101"),
        ([(b"key", b"k"), (b"address", b"a"), (b"sign", b"s"), (b"x", b"")], "sign must be the last var"),
        ([(b"key", b"k"), (b"address", b"a"), (b"sign", b"s"), (b"sign", b"s")], "sign must be the last var"),
    ],
)
def test_decode_rejects(pairs: Pairs, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message) as info:
        decode_subscription(datagram(pairs))
    assert info.value.error_status_hint == 400
    assert str(info.value).startswith("subscription: ")


@pytest.mark.parametrize("var", ["modifier1", "modifier2", "cores", "load", "weight", "unix"])
@pytest.mark.parametrize("value", [b"abc", b"-1", b"+1", b" 1", b"1 ", b"1.5", b"0x1", b"1_0", b"\xd9\xa1", b"\x00"])
def test_decode_rejects_non_decimal_numbers(var: str, value: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match=f"{var} is not a decimal number"):
        decode_subscription(datagram(uwsgi_vars(**{var: value})))


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("modifier1", b"256"),
        ("modifier2", b"300"),
        ("cores", b"18446744073709551616"),
        ("load", b"99999999999999999999"),
        ("weight", b"1" + b"0" * 20),
        ("unix", b"9" * 5000),
    ],
)
def test_decode_rejects_numbers_out_of_range(var: str, value: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match=f"{var} is out of range"):
        decode_subscription(datagram(uwsgi_vars(**{var: value})))


def test_error_messages_are_short_and_printable() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_subscription(datagram(uwsgi_vars(key=b"\x00\n\xff" * 100)))
    message = str(info.value)
    assert message.isprintable()
    assert len(message) < 250
    assert message.endswith("...")
    with pytest.raises(RemoteProtocolError) as info:
        decode_subscription(datagram(uwsgi_vars(weight=b"9" * 5000)))
    assert len(str(info.value)) < 150


@pytest.mark.parametrize("data", [b"", b"\xe0", b"\xe0\x00\x00"])
def test_decode_rejects_short_datagrams(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match=f"datagram of {len(data)} bytes is shorter than the 4-byte header"):
        decode_subscription(data)


def test_decode_rejects_malformed_vars() -> None:
    data = datagram(uwsgi_vars()) + b"\x05\x00ab"
    with pytest.raises(RemoteProtocolError, match=r"subscription: vars block: key of 5 bytes at offset \d+ runs past"):
        decode_subscription(data)


# --- encoding ------------------------------------------------------------------------------------


def test_encode_like_uwsgi() -> None:
    sub = Subscription(key=b"example.com", address=b"127.0.0.1:3031", cores=4)
    assert encode_subscription(sub) == datagram(uwsgi_vars())
    unsub = dataclasses.replace(sub, command=Command.UNSUBSCRIBE)
    assert encode_subscription(unsub)[:4] == encode_subscription(sub)[:3] + b"\x01"


def test_encode_var_order() -> None:
    sub = Subscription(
        key=b"k",
        address=b"a",
        modifier1=5,
        modifier2=6,
        cores=7,
        load=8,
        weight=9,
        notify=b"n",
        unix=10,
        sign=b"s",
        signed_data=b"ignored",
        sni_key=b"sk",
        sni_crt=b"sc",
        sni_ca=b"ca",
    )
    data = encode_subscription(sub)
    assert data[0] == 224 and data[3] == 0
    assert data[1] | data[2] << 8 == len(data) - 4
    assert decode_vars(data[4:]) == [
        (b"key", b"k"),
        (b"address", b"a"),
        (b"modifier1", b"5"),
        (b"modifier2", b"6"),
        (b"cores", b"7"),
        (b"load", b"8"),
        (b"weight", b"9"),
        (b"sni_key", b"sk"),
        (b"sni_crt", b"sc"),
        (b"sni_ca", b"ca"),
        (b"notify", b"n"),
        (b"unix", b"10"),
        (b"sign", b"s"),
    ]


def test_encode_sends_only_the_optional_vars_that_are_set() -> None:
    data = encode_subscription(Subscription(key=b"k", address=b"a", sni_crt=b"", unix=0))
    names = [name for name, _ in decode_vars(data[4:])]
    assert names == [b"key", b"address", b"modifier1", b"modifier2", b"cores", b"load", b"weight", b"sni_crt", b"unix"]


def test_sign_workflow() -> None:
    """Encode without sign, sign datagram[4:], encode with sign: the decoder sees the same region."""
    unsigned = Subscription(key=b"k", address=b"a", unix=1700000000)
    region = encode_subscription(unsigned)[4:]
    signed = dataclasses.replace(unsigned, sign=b"signature")
    decoded = decode_subscription(encode_subscription(signed))
    assert decoded.signed_data == region
    assert decoded == dataclasses.replace(signed, signed_data=region)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"key": b""}, "key must be 1..255 bytes, got 0"),
        ({"key": b"k" * 256}, "key must be 1..255 bytes, got 256"),
        ({"address": b""}, "address must be 1..255 bytes"),
        ({"address": b"a" * 256}, "address must be 1..255 bytes"),
        ({"notify": b"n" * 102}, "notify must be at most 101 bytes"),
        ({"modifier1": 256}, "modifier1 256 is outside 0..255"),
        ({"modifier2": -1}, "modifier2 -1 is outside 0..255"),
        ({"cores": -1}, "cores -1 is outside"),
        ({"load": U64 + 1}, "load 18446744073709551616 is outside"),
        ({"weight": -5}, "weight -5 is outside"),
        ({"unix": -1}, "unix -1 is outside"),
        ({"command": 2}, "unknown command 2"),
        ({"sni_key": b"x" * 65000, "sni_crt": b"x" * 1000}, "vars block of"),
    ],
)
def test_encode_rejects(changes: dict[str, Any], message: str) -> None:
    sub = dataclasses.replace(Subscription(key=b"k", address=b"a"), **changes)
    with pytest.raises(LocalProtocolError, match=message):
        encode_subscription(sub)


def test_command_values() -> None:
    assert (Command.SUBSCRIBE, Command.UNSUBSCRIBE) == (0, 1)
    assert Subscription(key=b"k", address=b"a").command is Command.SUBSCRIBE


# --- fixture files ---------------------------------------------------------------------------------


def load_cases(subdir: str) -> list[Any]:
    """One ``pytest.param(data, expect, id=name)`` per subscription fixture in ``data/<subdir>``."""
    manifest: dict[str, dict[str, Any]] = json.loads((DATA / subdir / "cases.json").read_text())
    return [
        pytest.param((DATA / subdir / f"{name}.bin").read_bytes(), expect, id=name)
        for name, expect in sorted(manifest.items())
        if expect["kind"] == "subscription"
    ]


def subscription_from_json(fields: dict[str, Any]) -> Subscription:
    values: dict[str, Any] = {k: v.encode("latin-1") if isinstance(v, str) else v for k, v in fields.items()}
    values["command"] = Command(values["command"])
    return Subscription(**values)


@pytest.mark.parametrize(("data", "expect"), load_cases("valid"))
def test_valid_subscription_fixture(data: bytes, expect: dict[str, Any]) -> None:
    expected = subscription_from_json(expect["fields"])
    assert decode_subscription(data) == expected
    assert decode_subscription(encode_subscription(expected)) == expected


@pytest.mark.parametrize(("data", "expect"), load_cases("invalid"))
def test_invalid_subscription_fixture(data: bytes, expect: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_subscription(data)
    assert expect["error"] in str(info.value)
    assert info.value.error_status_hint == expect["status"]


# --- properties ------------------------------------------------------------------------------------

names = st.binary(min_size=1, max_size=255)
u64 = st.integers(0, U64)
optional_bytes = st.none() | st.binary(max_size=64)


@st.composite
def subscriptions(draw: st.DrawFn) -> Subscription:
    sub = Subscription(
        key=draw(names),
        address=draw(names),
        command=draw(st.sampled_from(Command)),
        modifier1=draw(st.integers(0, 255)),
        modifier2=draw(st.integers(0, 255)),
        cores=draw(u64),
        load=draw(u64),
        weight=draw(u64),
        notify=draw(st.none() | st.binary(max_size=101)),
        unix=draw(st.none() | u64),
        sni_key=draw(optional_bytes),
        sni_crt=draw(optional_bytes),
        sni_ca=draw(optional_bytes),
    )
    sign = draw(optional_bytes)
    if sign is None:
        return sub
    return dataclasses.replace(sub, sign=sign, signed_data=encode_subscription(sub)[4:])


@FAST
@given(subscriptions())
def test_subscription_round_trip(sub: Subscription) -> None:
    data = encode_subscription(sub)
    assert decode_subscription(data) == sub
    assert encode_subscription(decode_subscription(data)) == data


@FAST
@given(st.binary(max_size=200))
def test_decode_random_bytes_parses_or_raises_remote_error(data: bytes) -> None:
    try:
        decode_subscription(data)
    except RemoteProtocolError as exc:
        assert str(exc).startswith("subscription: ")


var_names = st.sampled_from(
    [b"key", b"address", b"modifier1", b"modifier2", b"cores", b"load", b"weight", b"notify", b"unix", b"sign", b"x"]
)
var_values = st.one_of(st.binary(max_size=6), st.integers(0, 2**70).map(lambda n: str(n).encode()))


@FAST
@given(st.lists(st.tuples(var_names, var_values), max_size=12), st.integers(0, 255))
def test_decode_plausible_vars_parses_or_raises_remote_error(pairs: Pairs, command: int) -> None:
    try:
        sub = decode_subscription(datagram(pairs, command))
    except RemoteProtocolError as exc:
        assert str(exc).startswith("subscription: ")
    else:
        assert sub.command is (Command.UNSUBSCRIBE if command else Command.SUBSCRIBE)
        assert encode_subscription(sub)  # whatever decodes can be encoded again


# --- exact edges (each one a mutant tools/mutation found surviving) --------------------------------


def test_values_are_shown_whole_up_to_40_bytes() -> None:
    for value, shown in ((b"x" * 40, repr(b"x" * 40)), (b"x" * 41, repr(b"x" * 40) + "...")):
        with pytest.raises(RemoteProtocolError) as info:
            decode_subscription(datagram(uwsgi_vars(weight=value)))
        assert str(info.value) == f"subscription: weight is not a decimal number: {shown}"


def test_a_bare_header_is_a_datagram_without_key() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_subscription(b"\xe0\x00\x00\x00")
    assert str(info.value) == "subscription: missing or empty key"
