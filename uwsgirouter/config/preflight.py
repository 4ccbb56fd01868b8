"""Checks of what the configuration names on this host (paths, users, groups, the app file).

They run before anything binds, forks or detaches, for ``--dry-run`` too, so that a bad path or user in an
init script's INI file gives one line naming the option and a non-zero status, never a traceback and never
a daemon that reports success and then dies.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Sequence

from uwsgirouter.address import UnixAddress
from uwsgirouter.config.model import Config
from uwsgirouter.errors import ConfigError
from uwsgirouter.hooks import check_hook_users


def check_environment(config: Config) -> None:
    """Raise ``ConfigError`` for a path, user, group or app file this host does not have."""
    base = config.chdir
    if base is not None and not os.path.isdir(base):
        raise ConfigError(f"--chdir {base}: no such directory")
    uid = _user("uid", config.uid)
    gid = _group("gid", config.gid)
    _user("fastrouter-uid", config.fastrouter_uid)
    _group("fastrouter-gid", config.fastrouter_gid)
    for option, path in (("daemonize", config.daemonize), ("logto", config.logto), ("pidfile", config.pidfile)):
        if path:
            _writable_file(option, _within(base, path), None, None)
    if config.pidfile2:
        # written after the privileges are dropped: the new user must be able to write it
        _writable_file("pidfile2", _within(base, config.pidfile2), uid, gid)
    if config.logto2:
        # opened after the privileges are dropped, as the new user
        _writable_file("logto2", _within(base, config.logto2), uid, gid)
    _log_rotation(config, base, uid, gid)
    if config.wsgi_file and not os.path.isfile(_within(base, config.wsgi_file)):
        raise ConfigError(f"--wsgi-file {config.wsgi_file}: no such file")
    if config.virtualenv and not os.path.isdir(_within(base, config.virtualenv)):
        raise ConfigError(f"--virtualenv {config.virtualenv}: no such directory")
    socket_owner(config.chown_socket)
    hooks = {
        "as-root": config.hook_as_root,
        "as-user": config.hook_as_user,
        "pre-app": config.hook_pre_app,
        "master-start": config.hook_master_start,
        "as-gateway": config.hook_as_gateway,
    }
    problem = check_hook_users((phase, hook) for phase, listed in hooks.items() for hook in listed)
    if problem:
        raise ConfigError(problem)
    for path in config.master_fifo:
        # created after the privileges are dropped, as in uWSGI
        _fifo_path(_within(base, path), uid, gid)
    _socket_paths(config, base)


def _socket_paths(config: Config, base: str | None) -> None:
    """Every UNIX socket path is created by the master before it drops privileges: its directory must exist
    and be writable now (the bind itself can still fail, e.g. a port in use: that line names the option too)."""
    listed: list[tuple[str, Sequence[object]]] = [
        ("shared-socket", config.shared_socket),
        ("undeferred-shared-socket", config.undeferred_shared_socket),
        ("socket", config.socket),
        ("fastrouter", config.fastrouter),
        ("fastrouter-stats", [config.fastrouter_stats]),
        ("stats", [config.stats]),
        ("emperor-stats", [config.emperor_stats]),
        ("fastrouter-subscription-server", config.fastrouter_subscription_server),
    ]
    for option, addresses in listed:
        for address in addresses:
            if not isinstance(address, UnixAddress):
                continue
            _creatable(option, address.path, _within(base, address.path), None, None)


def socket_owner(spec: str | None) -> tuple[int, int] | None:
    """``--chown-socket USER[:GROUP]`` as (uid, gid), -1 for a group not given (kept as it is)."""
    if spec is None:
        return None
    user, colon, group = spec.partition(":")
    uid = _user("chown-socket", user) if user else -1
    gid = _group("chown-socket", group) if colon and group else -1
    return (-1 if uid is None else uid, -1 if gid is None else gid)


def _fifo_path(path: str, uid: int | None, gid: int | None) -> None:
    """A --master-fifo path: an existing fifo (reused), or a new name in a directory the master can write."""
    info = _existing_or_creatable("master-fifo", path, uid, gid)
    if info is not None and not stat.S_ISFIFO(info.st_mode):
        raise ConfigError(f"--master-fifo {path}: exists and is not a fifo")


def _log_rotation(config: Config, base: str | None, uid: int | None, gid: int | None) -> None:
    """--log-maxsize: the master renames the log file and creates a new one, after dropping privileges."""
    path = config.logto2 or config.daemonize or config.logto
    if not config.log_maxsize or not path:
        return  # nothing to rotate (said at start)
    directory = os.path.dirname(_within(base, path)) or "."
    if not _may_write(directory, uid, gid, need_search=True):
        raise ConfigError(f"--log-maxsize {config.log_maxsize}: the directory {directory} of {path} is not writable")
    backup = config.log_backupname
    if backup:
        backup_dir = os.path.dirname(_within(base, backup)) or "."
        if not os.path.isdir(backup_dir):
            raise ConfigError(f"--log-backupname {backup}: no such directory {backup_dir}")
        if not _may_write(backup_dir, uid, gid, need_search=True):
            raise ConfigError(f"--log-backupname {backup}: the directory {backup_dir} is not writable")
        if os.stat(backup_dir).st_dev != os.stat(directory).st_dev:
            raise ConfigError(f"--log-backupname {backup}: not on the file system of {path} (it is renamed there)")


def _within(base: str | None, path: str) -> str:
    return os.path.join(base, path) if base else path


def _user(option: str, value: str | None) -> int | None:
    return _lookup(option, value, "user", lambda name: pwd.getpwnam(name).pw_uid)


def _group(option: str, value: str | None) -> int | None:
    return _lookup(option, value, "group", lambda name: grp.getgrnam(name).gr_gid)


def _lookup(option: str, value: str | None, what: str, by_name: Callable[[str], int]) -> int | None:
    """A numeric id as given (uWSGI takes any number), a name through the system's database."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return by_name(value)
    except KeyError:
        raise ConfigError(f"--{option} {value}: no such {what}") from None


