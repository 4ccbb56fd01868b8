"""Options of the log: where it goes, its date, its rotation, and which request lines it holds.

``--logto`` and ``--daemonize`` (the file it logs to) are with the master's options; what the log file is
and how every process follows it is in ``uwsgirouter.logs``.
"""

from __future__ import annotations

from uwsgirouter.config.converters import BYTES, FALSE_WORDS, PATH, Converter, integer
from uwsgirouter.config.setting import Arg, Flag, Scalar

#: ``--logdate`` with one of these (or alone) means uWSGI's default date, not a strftime format
_DEFAULT_DATE_WORDS = frozenset({"true", "1", "on", "yes"})
#: what ctime() writes, which uWSGI puts before each line for --logdate without a format
CTIME_FORMAT = "%a %b %e %H:%M:%S %Y"


def _log_date(raw: str) -> str | None:
    """``true`` (or the option alone) is uWSGI's ctime() date; ``false`` turns it off; anything else is a
    strftime format."""
    word = raw.strip().lower()
    if word in _DEFAULT_DATE_WORDS:
        return CTIME_FORMAT
    if word in FALSE_WORDS:
        return None
    return raw


LOG_DATE: Converter[str | None] = Converter("true, false or a strftime format", _log_date, "FORMAT")


class LogOptions:
    GROUP = "Logging"

    logto2: Scalar[str | None] = Scalar(
        PATH,
        None,
        help="Log to this file from the moment privileges are dropped: it is opened (or created) as the --uid "
        "user, and replaces --logto and --daemonize's file from then on.",
    )
    logdate: Scalar[str | None] = Scalar(
        LOG_DATE,
        None,
        aliases=["log-date"],
        arg=Arg.OPTIONAL,
        implicit="true",
        help="Start every log line with the date and ' - ': uWSGI's 'Sun Nov 29 15:27:35 2026' alone, or "
        "--logdate=FORMAT (strftime, such as %Y-%m-%d %H:%M:%S; in INI files %% for %). Without it lines start "
        "with YYYY-MM-DD HH:MM:SS.",
    )
    log_reopen = Flag(
        help="Reopen the log file on reload. Accepted: uwsgirouter always does, and every process also follows "
        "the file by name (a renamed log file is replaced at the next line)."
    )
    log_maxsize = Scalar(
        BYTES,
        0,
        help="Rotate the log file when it grows past this many bytes (checked by the master once a second): it "
        "is renamed to --log-backupname, or to FILE.UNIXTIME, and a new FILE is started; every process "
        "follows. 0: never.",
    )
    log_backupname: Scalar[str | None] = Scalar(
        PATH,
        None,
        help="Name the log file takes when --log-maxsize rotates it (each rotation replaces the previous "
        "backup, as in uWSGI).",
    )
    logfile_chown = Flag(
        help="Give the log file to --uid/--gid before privileges are dropped (only when started as root, as "
        "uWSGI), so that the instance can rotate and reopen it."
    )
    log_master = Flag(
        help="Accepted for compatibility: every uwsgirouter process writes the log file itself and follows it "
        "by name, so rotation works without a logging master."
    )
    log_4xx = Flag(help="Log the request lines of 4xx responses even with --disable-logging.")
    log_5xx = Flag(help="Log the request lines of 5xx responses even with --disable-logging.")
    log_slow = Scalar(
        integer(0, metavar="MSECS"),
        0,
        help="Log the request lines of requests that took at least this many milliseconds, even with "
        "--disable-logging. 0: off.",
    )
