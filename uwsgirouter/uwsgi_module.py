"""The importable ``uwsgi`` module that apps written for uWSGI expect (``import uwsgi``).

uWSGI builds this module in C; we build a plain module object and put it into ``sys.modules``. The
values copy what uWSGI 2.0.31 gives a Python 3 app (checked against the real binary):

* ``opt``: option name -> value as bytes; a bare command-line flag is ``True``; a repeated option keeps
  only its *last* value (uWSGI 2.0 means to build lists, but on Python 3 its duplicate check compares a
  bytes key with str keys and never matches);
* ``version`` ``b"2.0.31"``, ``version_info`` ``(2, 0, 31, 0, b"")``: apps that check the version keep
  working; ``uwsgirouter_version`` tells ours;
* ``worker_id()`` is 0 in the master and 1..N in workers; ``numproc`` is the number of workers.

The module object is created once and updated in place, so an app that imported it in the master
still sees the right ``worker_id()`` after the fork. Other parts add functions with ``register``.

The cache API (``cache_get`` ... ``cache_keys``) always exists, as in uWSGI; ``install_cache`` binds
it to the instance's caches (until then every call finds no cache). Its return conventions are
uWSGI 2.0.31's (``plugins/python/uwsgi_pymodule.c``, checked against the binary): True or None, never
False; ``cache_get`` bytes or None; ``cache_num`` 0 for a missing or non-numeric item; ``cache_keys`` a
list of bytes, ValueError when there is no such local cache. Keys and values are ``str`` (UTF-8) or
``bytes``; ``expires`` and ``n`` are integers; the cache is named by a ``str`` (None or "" is the
default); positional arguments only. A remote cache (``name@host:port``) is not supported: the call
returns None (``cache_num`` 0) and the first use of each such name is logged.
"""

from __future__ import annotations

import logging
import operator
import os
import socket
import sys
import time
import types
from collections.abc import Iterable
from typing import Any

from uwsgirouter import __version__
from uwsgirouter.cache import INT64_MAX, INT64_MIN, Cache
from uwsgirouter.cache_config import CacheSet
from uwsgirouter.config import Config, Entry

__all__ = [
    "MODULE_NAME",
    "UWSGI_VERSION",
    "build_opt",
    "cache_functions",
    "install",
    "install_cache",
    "installed",
    "register",
    "set_worker_id",
]

MODULE_NAME = "uwsgi"
UWSGI_VERSION = b"2.0.31"
UWSGI_VERSION_INFO = (2, 0, 31, 0, b"")

#: Functions and values other parts of uwsgirouter add (cache_get, cache_set, ...); applied on install.
_registered: dict[str, Any] = {}
_state: dict[str, int] = {"worker_id": 0, "masterpid": 0}


def _worker_id() -> int:
    """uwsgi.worker_id(): 0 in the master, 1..N in app workers."""
    return _state["worker_id"]


def _masterpid() -> int:
    """uwsgi.masterpid(): the pid of the master process."""
    return _state["masterpid"]


def build_opt(entries: Iterable[Entry]) -> dict[str, bytes | bool]:
    """``uwsgi.opt`` from config entries, as uWSGI 2.0.31 builds it on Python 3.

    Every entry counts, placeholders included (apps read their own keys from ``uwsgi.opt``).
    """
    opt: dict[str, bytes | bool] = {}
    for entry in entries:
        value = entry.value
        opt[entry.key] = True if value is None else value.encode("utf-8", "surrogateescape")
    return opt


def _module() -> types.ModuleType:
    """Our module in ``sys.modules``, created on first use (updated in place afterwards)."""
    module = sys.modules.get(MODULE_NAME)
    if module is None or not getattr(module, "__uwsgirouter__", False):
        module = types.ModuleType(MODULE_NAME, "uWSGI API emulated by uwsgirouter.")
        module.__uwsgirouter__ = True  # type: ignore[attr-defined]
        sys.modules[MODULE_NAME] = module
    return module


