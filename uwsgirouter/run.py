"""Start what the configuration asks for."""

from __future__ import annotations

from uwsgirouter.config import Config
from uwsgirouter.logs import setup_logging
from uwsgirouter.master import run_master


def run(config: Config) -> int:
    setup_logging(config.logto)
    return run_master(config)
