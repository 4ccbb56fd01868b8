"""Configuration tests never see the developer's own ``UWSGI_*`` variables."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_uwsgi_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("UWSGI_"):
            monkeypatch.delenv(name)