def install(
    config: Config, worker_id: int = 0, numproc: int | None = None, masterpid: int | None = None
) -> types.ModuleType:
    """Install (or update) ``sys.modules["uwsgi"]`` for this process and return it.

    ``config`` is a ``Config`` (``entries``, ``processes``, ``buffer_size`` are read); ``numproc``
    defaults to ``config.processes``; ``masterpid`` to this pid in the master (``worker_id`` 0) and
    the parent pid in a worker.
    """
    module = _module()
    _state["worker_id"] = worker_id
    if masterpid is None:
        masterpid = os.getpid() if worker_id == 0 else os.getppid()
    _state["masterpid"] = masterpid
    hostname = socket.gethostname().encode("utf-8", "surrogateescape")
    values: dict[str, Any] = {
        "opt": build_opt(config.entries),
        "numproc": config.processes if numproc is None else numproc,
        "version": UWSGI_VERSION,
        "version_info": UWSGI_VERSION_INFO,
        "uwsgirouter_version": __version__,
        "hostname": hostname,
        "buffer_size": config.buffer_size,
        "cores": 1,
        "started_on": int(time.time()),
        "worker_id": _worker_id,
        "masterpid": _masterpid,
    }
    if getattr(module, "started_on", None) is not None:
        values["started_on"] = module.started_on  # keep the master's start time across forks
    for name, value in values.items():
        setattr(module, name, value)
    for name, value in _registered.items():
        setattr(module, name, value)
    return module


def set_worker_id(worker_id: int) -> None:
    """Called by a freshly forked app worker; ``masterpid()`` becomes the parent pid."""
    _state["worker_id"] = worker_id
    if worker_id:
        _state["masterpid"] = os.getppid()


def register(name: str, value: Any) -> None:
    """Add ``uwsgi.<name>`` (e.g. ``cache_get``); applied now if installed, and by every later install."""
    _registered[name] = value
    module = sys.modules.get(MODULE_NAME)
    if module is not None and getattr(module, "__uwsgirouter__", False):
        setattr(module, name, value)


def installed() -> bool:
    """Whether ``sys.modules["uwsgi"]`` is ours."""
    module = sys.modules.get(MODULE_NAME)
    return module is not None and bool(getattr(module, "__uwsgirouter__", False))


# == cache API ===========================================================================================

_cache_log = logging.getLogger("uwsgirouter.cache")
#: Remote cache names already logged (bounded: a program looping over new names cannot grow it).
_remote_logged: set[str] = set()
_MAX_REMOTE_LOGGED = 256
#: "No cache argument": the default cache (an explicit None is a TypeError, as in uWSGI).
_DEFAULT_CACHE: Any = object()


def _data_arg(function: str, position: int, value: object) -> bytes:
    """A key or value: ``str`` is UTF-8 encoded (strictly, as uWSGI's ``s#``), ``bytes`` taken as is."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{function}() argument {position} must be str or bytes, not {type(value).__name__}")


def _int_arg(value: object) -> int:
    """An integer argument as uWSGI's ``l``: int-like only (no float, no None), within a C long."""
    number = operator.index(value)  # type: ignore[arg-type]
    if not INT64_MIN <= number <= INT64_MAX:
        raise OverflowError("Python int too large to convert to C long")
    return number


def _name_arg(function: str, position: int, value: object) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"{function}() argument {position} must be str, not {type(value).__name__}")


