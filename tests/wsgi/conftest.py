"""Loading apps changes process-wide state (sys.path, sys.modules, os.environ); undo it after each test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.wsgi.forked import WorkerFactory, worker_factory


@pytest.fixture
def clean_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    path = list(sys.path)
    modules = set(sys.modules)
    uwsgi = sys.modules.get("uwsgi")
    for name in list(os.environ):
        if name.startswith("UWSGI_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(os, "environ", os.environ.copy())  # --env writes go to a throwaway copy
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]
        if uwsgi is not None:
            sys.modules["uwsgi"] = uwsgi


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Fork ``WsgiWorker`` children on real sockets; every child is killed and reaped at teardown."""
    yield from worker_factory(tmp_path)
