"""uWSGI's hooks: ``--hook-PHASE ACTION:ARGUMENTS`` runs a small action at a fixed point of the start.

Real configurations use them for chores around the start, such as ``hook-as-gateway = chmod:SOCKET 666`` so
that unprivileged instances may announce to a router's UNIX subscription socket. The actions and their
argument syntax are uWSGI 2.0.31's (core/hooks.c); a ``!`` before the action makes the hook private (its
arguments never reach the log). Every hook is fatal there: one that fails stops the instance; so it does here.

The phases and where they run (uWSGI's points, see docs/options.md):

- ``as-root``: in the master, sockets bound, before ``--uid``/``--gid`` drop privileges; only when started as
  root, as in uWSGI (otherwise the option does nothing, which the master says once).
- ``as-user``: in the master right after the drop, on the same condition.
- ``pre-app``: in the master once, after the drop and before any app worker loads its app (uWSGI without
  ``lazy-apps`` runs it once in the master before loading the apps).
- ``master-start``: in the master once the first workers are forked, before its loop.
- ``as-gateway``: in each router process, at each (re)spawn, before ``--fastrouter-uid``/``--fastrouter-gid``
  drop its privileges.

Nothing here is imported lazily: hooks run after the privileges are dropped (see ``uwsgirouter.preload``).
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import re
import signal
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("uwsgirouter.hooks")

#: The phase names uWSGI writes in its ``running "..." (PHASE)...`` lines, by option suffix.
PHASES = {
    "as-root": "as root",
    "as-user": "as user",
    "pre-app": "pre app",
    "master-start": "master-start",
    "as-gateway": "as-gateway",
}

#: uWSGI 2.0.31 actions uwsgirouter does not run: a hook naming one is refused at start rather than skipped,
#: since the instance would then run without what it was told to do first.
UNSUPPORTED = frozenset(
    {
        "mount",
        "umount",
        "call",
        "callret",
        "callint",
        "callintret",
        "hostname",
        "alarm",
        "rpc",
        "retryrpc",
        "wait_for_fs",
        "wait_for_file",
        "wait_for_dir",
        "wait_for_socket",
        "unix_signal",
        "spinningfifo",
        "exit",
    }
)

_MODE = re.compile(r"[0-7]{3,4}")


class HookFailed(Exception):
    """A hook could not do its action; the message says what and why, in one line."""


@dataclass(frozen=True, slots=True)
class Hook:
    """One ``ACTION:ARGUMENTS`` as written; ``private`` when it began with ``!``."""

    action: str
    arg: str
    private: bool = False

    def __str__(self) -> str:
        return f"{'!' if self.private else ''}{self.action}:{self.arg}"

    @property
    def shown(self) -> str:
        """How the log names it: a private hook's arguments stay out."""
        return f"a private hook ({self.action})" if self.private else f'"{self}"'


# -- the actions --------------------------------------------------------------------------------------------
# Each takes the text after the colon and raises OSError or HookFailed when it cannot do its work.


def _split(arg: str, parts: int, syntax: str) -> list[str]:
    """uWSGI splits at the first spaces: the last part keeps any further spaces."""
    fields = arg.split(" ", parts - 1)
    if len(fields) < parts:
        raise HookFailed(f"invalid syntax, must be {syntax}")
    return fields


def _mode(text: str) -> int:
    if not _MODE.fullmatch(text):
        raise HookFailed(f"invalid mode {text!r}: 3 or 4 octal digits")
    return int(text, 8)


def _write(arg: str, flags: int, newline: bool, syntax: str = "<file> <string>") -> None:
    path, text = _split(arg, 2, syntax)
    fd = os.open(path, os.O_WRONLY | flags, 0o666)
    try:
        data = (text + "\n" if newline else text).encode()
        if os.write(fd, data) != len(data):
            raise HookFailed(f"short write to {path}")
    finally:
        os.close(fd)


def _appendn(arg: str) -> None:
    """``<file> <string>`` appends the string and a newline; ``<file>`` alone, a newline alone."""
    _write(arg if " " in arg else arg + " ", os.O_CREAT | os.O_APPEND, newline=True)


def _writefifo(arg: str) -> None:
    """A fifo nobody reads (ENXIO, ENODEV) is not a failure, as in uWSGI: the message is just not sent."""
    try:
        _write(arg, os.O_NONBLOCK, newline=False)
    except OSError as exc:
        if exc.errno not in (errno.ENXIO, errno.ENODEV):
            raise
        log.info("writefifo: nobody reads %s: nothing written", exc.filename)


def _create(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))


def _chmod(arg: str) -> None:
    path, mode = _split(arg, 2, "<file> <mode>")
    os.chmod(path, _mode(mode))


def _sticky(path: str) -> None:
    os.chmod(path, os.stat(path).st_mode | stat.S_ISVTX)


def _chown(arg: str) -> None:
    """By user and group names (chown2 takes numbers)."""
    path, user, group = _split(arg, 3, "<file> <uid> <gid>")
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise HookFailed(f"unable to find user {user}") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise HookFailed(f"unable to find group {group}") from None
    os.chown(path, uid, gid)


