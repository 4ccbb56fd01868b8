"""Start what the configuration asks for: signal another instance, or run this one."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence

from uwsgirouter.config import Config
from uwsgirouter.logs import start_logging
from uwsgirouter.master import run_master
from uwsgirouter.proc import daemonize, signal_pidfile


def run(config: Config, argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> int:
    if config.reload:
        signal_pidfile(config.reload, signal.SIGHUP)
        return 0
    if config.stop:
        signal_pidfile(config.stop, signal.SIGINT)
        return 0
    if config.umask is not None:
        os.umask(config.umask)  # before the log files, sockets, pidfiles and fifos are created (uWSGI: at once)
    if config.daemonize:
        daemonize(config.daemonize)
    start_logging(config)
    return run_master(config, argv, environ)
