"""uWSGI's hooks (``--hook-as-gateway chmod:/run/sub 666``): small actions at fixed points of the start.

What the actions do and where each phase runs is in ``uwsgirouter.hooks``.
"""

from __future__ import annotations

from uwsgirouter.config.converters import Converter
from uwsgirouter.config.setting import Multi
from uwsgirouter.hooks import Hook, parse_hook

HOOK: Converter[Hook] = Converter(
    "ACTION:ARGUMENTS, ACTION one of uWSGI's hook actions that uwsgirouter runs (see --hook-as-root)",
    parse_hook,
    "ACTION:ARGS",
)

_EACH = " Repeatable; run in order; a hook that fails stops the instance, as in uWSGI."


class HookOptions:
    GROUP = "Hooks"

    hook_as_root = Multi(
        HOOK,
        help="Run this hook in the master before --uid/--gid drop privileges (sockets are bound by then); only "
        "when started as root, as in uWSGI." + _EACH + " The actions (uWSGI 2.0.31's, for every --hook-*): "
        "cd/chdir DIR, mkdir DIR, putenv NAME=VALUE, chmod FILE MODE, chown FILE USER GROUP, chown2 FILE UID GID, "
        "sticky FILE, exec COMMAND (/bin/sh -c; fails on a non-zero status), safeexec COMMAND (never fails), "
        "create/creat FILE, write FILE TEXT, writen FILE TEXT (with a newline), append FILE TEXT, appendn FILE "
        "[TEXT], writefifo FIFO TEXT, unlink FILE, print/log TEXT. !ACTION:... keeps the arguments out of the log.",
    )
    hook_as_user = Multi(
        HOOK,
        help="Run this hook in the master right after --uid/--gid dropped privileges; only when started as "
        "root, as in uWSGI." + _EACH,
    )
    hook_pre_app = Multi(
        HOOK,
        help="Run this hook in the master once, after the privileges are dropped and before any app worker "
        "loads its app." + _EACH,
    )
    hook_master_start = Multi(
        HOOK, help="Run this hook in the master once its first workers are forked, before its loop." + _EACH
    )
    hook_as_gateway = Multi(
        HOOK,
        help="Run this hook in each router process at each start, before --fastrouter-uid/--fastrouter-gid "
        "drop its privileges (chmod:SUBSCRIPTION_SOCKET 666 lets unprivileged instances subscribe)." + _EACH,
    )
