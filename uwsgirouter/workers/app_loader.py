"""Load the WSGI callable the way uWSGI's Python plugin does, with errors a user can act on.

``--wsgi-file FILE`` runs FILE as a fresh module named ``uwsgi_file_<path with . and / as _>`` (so
``app.py`` becomes ``uwsgi_file_app``: apps and pickles that look at ``__name__`` see what uWSGI
gives them). ``--module mod[:callable]`` imports a module. Like uWSGI, ``.`` is put first on
``sys.path`` so modules next to the working directory import; unlike uWSGI, the file's own directory
is added too (what ``python FILE`` would do). Paths are taken as written, relative to the current
directory, so ``--chdir`` must already have been applied.

Every failure is an ``AppLoadError`` whose message is ready to log: one line for a missing file or
callable, the user's traceback (without our frames) when their code raised.
"""

from __future__ import annotations

import glob
import importlib
import logging
import os
import site
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any
from wsgiref.types import WSGIApplication

from uwsgirouter import uwsgi_module
from uwsgirouter.arbiter import APP_LOAD_ERROR
from uwsgirouter.config import Config
from uwsgirouter.errors import HaltServer, UwsgiRouterError

__all__ = ["AppLoadError", "apply_env", "apply_python_paths", "load_app", "module_name_for_file", "run_file"]

log = logging.getLogger("uwsgirouter.app")
#: sys.path entries put there by ``apply_python_paths`` (a worker forked from the master has them already)
_added: set[str] = set()

_PREFIXES = ("sym://", "http://", "data://")


class AppLoadError(UwsgiRouterError):
    """The app cannot be loaded; ``str()`` is the whole message (possibly with a traceback)."""


def module_name_for_file(path: str) -> str:
    """uWSGI's ``uwsgi_pythonize``: ``/srv/app.py`` -> ``uwsgi_file__srv_app``."""
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            path = path[len(prefix) :]
            break
    name = path.replace(".", "_").replace("/", "_")
    if len(name) >= 3 and name.endswith("_py"):
        name = name[:-3]
    return "uwsgi_file_" + name


def apply_env(config: Config) -> None:
    """``--env NAME=VALUE``: set before any user code runs, in option order (last one wins)."""
    for name, value in config.env:
        os.environ[name] = value


