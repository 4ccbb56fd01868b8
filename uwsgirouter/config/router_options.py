"""Options of the router itself: where it listens and how it maps a key to a node."""

from __future__ import annotations

from uwsgirouter.address import Address
from uwsgirouter.config.converters import (
    ADDRESS,
    BYTES,
    CODE_STRING,
    COUNT,
    NODE_ADDRESS,
    NON_EMPTY,
    PATH,
    POSITIVE,
    SECONDS,
    TEXT,
    integer,
)
from uwsgirouter.config.setting import Arg, Flag, Multi, Scalar


class RouterOptions:
    GROUP = "Router"

    fastrouter = Multi(
        ADDRESS,
        help="Bind the router to ADDR. Repeat it to listen on several addresses: TCP host:port, a UNIX path, "
        "@abstract, or =N for the N-th shared socket.",
    )
    fastrouter_processes = Scalar(
        POSITIVE, 1, aliases=["fastrouter-workers"], help="Number of router processes sharing the listening sockets."
    )
    fastrouter_events = Scalar(
        COUNT,
        0,
        help="Most sessions one router process serves at once (0: as many as the open-file limit allows, which "
        "the router raises to its hard limit); at the limit it stops accepting until one ends. In uWSGI this is "
        "the events per epoll wait, default 64.",
    )
    fastrouter_timeout = Scalar(
        integer(1, metavar="SECONDS"),
        60,
        help="Seconds of inactivity on either peer after which a session ends (504 if nothing was answered yet).",
    )
    fastrouter_buffer_size = Scalar(
        integer(512, 16 * 1024 * 1024, "BYTES"),
        4096,
        help="Bytes one side of a session may hold unsent before the other side is no longer read (the "
        "backpressure mark; relaying itself reads 64 KiB at a time). Above 64 KiB long uploads are copied "
        "through the router instead of spliced, to buffer that much.",
    )
    fastrouter_use_base: Scalar[str | None] = Scalar(
        PATH,
        None,
        help="Route to the UNIX socket named like the key in this directory (DIR + key; give DIR a trailing /). "
        "Keys with '/', '\\', NUL, '.' or '..', or over 255 bytes are refused with a 502.",
    )
    fastrouter_use_pattern: Scalar[str | None] = Scalar(
        NON_EMPTY,
        None,
        help="Route to this pattern with every %s replaced by the key (in INI files write %%s). "
        "Unsafe keys are refused as with --fastrouter-use-base.",
    )
    fastrouter_use_cache: Scalar[str | None] = Scalar(
        TEXT,
        None,
        arg=Arg.OPTIONAL,
        implicit="",
        help="Route by looking the key up in a cache (the first one, or --fastrouter-use-cache=NAME); the value is "
        "addr[,modifier1], several nodes separated by |.",
    )
    fastrouter_use_code_string: Scalar[tuple[int, str, str] | None] = Scalar(
        CODE_STRING,
        None,
        help="Route by calling FUNCTION(key) from FILE (0 = Python); it returns 'addr[,modifier1]' or None.",
    )
    fastrouter_use_socket: Scalar[int | None] = Scalar(
        COUNT,
        None,
        arg=Arg.OPTIONAL,
        implicit="0",
        help="Forward every request to this instance's N-th --socket (default 0).",
    )
    fastrouter_to = Multi(
        NODE_ADDRESS,
        help="Forward every request to this node. Repeat it to balance round robin; dead nodes are skipped for "
        "--fastrouter-gracetime seconds.",
    )
    fastrouter_gracetime = Scalar(
        SECONDS, 30, help="Seconds a static node that refused a connection is skipped before it is tried again."
    )
    fastrouter_fallback = Multi(
        NODE_ADDRESS, help="Node to try, in order, when connecting to the chosen node fails. Repeatable."
    )
    fastrouter_fallback_on_no_key = Flag(help="Use the fallback nodes also when the key maps to no node.")
    fastrouter_max_retries = Scalar(
        COUNT, 3, help="Connect attempts after the first one fails, each to the next node (uWSGI 2.1 option)."
    )
    fastrouter_force_key: Scalar[str | None] = Scalar(
        NON_EMPTY, None, help="Route every request by this key instead of the request's (uWSGI 2.1 option)."
    )
    fastrouter_quiet = Flag(
        arg=Arg.REQUIRED,
        help="Do not log failed connections to nodes. As in uWSGI it takes a value: --fastrouter-quiet=1.",
    )
    fastrouter_cheap = Flag(
        help="Cheap mode: accept no connection while no node is live (local workers on a shared socket answer).",
    )
    fastrouter_subscription_server = Multi(
        ADDRESS,
        help="Run a subscription server on this UDP host:port (or UNIX datagram path) where instances announce "
        "themselves. Repeatable.",
    )
    fastrouter_subscription_fallback_key: Scalar[str | None] = Scalar(
        NON_EMPTY, None, help="Subscription key to use when the request's key has no node."
    )
    fastrouter_subscription_slot: Scalar[str | None] = Scalar(
        TEXT, None, help="Deprecated in uWSGI and ignored: the node table has no fixed slots."
    )
    fastrouter_post_buffering = Scalar(
        BYTES,
        0,
        help="Read the whole request body before connecting to the node: up to N bytes in memory, beyond in a "
        "temporary file. 0 streams the body (default).",
    )
    fastrouter_post_buffering_dir: Scalar[str | None] = Scalar(
        PATH, None, help="Directory for post-buffering temporary files (default $TMPDIR or /tmp)."
    )
    fastrouter_stats: Scalar[Address | None] = Scalar(
        ADDRESS,
        None,
        aliases=["fastrouter-stats-server", "fastrouter-ss"],
        help="Serve the router's statistics as JSON on this address.",
    )
    fastrouter_harakiri = Scalar(
        SECONDS, 0, help="Kill and respawn a router process stuck for this many seconds (0 = never)."
    )
    fastrouter_uid: Scalar[str | None] = Scalar(
        NON_EMPTY, None, help="Drop the router processes' privileges to this user."
    )
    fastrouter_gid: Scalar[str | None] = Scalar(
        NON_EMPTY, None, help="Drop the router processes' privileges to this group."
    )
    fastrouter_resubscribe = Multi(
        ADDRESS, help="Forward every subscription received to this subscription server. Repeatable."
    )
    fastrouter_resubscribe_bind: Scalar[Address | None] = Scalar(
        ADDRESS, None, help="Send forwarded subscriptions from this local address."
    )
    fastrouter_zerg: Scalar[str | None] = Scalar(
        NON_EMPTY, None, planned=True, help="Take listening sockets from a uWSGI zerg server."
    )
    no_fd_passing = Flag(
        help="Accepted for compatibility and has no effect: uwsgirouter, like uWSGI 2.0, never passes descriptors."
    )
