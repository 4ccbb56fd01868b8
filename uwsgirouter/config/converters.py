"""Pure converters from the text a user wrote to typed values.

Each converter says what it expects in words, so an error can name the option, the value and the
expectation in one line. Converters raise ``ValueError``; the setting turns that into a ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from uwsgirouter.address import AbstractAddress, Address, TcpAddress, UnixAddress, parse_address

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

FALSE_WORDS = frozenset({"false", "off", "no", "0"})


@dataclass(frozen=True, slots=True)
class Converter(Generic[T_co]):
    """Turns one raw value into ``T``; ``expected`` completes "expected ..." in error messages."""

    expected: str
    convert: Callable[[str], T_co]
    metavar: str = "VALUE"

    def __call__(self, raw: str) -> T_co:
        return self.convert(raw)


def _text(raw: str) -> str:
    return raw


def _non_empty(raw: str) -> str:
    if not raw:
        raise ValueError("empty value")
    return raw


def to_bool(raw: str) -> bool:
    """uWSGI's rule: ``false``, ``off``, ``no`` and ``0`` are false; anything else, even empty, is true."""
    return raw.strip().lower() not in FALSE_WORDS


def integer(minimum: int = 0, maximum: int = 2**63 - 1, metavar: str = "N") -> Converter[int]:
    def convert(raw: str) -> int:
        text = raw.strip()
        if not text.removeprefix("-").isdigit() or not text.isascii():
            raise ValueError("not a whole number")
        value = int(text)
        if not minimum <= value <= maximum:
            raise ValueError("out of range")
        return value

    expected = f"a whole number >= {minimum}" if maximum >= 2**62 else f"a whole number from {minimum} to {maximum}"
    return Converter(expected, convert, metavar)


def choice(*words: str) -> Converter[str]:
    def convert(raw: str) -> str:
        if raw not in words:
            raise ValueError("not one of the choices")
        return raw

    return Converter("one of " + ", ".join(words), convert, "|".join(words))


def _address(raw: str) -> Address:
    return parse_address(raw)


def _node_address(raw: str) -> Address:
    address = parse_address(raw)
    if not isinstance(address, TcpAddress | UnixAddress | AbstractAddress):
        raise ValueError("a node must be host:port, a UNIX path or @abstract")
    return address


def _octal_mode(raw: str) -> int:
    text = raw.strip()
    if not text or not all(c in "01234567" for c in text) or len(text) > 4:
        raise ValueError("not an octal mode")
    return int(text, 8)


def _key_value(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise ValueError("missing '='")
    return name, value


def _keyval_list(raw: str) -> dict[str, str]:
    """uWSGI's keyval syntax ``a=1,b=2`` (used by --cache2 and --subscribe2); values cannot hold commas."""
    items: dict[str, str] = {}
    for part in raw.split(","):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise ValueError(f"{part!r} is not key=value")
        items[name.strip()] = value
    if not items:
        raise ValueError("empty")
    return items


def _code_string(raw: str) -> tuple[int, str, str]:
    modifier, sep1, rest = raw.partition(":")
    path, sep2, function = rest.rpartition(":")
    if not (sep1 and sep2 and modifier.isdigit() and path and function):
        raise ValueError("not MODIFIER1:FILE:FUNCTION")
    return int(modifier), path, function


TEXT: Converter[str] = Converter("text", _text, "VALUE")
NON_EMPTY: Converter[str] = Converter("a non-empty value", _non_empty, "VALUE")
PATH: Converter[str] = Converter("a path", _non_empty, "PATH")
BOOL: Converter[bool] = Converter("true or false", to_bool, "BOOL")
ADDRESS: Converter[Address] = Converter(
    "an address (host:port, :port, /unix/path, @abstract, =N or fd://N)", _address, "ADDR"
)
NODE_ADDRESS: Converter[Address] = Converter(
    "a node address (host:port, /unix/path or @abstract)", _node_address, "ADDR"
)
COUNT = integer(0)
POSITIVE = integer(1)
SECONDS = integer(0, metavar="SECONDS")
BYTES = integer(0, metavar="BYTES")
MODIFIER = integer(0, 255, "MODIFIER1")
PORT_BUFFER = integer(1, 65535, "BYTES")
OCTAL_MODE: Converter[int] = Converter("an octal file mode such as 660", _octal_mode, "MODE")
KEY_VALUE: Converter[tuple[str, str]] = Converter("NAME=VALUE", _key_value, "NAME=VALUE")
KEYVAL_LIST: Converter[dict[str, str]] = Converter("key=value pairs separated by commas", _keyval_list, "K=V,...")
CODE_STRING: Converter[tuple[int, str, str]] = Converter(
    "MODIFIER1:FILE:FUNCTION, for example 0:mapper.py:get", _code_string, "M:FILE:FUNC"
)