def _writable_file(option: str, path: str, uid: int | None, gid: int | None) -> None:
    """``path`` can be opened for appending (or created) by this process, or by ``uid``/``gid``."""
    info = _existing_or_creatable(option, path, uid, gid)
    if info is None:
        return
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"--{option} {path}: is a directory")
    if not _may_write(path, uid, gid, need_search=False):
        raise ConfigError(f"--{option} {path}: not writable")


def _existing_or_creatable(option: str, path: str, uid: int | None, gid: int | None) -> os.stat_result | None:
    """The status of ``path`` when it exists; None when it does not and ``uid``/``gid`` may create it."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        _creatable(option, path, path, uid, gid)
        return None
    except OSError as exc:
        raise ConfigError(f"--{option} {path}: {exc.strerror}") from None


def _creatable(option: str, given: str, path: str, uid: int | None, gid: int | None) -> None:
    """A new file at ``path`` (``given`` as the user wrote it): its directory exists and ``uid``/``gid`` may
    write there."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigError(f"--{option} {given}: no such directory {directory}")
    if not _may_write(directory, uid, gid, need_search=True):
        raise ConfigError(f"--{option} {given}: the directory {directory} is not writable")


def _may_write(path: str, uid: int | None, gid: int | None, need_search: bool) -> bool:
    """Write permission for this process, or for the user it will become (the mode bits that apply)."""
    if uid is None or uid == os.geteuid():
        return os.access(path, os.W_OK | (os.X_OK if need_search else 0))
    if uid == 0:
        return True
    info = os.stat(path)
    wanted = stat.S_IWUSR | (stat.S_IXUSR if need_search else 0)
    if info.st_uid == uid:
        return info.st_mode & wanted == wanted
    wanted >>= 3
    if gid is not None and info.st_gid == gid:
        return info.st_mode & wanted == wanted
    wanted >>= 3
    return info.st_mode & wanted == wanted
