"""Options of the sockets the master creates and of the WSGI app served by local workers."""

from __future__ import annotations

from uwsgirouter.config.converters import (
    ADDRESS,
    COUNT,
    KEY_VALUE,
    NON_EMPTY,
    OCTAL_MODE,
    PATH,
    POSITIVE,
    SECONDS,
    integer,
)
from uwsgirouter.config.setting import Arg, Flag, Multi, Scalar


class SocketOptions:
    GROUP = "Sockets"

    shared_socket = Multi(
        ADDRESS,
        help="Create a socket in the master before anything else; use it as =N (0-based) in --socket, "
        "--fastrouter and --subscribe-to. Repeatable.",
    )
    undeferred_shared_socket = Multi(
        ADDRESS, help="Like --shared-socket, without TCP deferred accept; counts in the same =N list."
    )
    socket = Multi(
        ADDRESS,
        short="s",
        aliases=["uwsgi-socket"],
        help="Serve the WSGI app over the uwsgi protocol on this address (port 0 picks a free port). Repeatable.",
    )
    chmod_socket: Scalar[int | None] = Scalar(
        OCTAL_MODE,
        None,
        short="C",
        aliases=["chmod"],
        arg=Arg.OPTIONAL,
        implicit="666",
        help="Mode of every UNIX socket the master creates (--chmod-socket alone means 666).",
    )
    chown_socket: Scalar[str | None] = Scalar(
        NON_EMPTY,
        None,
        help="Owner of the UNIX sockets created: USER or USER:GROUP (names or numbers).",
    )
    listen = Scalar(POSITIVE, 100, short="l", help="Listen queue (backlog) of every socket created.")
    socket_timeout = Scalar(
        SECONDS, 4, short="z", help="Seconds a TCP client may connect without sending data before it is accepted."
    )
    no_defer_accept = Flag(help="Do not use TCP deferred accept on listening sockets.")
    skip_zero = Flag(
        help="Do not take a listening socket found on file descriptor 0 (stdin) as one more uwsgi socket, as "
        "an on-demand vassal's Emperor or an inetd-style launcher hands it over."
    )


class AppOptions:
    GROUP = "WSGI app"

    wsgi_file: Scalar[str | None] = Scalar(
        PATH,
        None,
        aliases=["file"],
        help="Load the WSGI app from this file; without --socket the file is only run in the master "
        "(for example to fill a cache).",
    )
    module: Scalar[str | None] = Scalar(
        NON_EMPTY, None, short="w", aliases=["wsgi"], help="Load the WSGI app from module[:callable]."
    )
    callable = Scalar(NON_EMPTY, "application", help="Name of the WSGI callable in the file or module.")
    env = Multi(KEY_VALUE, help="Set NAME=VALUE in the environment before the app loads. Repeatable.")
    buffer_size = Scalar(
        integer(1, 65535, "BYTES"),
        4096,
        short="b",
        help="Largest request header (vars block) an app worker accepts.",
    )
    max_vars = Scalar(POSITIVE, 64, short="v", help="Most request vars an app worker accepts, halved.")
    processes = Scalar(POSITIVE, 1, short="p", aliases=["workers"], help="Number of app workers.")
    cheap = Flag(
        help="Start without app workers: the master spawns them at the first connection to an app socket "
        "(uWSGI's cheap mode; the master fifo's C returns to it). Router workers always run."
    )
    harakiri = Scalar(SECONDS, 0, short="t", help="Kill and respawn an app worker stuck on one request this long.")
    need_app = Flag(arg=Arg.OPTIONAL, help="Exit if the app cannot be loaded.")
    enable_threads = Flag(
        short="T", help="Accepted for compatibility: threads the app starts always run (uWSGI needs this flag)."
    )
    threads = Scalar(
        POSITIVE,
        1,
        help="Threads in each app worker, each serving one request at a time (the app must be thread-safe).",
    )
    max_requests = Scalar(
        COUNT,
        0,
        short="R",
        help="Recycle an app worker after it served this many requests: it finishes them, exits and is replaced.",
    )
    max_requests_delta = Scalar(COUNT, 0, help="Add (worker id - 1) times this to --max-requests of each worker.")
    min_worker_lifetime = Scalar(
        SECONDS, 10, help="Seconds an app worker runs before --max-requests or --reload-on-rss may recycle it."
    )
    reload_on_rss = Scalar(
        integer(0, metavar="MB"),
        0,
        help="Recycle an app worker whose resident memory reached this many megabytes after a request.",
    )
    virtualenv: Scalar[str | None] = Scalar(
        PATH,
        None,
        short="H",
        aliases=["home", "venv", "pyhome"],
        help="Virtualenv of the app: its site-packages (and their .pth files) go first on sys.path.",
    )
    pythonpath = Multi(
        PATH,
        aliases=["python-path", "pp"],
        help="Put this directory (or each match of this glob) first on sys.path before the app loads. Repeatable.",
    )
    disable_logging = Flag(short="L", help="Do not log each request served by app workers.")
