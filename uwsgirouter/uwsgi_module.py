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
still sees the right ``worker_id()`` after the fork. Other parts (the cache API) add functions with
``register``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import types
from collections.abc import Iterable
from typing import Any

from uwsgirouter import __version__
from uwsgirouter.config import Config, Entry

__all__ = ["MODULE_NAME", "UWSGI_VERSION", "build_opt", "install", "installed", "register", "set_worker_id"]

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
