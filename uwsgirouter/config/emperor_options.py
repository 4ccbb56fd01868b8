"""uWSGI's Emperor: the master spawns and governs one instance (vassal) per configuration file.

The Emperor side (``--emperor`` and its tuning) and the vassal side (``--heartbeat``); what each does is in
``uwsgirouter.emperor`` and docs/emperor.md.
"""

from __future__ import annotations

from uwsgirouter.address import Address
from uwsgirouter.config.converters import ADDRESS, NON_EMPTY, PATH, POSITIVE, SECONDS, TEXT, integer
from uwsgirouter.config.setting import Flag, Multi, Scalar

MILLISECONDS = integer(0, metavar="MILLISECONDS")


class EmperorOptions:
    GROUP = "Emperor"

    emperor = Multi(
        NON_EMPTY,
        help="Run the Emperor beside the router: one vassal instance per INI file in this directory (DIR/*.ini) "
        "or matching this glob (vassals/*/*.ini); a new file spawns a vassal, a touched one reloads it, a "
        "removed one stops it. Repeatable. Files in uWSGI's other formats (.xml, .yaml, .json) are named in "
        "a warning and not run.",
    )
    emperor_freq = Scalar(POSITIVE, 3, help="Seconds between two scans of the --emperor directories and globs.")
    emperor_throttle = Scalar(
        MILLISECONDS,
        1000,
        help="Throttling step for vassals that die before they announced their loyalty: each further death "
        "waits this much longer before the respawn.",
    )
    emperor_max_throttle = Scalar(
        MILLISECONDS, 180000, help="The longest a bad-behaving vassal's respawn waits (then the wait halves)."
    )
    emperor_no_blacklist = Flag(help="Respawn dead vassals at once, loyal or not (no throttling).")
    emperor_required_heartbeat = Scalar(
        POSITIVE,
        30,
        help="A vassal that sent heartbeats (uWSGI's --heartbeat) and then none for this many seconds is "
        "killed and respawned.",
    )
    emperor_curse_tolerance = Scalar(
        SECONDS, 30, help="Seconds a vassal told to stop may take before it is killed (SIGKILL)."
    )
    emperor_pidfile: Scalar[str | None] = Scalar(PATH, None, help="Write the Emperor's pid (the master's) here.")
    emperor_graceful_shutdown = Flag(
        help="Stop the vassals gracefully on an immediate stop of the master too (SIGINT, SIGQUIT); a graceful "
        "stop (SIGTERM) always stops them gracefully."
    )
    emperor_procname: Scalar[str | None] = Scalar(
        NON_EMPTY, None, help="Accepted: the Emperor runs in the master here, which keeps the master's name."
    )
    binary_path: Scalar[str | None] = Scalar(
        PATH,
        None,
        help="The program vassals run (default: uwsgirouter itself, with the same Python); a real uWSGI binary "
        "works too.",
    )
    vassals_include = Multi(PATH, help="Add --include FILE to every vassal, after its own file. Repeatable.")
    vassals_inherit = Multi(
        PATH, help="Add --inherit FILE to every vassal, after its own file (uWSGI's config template). Repeatable."
    )
    vassals_include_before = Multi(PATH, help="As --vassals-include, read before the vassal's own file.")
    vassals_inherit_before = Multi(PATH, help="As --vassals-inherit, read before the vassal's own file.")
    vassals_set = Multi(
        TEXT, aliases=["vassal-set"], help="Add --set NAME=VALUE to every vassal, before its own file. Repeatable."
    )
    emperor_on_demand_extension: Scalar[str | None] = Scalar(
        NON_EMPTY,
        None,
        aliases=["emperor-on-demand-ext"],
        help="On-demand vassals: the socket named in the file VASSAL+EXT (when there is one) is bound by the "
        "Emperor, and the vassal started at its first connection, which it serves; it gets the socket as stdin.",
    )
    emperor_on_demand_directory: Scalar[str | None] = Scalar(
        PATH,
        None,
        aliases=["emperor-on-demand-dir"],
        help="On-demand vassals, every one, with its UNIX socket in this directory, named after the vassal file "
        "(DIR/NAME.socket for NAME.ini); --emperor-on-demand-extension wins when both are given.",
    )
    emperor_stats: Scalar[Address | None] = Scalar(
        ADDRESS,
        None,
        aliases=["emperor-stats-server"],
        help="Serve uWSGI's Emperor stats document (its vassals, as uwsgitop shows them) on this address: "
        "host:port, a UNIX path or @abstract; --stats-http and --stats-minified apply to it too.",
    )
    heartbeat = Scalar(SECONDS, 0, help="As a vassal: send the Emperor a heartbeat every this many seconds (0: none).")
