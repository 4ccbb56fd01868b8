"""Subscription datagrams: how uWSGI nodes announce themselves to a router.

A datagram is a 4-byte uwsgi header plus a vars block. Receivers ignore modifier1 (normally 224)
and the size field (the datagram length is what counts); modifier2 is the command: 0 subscribes or
refreshes, anything else unsubscribes (senders use 1). uWSGI sends the vars in this order, numbers
as ASCII decimal::

    key, address, modifier1, modifier2, cores, load, weight,
    [sni_key, sni_crt, sni_ca], [notify], [unix, sign]

``sign`` is an RSA signature over the var bytes from offset 4 up to the start of the ``sign`` record,
so it must be the last var. Unknown vars (uWSGI 2.1's ``algo``, ``backup``, ...) are ignored.

Unlike uWSGI, decoding is strict (docs/differences.md, "Subscription packets"): uWSGI overflows its key
buffer on keys over 255 bytes and reads numbers without validation. Every rejection is a ``RemoteProtocolError`` whose
message names the var and shows at most 40 bytes of the offending value, fit for a log line.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from .errors import LocalProtocolError, RemoteProtocolError
from .packet import HEADER_SIZE, SUBSCRIPTION_MODIFIER1, _parse_vars, encode_header, encode_vars

__all__ = ["Command", "Subscription", "decode_subscription", "encode_subscription"]

#: Longest key or address uWSGI can hold.
MAX_NAME_SIZE: Final = 255
#: uWSGI keeps ``notify`` in a buffer that must hold it NUL-terminated.
MAX_NOTIFY_SIZE: Final = 101
_MAX_U8: Final = 255
_MAX_U64: Final = 2**64 - 1
_MAX_U64_DIGITS: Final = 20
_SHOW_BYTES: Final = 40
# Record overhead of the trailing sign var: two u16 lengths plus the 4-byte name.
_SIGN_RECORD_OVERHEAD: Final = 2 + len(b"sign") + 2


class Command(enum.IntEnum):
    """What a datagram asks for; travels as modifier2 of the header."""

    SUBSCRIBE = 0
    UNSUBSCRIBE = 1


@dataclass(frozen=True, slots=True)
class Subscription:
    """One decoded subscription datagram.

    Optional vars are None when absent. ``signed_data`` is the region ``sign`` covers (set by the
    decoder when ``sign`` is present); the encoder ignores it and recomputes the layout.
    """

    key: bytes
    address: bytes
    command: Command = Command.SUBSCRIBE
    modifier1: int = 0
    modifier2: int = 0
    cores: int = 0
    load: int = 0
    weight: int = 0
    notify: bytes | None = None
    unix: int | None = None
    sign: bytes | None = None
    signed_data: bytes | None = field(default=None, repr=False)
    sni_key: bytes | None = None
    sni_crt: bytes | None = None
    sni_ca: bytes | None = None


def _show(value: bytes) -> str:
    """A short, printable rendering of an untrusted value for error messages and logs."""
    if len(value) > _SHOW_BYTES:
        return f"{value[:_SHOW_BYTES]!r}..."
    return repr(value)


def _name(values: dict[bytes, bytes], var: str) -> bytes:
    """Return the required ``key``/``address`` var, checked for presence and length."""
    value = values.get(var.encode())
    if not value:
        raise RemoteProtocolError(f"subscription: missing or empty {var}")
    if len(value) > MAX_NAME_SIZE:
        raise RemoteProtocolError(
            f"subscription: {var} of {len(value)} bytes is longer than {MAX_NAME_SIZE}: {_show(value)}"
        )
    return value


def _number(values: dict[bytes, bytes], var: str, maximum: int) -> int:
    """Parse a decimal var; absent or empty means 0 (as uWSGI reads an empty number)."""
    value = values.get(var.encode())
    if not value:
        return 0
    if not value.isdigit():  # bytes.isdigit() accepts ASCII digits only
        raise RemoteProtocolError(f"subscription: {var} is not a decimal number: {_show(value)}")
    digits = value.lstrip(b"0") or b"0"
    # The length test keeps int() away from huge strings (and its 4300-digit limit).
    number = int(digits) if len(digits) <= _MAX_U64_DIGITS else maximum + 1
    if number > maximum:
        raise RemoteProtocolError(f"subscription: {var} is out of range 0..{maximum}: {_show(value)}")
    return number


def decode_subscription(datagram: bytes) -> Subscription:
    """Decode and validate one subscription datagram.

    Raises:
        RemoteProtocolError: the datagram is short or malformed, ``key``/``address`` is missing, empty
            or over 255 bytes, ``notify`` is 102 bytes or more, a number is not decimal or out of
            range, or ``sign`` is not the last var.
    """
    if type(datagram) is not bytes:
        datagram = bytes(datagram)
    size = len(datagram)
    if size < HEADER_SIZE:
        raise RemoteProtocolError(
            f"subscription: datagram of {size} bytes is shorter than the {HEADER_SIZE}-byte header"
        )
    try:
        pairs = _parse_vars(datagram, HEADER_SIZE, size)
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(f"subscription: {exc}") from None
    values = dict(pairs)  # duplicates: last wins, as in uWSGI
    get = values.get

    key = _name(values, "key")
    address = _name(values, "address")
    notify = get(b"notify")
    if notify is not None and len(notify) > MAX_NOTIFY_SIZE:
        raise RemoteProtocolError(
            f"subscription: notify of {len(notify)} bytes is longer than {MAX_NOTIFY_SIZE}: {_show(notify)}"
        )
    sign = get(b"sign")
    signed_data = None
    if sign is not None:
        if pairs[-1][0] != b"sign" or any(name == b"sign" for name, _ in pairs[:-1]):
            raise RemoteProtocolError("subscription: sign must be the last var, and appear once")
        signed_data = datagram[HEADER_SIZE : size - _SIGN_RECORD_OVERHEAD - len(sign)]

    return Subscription(
        key=key,
        address=address,
        command=Command.SUBSCRIBE if datagram[3] == 0 else Command.UNSUBSCRIBE,
        modifier1=_number(values, "modifier1", _MAX_U8),
        modifier2=_number(values, "modifier2", _MAX_U8),
        cores=_number(values, "cores", _MAX_U64),
        load=_number(values, "load", _MAX_U64),
        weight=_number(values, "weight", _MAX_U64),
        notify=notify,
        unix=_number(values, "unix", _MAX_U64) if b"unix" in values else None,
        sign=sign,
        signed_data=signed_data,
        sni_key=get(b"sni_key"),
        sni_crt=get(b"sni_crt"),
        sni_ca=get(b"sni_ca"),
    )


def _check_name(var: str, value: bytes) -> None:
    if not 0 < len(value) <= MAX_NAME_SIZE:
        raise LocalProtocolError(f"subscription: {var} must be 1..{MAX_NAME_SIZE} bytes, got {len(value)}")


def _check_number(var: str, value: int, maximum: int) -> bytes:
    if not 0 <= value <= maximum:
        raise LocalProtocolError(f"subscription: {var} {value} is outside 0..{maximum}")
    return b"%d" % value


def encode_subscription(sub: Subscription) -> bytes:
    """Encode ``sub`` exactly as a uWSGI node would (var order, decimal numbers, header m1 224).

    Optional vars are sent only when not None; ``signed_data`` is ignored. To sign, encode the
    subscription without ``sign``, sign ``datagram[4:]``, then encode it again with ``sign`` set.

    Raises:
        LocalProtocolError: ``sub`` holds a value the decoder would reject or the wire cannot carry.
    """
    try:
        command = Command(sub.command)
    except ValueError:
        raise LocalProtocolError(f"subscription: unknown command {sub.command!r}") from None
    _check_name("key", sub.key)
    _check_name("address", sub.address)
    pairs = [
        (b"key", sub.key),
        (b"address", sub.address),
        (b"modifier1", _check_number("modifier1", sub.modifier1, _MAX_U8)),
        (b"modifier2", _check_number("modifier2", sub.modifier2, _MAX_U8)),
        (b"cores", _check_number("cores", sub.cores, _MAX_U64)),
        (b"load", _check_number("load", sub.load, _MAX_U64)),
        (b"weight", _check_number("weight", sub.weight, _MAX_U64)),
    ]
    for name, value in ((b"sni_key", sub.sni_key), (b"sni_crt", sub.sni_crt), (b"sni_ca", sub.sni_ca)):
        if value is not None:
            pairs.append((name, value))
    if sub.notify is not None:
        if len(sub.notify) > MAX_NOTIFY_SIZE:
            raise LocalProtocolError(f"subscription: notify must be at most {MAX_NOTIFY_SIZE} bytes")
        pairs.append((b"notify", sub.notify))
    if sub.unix is not None:
        pairs.append((b"unix", _check_number("unix", sub.unix, _MAX_U64)))
    if sub.sign is not None:
        pairs.append((b"sign", sub.sign))
    block = encode_vars(pairs)
    return encode_header(SUBSCRIPTION_MODIFIER1, len(block), command) + block