def cache_functions(caches: CacheSet | None) -> dict[str, Any]:
    """The ``uwsgi.cache_*`` functions, bound to ``caches`` (None: the instance has no cache)."""

    def lookup(function: str, position: int, name: object) -> Cache | None:
        if name is _DEFAULT_CACHE:
            return caches.default if caches else None
        text = _name_arg(function, position, name)
        if "@" in text:
            if text not in _remote_logged and len(_remote_logged) < _MAX_REMOTE_LOGGED:
                _remote_logged.add(text)
                _cache_log.warning("uwsgi.%s: remote cache %r is not supported by uwsgirouter", function, text)
            return None
        return caches.get_cache(text) if caches else None

    def result(ok: bool) -> bool | None:
        return True if ok else None

    def cache_get(key: object, cache: object = _DEFAULT_CACHE, /) -> bytes | None:
        data = _data_arg("cache_get", 1, key)
        found = lookup("cache_get", 2, cache)
        return found.get(data) if found else None

    def cache_exists(key: object, cache: object = _DEFAULT_CACHE, /) -> bool | None:
        data = _data_arg("cache_exists", 1, key)
        found = lookup("cache_exists", 2, cache)
        return result(found is not None and found.exists(data))

    def cache_set(key: object, value: object, expires: object = 0, cache: object = _DEFAULT_CACHE, /) -> bool | None:
        data, payload, seconds = _data_arg("cache_set", 1, key), _data_arg("cache_set", 2, value), _int_arg(expires)
        found = lookup("cache_set", 4, cache)
        return result(found is not None and found.set(data, payload, seconds))

    def cache_update(key: object, value: object, expires: object = 0, cache: object = _DEFAULT_CACHE, /) -> bool | None:
        data, payload = _data_arg("cache_update", 1, key), _data_arg("cache_update", 2, value)
        seconds = _int_arg(expires)
        found = lookup("cache_update", 4, cache)
        return result(found is not None and found.update(data, payload, seconds))

    def cache_del(key: object, cache: object = _DEFAULT_CACHE, /) -> bool | None:
        data = _data_arg("cache_del", 1, key)
        found = lookup("cache_del", 2, cache)
        return result(found is not None and found.delete(data))

    def cache_clear(cache: object = _DEFAULT_CACHE, /) -> bool | None:
        found = lookup("cache_clear", 1, cache)
        return result(found is not None and found.clear())

    def cache_keys(cache: object = _DEFAULT_CACHE, /) -> list[bytes]:
        found = lookup("cache_keys", 1, cache)
        if found is None:
            raise ValueError("no local uWSGI cache available")
        return found.keys()

    def cache_num(key: object, cache: object = _DEFAULT_CACHE, /) -> int:
        data = _data_arg("cache_num", 1, key)
        found = lookup("cache_num", 2, cache)
        number = found.num(data) if found else None
        return 0 if number is None else number

    def math(op: str, default: int) -> Any:
        function = f"cache_{op}"

        def cache_math(
            key: object, n: object = default, expires: object = 0, cache: object = _DEFAULT_CACHE, /
        ) -> bool | None:
            data, delta, seconds = _data_arg(function, 1, key), _int_arg(n), _int_arg(expires)
            found = lookup(function, 4, cache)
            return result(found is not None and getattr(found, op)(data, delta, seconds))

        cache_math.__name__ = function
        return cache_math

    functions: dict[str, Any] = {
        "cache_get": cache_get,
        "cache_set": cache_set,
        "cache_update": cache_update,
        "cache_del": cache_del,
        "cache_exists": cache_exists,
        "cache_clear": cache_clear,
        "cache_keys": cache_keys,
        "cache_num": cache_num,
        "cache_inc": math("inc", 1),
        "cache_dec": math("dec", 1),
        "cache_mul": math("mul", 2),
        "cache_div": math("div", 2),
    }
    for name, function in functions.items():
        function.__qualname__ = name  # error messages read "cache_get() takes ...", as uWSGI's
    return functions


def install_cache(cache_set: CacheSet | None) -> None:
    """Bind ``uwsgi.cache_*`` to ``cache_set`` (call in the master, before the fork); None: no caches."""
    for name, function in cache_functions(cache_set).items():
        register(name, function)


# The functions exist even without caches (uWSGI defines them unconditionally).
install_cache(None)