def venv_site_packages(home: str) -> str:
    """The site-packages of the virtualenv ``home`` for the running Python (lib/pythonX.Y/site-packages)."""
    return os.path.join(home, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")


def pythonpath_entries(value: str) -> list[str]:
    """uWSGI's ``--pythonpath`` value: each match of the glob, sorted, directories with a trailing slash
    (glob(3) with GLOB_MARK); the value as written when nothing matches."""
    matches = sorted(glob.glob(value))
    if not matches:
        return [value]
    return [path + "/" if os.path.isdir(path) and not path.endswith("/") else path for path in matches]


def apply_python_paths(config: Config) -> None:
    """``--virtualenv`` and ``--pythonpath``, before any user code runs: the virtualenv's site-packages (and
    what its .pth files name) go first on sys.path, then each pythonpath entry is put in front in turn (so
    the last given comes first, as in uWSGI). Entries already added in this process are not added twice."""
    if config.virtualenv:
        packages = venv_site_packages(config.virtualenv)
        if packages not in _added:
            _added.add(packages)
            if not os.path.isdir(packages):
                log.warning("--virtualenv %s: no %s (a virtualenv of another Python?)", config.virtualenv, packages)
            else:
                before = list(sys.path)
                site.addsitedir(packages)
                new = [entry for entry in sys.path if entry not in before]
                sys.path[:] = new + before
                log.info("added %s to pythonpath.", packages)
    for value in config.pythonpath:
        if value in _added:
            continue
        _added.add(value)
        for entry in pythonpath_entries(value):
            sys.path.insert(0, entry)
            log.info("added %s to pythonpath.", entry)


def _prepare_sys_path(directory: str | None = None) -> None:
    if directory is not None:
        directory = directory or "."
        if directory not in sys.path:
            sys.path.insert(0, directory)
    if "." not in sys.path:
        sys.path.insert(0, ".")


def _user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without our loader's or importlib's frames."""
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if f.filename != __file__ and not f.filename.startswith("<frozen importlib")]
    )
    return "".join(te.format()).rstrip("\n")


def _exec_file(path: str, what: str = "load app from") -> types.ModuleType:
    """Run ``path`` as module ``uwsgi_file_...``; the module stays in ``sys.modules`` on success."""
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except FileNotFoundError:
        raise AppLoadError(f"unable to {what} {path}: file not found") from None
    except OSError as exc:
        raise AppLoadError(f"unable to {what} {path}: {exc.strerror or exc}") from None
    _prepare_sys_path(os.path.dirname(path))
    name = module_name_for_file(path)
    module = types.ModuleType(name)
    module.__file__ = path
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        code = compile(source, path, "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise AppLoadError(f"unable to {what} {path}: error while running it:\n{_user_traceback(exc)}") from None
    return module


def _import_module(name: str) -> types.ModuleType:
    _prepare_sys_path()
    importlib.invalidate_caches()  # "." may mean another directory than at the last import (--chdir)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise AppLoadError(f"unable to load app: no module named {exc.name!r} (--module {name})") from None
        raise AppLoadError(f"unable to load app from module {name}: import failed:\n{_user_traceback(exc)}") from None
    except (Exception, SystemExit) as exc:
        raise AppLoadError(f"unable to load app from module {name}: import failed:\n{_user_traceback(exc)}") from None


def _get_callable(module: types.ModuleType, name: str, where: str) -> WSGIApplication:
    try:
        app = getattr(module, name)
    except AttributeError:
        raise AppLoadError(f"unable to load app: no callable named {name!r} in {where}") from None
    if not callable(app):
        raise AppLoadError(f"unable to load app: {name!r} in {where} is not callable ({type(app).__name__})")
    return app  # type: ignore[no-any-return]


def load_app(config: Config) -> WSGIApplication:
    """Apply ``--env``, then load the callable from ``--wsgi-file`` or ``--module``.

    ``--wsgi-file`` wins when both are given. ``--module`` also accepts ``mod:callable`` and, like
    uWSGI, a path ending in ``.py`` or ``.wsgi`` (loaded as a file). Installs the ``uwsgi`` module
    first if nobody did, so ``import uwsgi`` works at import time.

    Raises:
        AppLoadError: no app configured, file or module missing, user code raised, no such callable.
    """
    apply_env(config)
    apply_python_paths(config)
    if not uwsgi_module.installed():
        uwsgi_module.install(config)
    callable_name: str = config.callable or "application"
    if config.wsgi_file:
        path: str = config.wsgi_file
        return _get_callable(_exec_file(path), callable_name, path)
    if config.module:
        spec: str = config.module
        name, sep, attr = spec.partition(":")
        if sep and attr:
            callable_name = attr
        if name.endswith((".py", ".wsgi")):
            return _get_callable(_exec_file(name), callable_name, name)
        return _get_callable(_import_module(name), callable_name, f"module {name}")
    raise AppLoadError("no app to load: give --wsgi-file FILE or --module MODULE[:CALLABLE]")


def run_file(path: str) -> dict[str, Any]:
    """Execute ``path`` for its side effects (e.g. filling a cache in the master); return its globals.

    Raises:
        AppLoadError: the file is missing or unreadable, or its code raised.
    """
    return _exec_file(path, "run").__dict__


def no_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """What an instance without --wsgi-file or --module serves, as uWSGI does: a 500 for every request."""
    logging.getLogger("uwsgirouter.wsgi").error(
        "--- no python application found, check your startup logs for errors ---"
    )
    body = b"Internal Server Error"
    start_response("500 Internal Server Error", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def run_in_master(config: Config, apps: int) -> None:
    """Python the master runs before forking, with ``import uwsgi`` available (uWSGI does the same):
    ``--import``/``--shared-import`` modules, and ``--file`` when there are no app workers to serve
    it (a fastrouter-only instance: the seed's "Way 3" fills the cache this way)."""
    apply_python_paths(config)  # before any user code; the workers inherit it
    scripts = [*config.import_, *config.shared_import]
    if config.wsgi_file and not apps:
        scripts.append(config.wsgi_file)
    if not scripts:
        return
    uwsgi_module.install(config, worker_id=0, numproc=apps, masterpid=os.getpid())
    apply_env(config)
    for script in scripts:
        try:
            if script.endswith((".py", ".wsgi")) or os.sep in script:
                run_file(script)
            else:
                importlib.import_module(script)
        except AppLoadError as exc:
            raise HaltServer(str(exc), APP_LOAD_ERROR) from None
        except Exception as exc:
            raise HaltServer(f"unable to import {script}: {exc!r}", APP_LOAD_ERROR) from None
        log.info("ran %s in the master", script)