def _chown2(arg: str) -> None:
    path, uid, gid = _split(arg, 3, "<file> <uid> <gid>")
    if not (uid.isdigit() and gid.isdigit()):
        raise HookFailed("invalid syntax, uid and gid must be numbers")
    os.chown(path, int(uid), int(gid))


def _putenv(arg: str) -> None:
    """``NAME=VALUE`` sets; a name alone removes it, as putenv(3) does."""
    name, equals, value = arg.partition("=")
    if equals:
        os.environ[name] = value
    else:
        os.environ.pop(name, None)


def _command(arg: str, fatal: bool) -> None:
    """``/bin/sh -c ARG``, waited for; its output goes where the log goes (the process's fd 1 and 2). Spawned with
    an empty signal mask and default SIGPIPE: a router process runs its hooks while it still holds its stop
    signals (``oscalls.HELD_UNTIL_HANDLED``), and a command must not inherit that."""
    pid = os.posix_spawn(
        "/bin/sh", ["/bin/sh", "-c", arg], os.environ, setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ)
    )
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if status:
        what = f"killed by signal {-status}" if status < 0 else f"exited with non-zero code: {status}"
        if fatal:
            raise HookFailed(f"command {what}")
        log.warning('command "%s" %s', arg, what)


def _print(arg: str) -> None:
    log.info("%s", arg)


ACTIONS: dict[str, Callable[[str], None]] = {
    "cd": os.chdir,
    "chdir": os.chdir,
    "mkdir": lambda path: os.mkdir(path, 0o777),
    "putenv": _putenv,
    "chmod": _chmod,
    "chown": _chown,
    "chown2": _chown2,
    "sticky": _sticky,
    "exec": lambda arg: _command(arg, fatal=True),
    "safeexec": lambda arg: _command(arg, fatal=False),
    "create": _create,
    "creat": _create,
    "write": lambda arg: _write(arg, os.O_CREAT | os.O_TRUNC, newline=False),
    "writen": lambda arg: _write(arg, os.O_CREAT | os.O_TRUNC, newline=True),
    "append": lambda arg: _write(arg, os.O_CREAT | os.O_APPEND, newline=False),
    "appendn": _appendn,
    "writefifo": _writefifo,
    "unlink": os.unlink,
    "print": _print,
    "log": _print,
}

#: Syntax checked when the configuration is read, so that --dry-run finds a broken hook.
_SYNTAX: dict[str, Callable[[str], object]] = {
    "chmod": lambda arg: _mode(_split(arg, 2, "<file> <mode>")[1]),
    "chown": lambda arg: _split(arg, 3, "<file> <uid> <gid>"),
    "chown2": lambda arg: _split(arg, 3, "<file> <uid> <gid>"),
    "write": lambda arg: _split(arg, 2, "<file> <string>"),
    "writen": lambda arg: _split(arg, 2, "<file> <string>"),
    "append": lambda arg: _split(arg, 2, "<file> <string>"),
    "writefifo": lambda arg: _split(arg, 2, "<file> <string>"),
}


def parse_hook(raw: str) -> Hook:
    """``ACTION:ARGUMENTS`` (``!ACTION:...`` for a private hook); ``ValueError`` names what is wrong."""
    action, colon, arg = raw.partition(":")
    if not colon:
        raise ValueError("no ':' between the action and its arguments")
    private = action.startswith("!")
    action = action.removeprefix("!")
    if action in UNSUPPORTED:
        raise ValueError(f"uWSGI's hook action {action!r} is not supported by uwsgirouter")
    if action not in ACTIONS:
        raise ValueError(f"no hook action {action!r}")
    check = _SYNTAX.get(action)
    if check is not None:
        try:
            check(arg)
        except HookFailed as exc:
            raise ValueError(f"{action}: {exc}") from None
    return Hook(action, arg, private)


def check_hook_users(hooks: Iterable[tuple[str, Hook]]) -> str | None:
    """The first ``chown`` hook naming a user or group this host lacks, as one line (for --dry-run)."""
    for option, hook in hooks:
        if hook.action != "chown":
            continue
        _, user, group = _split(hook.arg, 3, "")
        for kind, name, lookup in (("user", user, pwd.getpwnam), ("group", group, grp.getgrnam)):
            try:
                lookup(name)
            except KeyError:
                return f"--hook-{option} {hook.shown}: no {kind} {name!r} on this host"
    return None


def run_hooks(hooks: Iterable[Hook], phase: str) -> None:
    """Run ``hooks`` of the phase (an option suffix such as ``as-gateway``) in order, each logged as uWSGI
    logs it; the first that fails raises ``HookFailed`` naming the option and the reason."""
    name = PHASES[phase]
    for hook in hooks:
        if hook.private:
            log.info("running --- PRIVATE HOOK --- (%s)...", name)
        else:
            log.info('running "%s" (%s)...', hook, name)
        try:
            ACTIONS[hook.action](hook.arg)
        except HookFailed as exc:
            raise HookFailed(f"--hook-{phase} {hook.shown} failed: {exc}") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            where = "" if hook.private or not exc.filename else f": {exc.filename}"
            raise HookFailed(f"--hook-{phase} {hook.shown} failed: {reason}{where}") from None
