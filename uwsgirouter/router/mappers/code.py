"""``--fastrouter-use-code-string 0:FILE:FUNCTION``: route by calling a Python function (docs/differences.md, "The
code-string mapper").

The file is loaded once, in the master before the fork, as the module ``uwsgi_fastrouter`` (uWSGI's
name), so a broken file stops the start with a clear message. The function gets the key as ``str``
and returns ``"addr[,modifier1]"`` as ``str`` or ``bytes``, or ``None`` for "no node" (a 502). A
function that raises is logged with its traceback and answered with a 502; one slower than 100 ms is
logged, since it blocks the router's whole loop.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from uwsgirouter.errors import ConfigError
from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.router.mappers.base import Mapper
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.text import printable

log = logging.getLogger("uwsgirouter.router")
#: lines a request can cause (a mapper that raises or returns junk for some keys) are rate-limited
_notes = LogLimiter(log)

SLOW_CALL_S = 0.1
MAX_CACHED_NODES = 4096
MODULE_NAME = "uwsgi_fastrouter"


def load_mapper_function(modifier1: int, path: str, name: str) -> Callable[[str], Any]:
    """Import FILE and return FUNCTION; a ``ConfigError`` says what is wrong."""
    if modifier1 != 0:
        raise ConfigError(f"--fastrouter-use-code-string {modifier1}:{path}:{name}: only Python (0) is supported")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--fastrouter-use-code-string: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ConfigError(f"--fastrouter-use-code-string: {path}: file not found") from None
    except Exception as exc:
        raise ConfigError(f"--fastrouter-use-code-string: {path} failed to load: {exc!r}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"--fastrouter-use-code-string: {path} has no function {name!r}")
    return function  # type: ignore[no-any-return]


class CodeMapper(Mapper):
    """Calls the user's function for every request (and every retry)."""

    def __init__(self, function: Callable[[str], Any]) -> None:
        self.function = function
        self.name = getattr(function, "__name__", "mapper")
        self._nodes: dict[str, Node | None] = {}

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        started = time.monotonic()
        try:
            result = self.function(key.decode("utf-8", "surrogateescape"))
        except Exception:
            _notes.exception("key %s: the code-string mapper %s raised; answered 502", printable(key), self.name)
            return None
        finally:
            elapsed = time.monotonic() - started
            if elapsed > SLOW_CALL_S:
                _notes.warning(
                    "key %s: the code-string mapper %s took %.0f ms, blocking the router",
                    printable(key),
                    self.name,
                    elapsed * 1000,
                )
        if result is None:
            return None
        text = result.decode("utf-8", "surrogateescape") if isinstance(result, bytes) else str(result)
        node = self._node_for(text)
        return None if node is None or node in tried else node

    def _node_for(self, text: str) -> Node | None:
        if text in self._nodes:
            return self._nodes[text]
        address, _, modifier = text.partition(",")
        node: Node | None
        try:
            node = make_node(address.strip(), int(modifier) % 256 if modifier.strip().isdigit() else 0)
        except ValueError as exc:
            _notes.warning("the code-string mapper returned %r, not a usable node: %s", text[:80], exc)
            node = None
        if len(self._nodes) >= MAX_CACHED_NODES:
            self._nodes.clear()
        self._nodes[text] = node
        return node
