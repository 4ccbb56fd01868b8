"""One declaration per option.

A ``Setting`` is a descriptor declared once on an options class. From it come the command-line flags
(with uWSGI's aliases and short letters), the INI key, the ``UWSGI_<NAME>`` environment variable, the
default, the validation, the ``--help`` text and the generated options reference. Reading the attribute
on a ``Config`` gives the typed value.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Generic, TypeVar, overload

from uwsgirouter.config.converters import BOOL, Converter
from uwsgirouter.errors import ConfigError

T = TypeVar("T")
V = TypeVar("V")

PLANNED_NOTE = "(accepted; takes effect in a later release of uwsgirouter)"


class Arg(enum.Enum):
    """How an option takes its value on the command line (INI and env always give one)."""

    NONE = "none"  #: a flag: ``--master``
    REQUIRED = "required"  #: ``--socket ADDR`` or ``--socket=ADDR``
    OPTIONAL = "optional"  #: ``--opt`` alone, or ``--opt=VALUE`` (never a separate word, as in uWSGI)


class Setting(Generic[V]):
    """Base descriptor; see ``Scalar``, ``Multi`` and ``Flag``."""

    multiple = False
    converter: Converter[Any]

    def __init__(
        self,
        *,
        help: str,
        aliases: Sequence[str] = (),
        short: str | None = None,
        arg: Arg = Arg.REQUIRED,
        planned: bool = False,
        implicit: str = "true",
    ) -> None:
        self.help = help
        self.aliases = tuple(aliases)
        self.short = short
        self.arg = arg
        self.planned = planned
        self.implicit = implicit
        self.name = ""
        self.attr = ""
        self.group = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr
        self.name = attr.rstrip("_").replace("_", "-")
        self.group = getattr(owner, "GROUP", owner.__name__)

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[V]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> V: ...

    def __get__(self, obj: object | None, owner: type) -> Setting[V] | V:
        if obj is None:
            return self
        values: dict[str, Any] = obj.__dict__["_values"]
        return values[self.name]  # type: ignore[no-any-return]

    @property
    def env_var(self) -> str:
        return "UWSGI_" + self.name.upper().replace("-", "_")

    @property
    def flags(self) -> list[str]:
        names = [f"--{n}" for n in (self.name, *self.aliases)]
        return [f"-{self.short}", *names] if self.short else names

    @property
    def full_help(self) -> str:
        return f"{self.help} {PLANNED_NOTE}" if self.planned else self.help

    @property
    def default(self) -> V:
        raise NotImplementedError

    def convert_one(self, raw: str | None) -> Any:
        """Convert one occurrence; ``None`` means the option was given without a value."""
        text = self.implicit if raw is None else raw
        try:
            return self.converter(text)
        except ValueError as exc:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise ConfigError(
                f"invalid value {shown!r} for --{self.name}: expected {self.converter.expected} ({exc})"
            ) from None

    def resolve(self, raws: Sequence[str | None]) -> V:
        """The effective value from every occurrence, in load order."""
        raise NotImplementedError


class Scalar(Setting[T]):
    """A single value; the last occurrence wins, as in uWSGI."""

    def __init__(self, converter: Converter[T], default: T, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.converter = converter
        self._default = default

    @property
    def default(self) -> T:
        return self._default

    def resolve(self, raws: Sequence[str | None]) -> T:
        converted = [self.convert_one(raw) for raw in raws]
        return converted[-1] if converted else self._default


class Multi(Setting[tuple[T, ...]]):
    """A repeatable option: every occurrence counts, in load order."""

    multiple = True

    def __init__(self, converter: Converter[T], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.converter = converter

    @property
    def default(self) -> tuple[T, ...]:
        return ()

    def resolve(self, raws: Sequence[str | None]) -> tuple[T, ...]:
        return tuple(self.convert_one(raw) for raw in raws)


class Flag(Setting[bool]):
    """A boolean. On the command line it takes no value unless declared otherwise (uWSGI has a few)."""

    def __init__(self, *, arg: Arg = Arg.NONE, **kwargs: Any) -> None:
        super().__init__(arg=arg, **kwargs)
        self.converter = BOOL

    @property
    def default(self) -> bool:
        return False

    def resolve(self, raws: Sequence[str | None]) -> bool:
        converted = [self.convert_one(raw) for raw in raws]
        return bool(converted[-1]) if converted else False
