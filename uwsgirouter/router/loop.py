"""What a session needs of the loop that runs it, and nothing more.

A session never holds the router worker: it holds a ``Loop`` (watch a descriptor, change what it waits for, forget
it, the clock of the current wake-up, say that it ended) and a ``Settings``. This module imports nothing else of
uwsgirouter, so the session's dependencies can be read here at a glance, and a test drives a session with a fake loop
of a dozen lines (tests/router/fakeloop.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

try:
    from mypy_extensions import mypyc_attr as mypyc_attr
except ImportError:  # a pure-Python install has no mypy_extensions, and needs nothing of it

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Any:  # type: ignore[misc]
        return lambda cls: cls


#: Called with the ready events (``select.EPOLL*`` bits) of the descriptor it watches.
Handler = Callable[[int], None]


class Watcher:
    """What a loop calls when a descriptor it watches is ready. The session is one (compiled, the loop calls it
    directly: no bound method made per descriptor and parsed per call); the process's other descriptors are
    ``Callback`` s around a plain function."""

    __slots__ = ()

    def ready(self, fd: int, events: int) -> None:
        """``fd`` has ``events`` (``select.EPOLL*`` bits)."""
        raise NotImplementedError


class Callback(Watcher):
    """A plain function as a watcher: called with the events."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def ready(self, fd: int, events: int) -> None:
        self.handler(events)


#: Bytes read from a socket at once while relaying: large pieces mean few system calls per body. What a side may
#: hold unsent before its source is no longer read is ``Settings.high_water`` (``--fastrouter-buffer-size``), so a
#: session holds at most ``high_water + RELAY_READ_SIZE`` bytes per direction.
RELAY_READ_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class Settings:
    """The router options a session reads, fixed for the life of a router process."""

    #: --fastrouter-buffer-size: unsent bytes one side may hold before the other side is no longer read
    high_water: int = 4096
    #: bytes read at once while relaying
    read_size: int = RELAY_READ_SIZE
    #: --fastrouter-timeout: a head must arrive within it; then it is the longest silence of a session
    timeout: float = 30.0
    #: --fastrouter-max-retries: nodes tried after the first one failed to connect
    max_retries: int = 3
    #: --fastrouter-post-buffering: bodies are held (memory up to this, then a file) before connecting; 0: off
    post_buffering: int = 0
    #: --fastrouter-post-buffering-dir
    post_buffering_dir: str | None = None
    #: --fastrouter-quiet: no line for each failed connect
    quiet: bool = False
    #: --fastrouter-force-key: every request is routed by this key
    force_key: bytes = b""
    #: --fastrouter-fallback-on-no-key: a key no mapper knows goes to the first fallback
    fallback_on_no_key: bool = False
    #: relay long transfers with splice(2) (used only while ``high_water`` fits in a pipe: a larger
    #: --fastrouter-buffer-size asks for that much buffering, which only the copy path gives)
    splice: bool = True


class Timed(Protocol):
    """What the loop needs of a session: when it last did something, and what to do when that is too long ago."""

    last_active: float

    def timed_out(self) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # the tests' fake loop is a Python subclass
class Loop:
    """The router loop as a session sees it. A base class rather than a Protocol: in the compiled build a session's
    calls to the router's loop (a subclass) are then direct calls, not Python method lookups."""

    def __init__(self, now: float = 0.0) -> None:
        #: monotonic time of the current wake-up (read once per wake-up, before any handler runs)
        self.now = now
        #: a graceful stop is under way: requests still arriving are answered 503
        self.shutting_down = False

    def register(self, fd: int, watcher: Watcher, mask: int) -> None:
        """Watch ``fd`` for ``mask`` and call ``watcher.ready`` with its ready events."""
        raise NotImplementedError

    def modify(self, fd: int, mask: int) -> None:
        """Wait for ``mask`` on ``fd`` from now on (0: nothing)."""
        raise NotImplementedError

    def unregister(self, fd: int) -> None:
        """Forget ``fd``, which the caller closes next (closing removes it from the kernel's epoll set)."""
        raise NotImplementedError

    def wait_for_descriptor(self, resume: Callable[[], None]) -> None:
        """No descriptor was left for the session's backend: call ``resume`` once one is free."""
        raise NotImplementedError

    def session_ended(self, session: Timed, request: bool, sent: int, started: float) -> None:
        """The session closed its client; ``request``: a whole head came in (it counts as a request)."""
        raise NotImplementedError
