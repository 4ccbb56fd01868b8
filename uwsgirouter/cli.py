"""The ``uwsgirouter`` command: load the configuration as uWSGI would, then run.

A user's mistake ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from uwsgirouter import __version__, build_kind
from uwsgirouter.config import Config, format_help, format_show_config, load_config
from uwsgirouter.config.checks import check_config
from uwsgirouter.config.preflight import check_environment
from uwsgirouter.errors import ConfigError, HaltServer

EXIT_USAGE = 2


def _print_values(config: Config) -> None:
    """``--get``: the first value of each option; nothing for one not given or a bare flag (as uWSGI)."""
    for name in config.get:
        value = config.first(name)
        if value is not None:
            print(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args, os.environ)
        if config.help:
            sys.stdout.write(format_help())
            return 0
        if config.version:
            print(f"uwsgirouter {__version__} ({build_kind()})")
            return 0
        if config.get:
            _print_values(config)
            return 0
        if config.show_config:
            sys.stdout.write(format_show_config(config.entries))
            sys.stdout.flush()
        check_config(config)
        if not (config.stop or config.reload):
            check_environment(config)
        if config.dry_run:
            return 0
        from uwsgirouter.run import run

        return run(config, args, dict(os.environ))
    except ConfigError as exc:
        print(f"uwsgirouter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HaltServer as exc:
        print(f"uwsgirouter: {exc.reason}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
