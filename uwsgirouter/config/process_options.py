"""Options of the master process and of configuration handling itself."""

from __future__ import annotations

from uwsgirouter.address import Address
from uwsgirouter.config.converters import ADDRESS, KEY_VALUE, NON_EMPTY, OCTAL_MODE, PATH, SECONDS, TEXT
from uwsgirouter.config.setting import Flag, Multi, Scalar


class ProcessOptions:
    GROUP = "Master and processes"

    master = Flag(short="M", help="Run a master that supervises and respawns the processes.")
    reload_mercy = Scalar(SECONDS, 60, help="Seconds the master waits for processes to end on reload or stop.")
    worker_reload_mercy = Scalar(
        SECONDS, 60, help="Seconds one worker may take to finish its requests on reload or stop."
    )
    die_on_term = Flag(
        help="Accepted for compatibility: SIGTERM always stops gracefully in uwsgirouter (uWSGI 2.0 reloads)."
    )
    exit_on_reload = Flag(
        help="Stop (gracefully, exit 0) whenever a reload is asked for: SIGHUP, --reload, the fifo's r/R, "
        "--touch-reload."
    )
    umask: Scalar[int | None] = Scalar(
        OCTAL_MODE, None, help="Set the umask (octal, such as 022) at start, before any file or socket is created."
    )
    thunder_lock = Flag(
        help="Accepted, no effect: uwsgirouter's workers accept without blocking in their event loops, so a "
        "wake-up with no connection costs one failed accept() and there is nothing to serialize."
    )
    pidfile: Scalar[str | None] = Scalar(PATH, None, help="Write the master's pid to this file.")
    pidfile2: Scalar[str | None] = Scalar(
        PATH, None, help="Write the master's pid to this file after dropping privileges."
    )
    daemonize: Scalar[str | None] = Scalar(PATH, None, short="d", help="Detach from the terminal and log to this file.")
    logto: Scalar[str | None] = Scalar(PATH, None, help="Log to this file instead of stderr.")
    uid: Scalar[str | None] = Scalar(NON_EMPTY, None, help="Drop privileges to this user.")
    gid: Scalar[str | None] = Scalar(NON_EMPTY, None, help="Drop privileges to this group.")
    chdir: Scalar[str | None] = Scalar(PATH, None, help="Change to this directory at start.")
    vacuum = Flag(
        help="Remove the master fifos this master created at exit (UNIX sockets and pidfiles are always removed "
        "when they are still ours)."
    )
    reload: Scalar[str | None] = Scalar(
        PATH, None, help="Gracefully reload the instance whose pid is in this file, then exit."
    )
    stop: Scalar[str | None] = Scalar(
        PATH, None, help="Stop the instance whose pid is in this file (SIGINT), then exit."
    )
    master_fifo = Multi(
        PATH,
        help="Control the master through this fifo: echo r > PATH (uWSGI's one-letter commands, see "
        "docs/signals.md). Repeatable: 0-9 switch to another one.",
    )
    touch_reload = Multi(PATH, help="Reload gracefully when this file is touched (or appears or goes). Repeatable.")
    touch_logreopen = Multi(PATH, help="Reopen the log files when this file is touched. Repeatable.")
    auto_procname = Flag(help="Name processes 'uwsgirouter master', 'uwsgirouter fastrouter 1', ...")
    procname_prefix = Scalar(TEXT, "", help="Prefix for every process name.")
    procname_prefix_spaced = Scalar(TEXT, "", help="Prefix for every process name, then a space.")
    procname_append = Scalar(TEXT, "", help="Suffix for every process name.")
    procname: Scalar[str | None] = Scalar(NON_EMPTY, None, help="Name of every process.")
    procname_master: Scalar[str | None] = Scalar(NON_EMPTY, None, help="Name of the master process.")
    stats: Scalar[Address | None] = Scalar(
        ADDRESS,
        None,
        aliases=["stats-server"],
        help="Serve the master's statistics (uWSGI's JSON document, for uwsgitop) on this address: host:port, a "
        "UNIX path or @abstract.",
    )
    stats_http = Flag(
        help="Speak HTTP on the stats servers (--stats, --fastrouter-stats): GET /metrics answers in the "
        "Prometheus text format, any other path the JSON."
    )
    stats_minified = Flag(aliases=["stats-min"], help="Write the stats JSON without indentation or newlines.")


class ConfigOptions:
    GROUP = "Configuration"

    ini = Multi(
        PATH,
        help="Read options from the [uwsgi] section of an INI file (file.ini:section for another), in place.",
    )
    set = Multi(KEY_VALUE, short="S", help="Set an option or a placeholder: NAME=VALUE, usable as %(NAME).")
    strict = Flag(help="Refuse unknown keys in INI files and the environment instead of keeping them as placeholders.")
    get = Multi(NON_EMPTY, help="Print the first value of this option and exit. Repeatable.")
    show_config = Flag(help="Print the configuration as an INI [uwsgi] section, then go on.")
    dry_run = Flag(help="Check the whole configuration and exit: nothing printed and exit 0 when it is valid.")
    help = Flag(short="h", aliases=["usage"], help="Show this help and exit.")
    version = Flag(help="Print the version and exit.")
