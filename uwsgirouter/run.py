"""Start what the configuration asks for."""

from __future__ import annotations

from uwsgirouter.config import Config
from uwsgirouter.errors import HaltServer


def run(config: Config) -> int:
    raise HaltServer("serving is not implemented yet in this version; use --dry-run to check a configuration", 1)
