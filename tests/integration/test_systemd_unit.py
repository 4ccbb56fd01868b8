"""scripts/systemd/uwsgirouter@.service: systemd accepts it, its keys match uwsgirouter's signals, and its
commands do what systemd will do with them (ExecStart under a NOTIFY_SOCKET, ExecReload, KillSignal), here
without systemd running."""

from __future__ import annotations

import configparser
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, VENV_BIN, NotifyListener, ProcessManager, free_port, request_vars, uwsgi_request
from uwsgirouter.cli import EXIT_USAGE
from uwsgirouter.config.process_options import ProcessOptions

pytestmark = pytest.mark.integration

UNIT = REPO / "scripts" / "systemd" / "uwsgirouter@.service"
INSTALLED_BIN = "/usr/local/bin/uwsgirouter"


def unit_keys() -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, strict=True, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return {section: dict(parser[section]) for section in parser.sections()}


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_keys_match_uwsgirouters_signals() -> None:
    service = unit_keys()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["KillSignal"] == "SIGTERM"  # graceful stop here (uWSGI's own unit needs SIGQUIT)
    assert service["KillMode"] == "mixed"  # the master alone gets SIGTERM; it stops its workers
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"] == f"{INSTALLED_BIN} /etc/uwsgirouter/%i.ini"
    # the master may wait --reload-mercy for its workers: systemd must not SIGKILL them sooner
    assert seconds(service["TimeoutStopSec"]) > ProcessOptions.reload_mercy.default
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == str(EXIT_USAGE)  # a refused configuration is not retried
    assert service["RuntimeDirectory"] == "uwsgirouter/%i"


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit as an instance, with ExecStart naming this checkout's command (not installed here)."""
    copy = tmp_path / "uwsgirouter@site.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_BIN, str(VENV_BIN / "uwsgirouter")))
    return copy


def test_systemd_analyze_verify(unit_copy: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    result = subprocess.run([analyze, "verify", str(unit_copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys or bad values too, with a line naming the file: no line at all
    assert result.returncode == 0 and str(unit_copy) not in result.stderr + result.stdout, result.stderr


@pytest.fixture
def manager(unix_dir: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(str(unix_dir / "notify"))
    try:
        yield listener
    finally:
        listener.close()


def test_start_reload_stop_as_systemd_would(
    procs: ProcessManager, manager: NotifyListener, unit_copy: Path, tmp_path: Path
) -> None:
    """ExecStart with %i expanded (the INI under a temp /etc), then ExecReload with $MAINPID from READY=1,
    then KillSignal to the main pid: READY, RELOADING, READY, STOPPING, exit 0 within TimeoutStopSec."""
    service = unit_keys()["Service"]
    router_port, app_port = free_port(), free_port()
    etc = tmp_path / "etc" / "uwsgirouter"
    etc.mkdir(parents=True)
    (etc / "site.ini").write_text(
        f"[uwsgi]\nmaster = true\nfastrouter = 127.0.0.1:{router_port}\nfastrouter-to = 127.0.0.1:{app_port}\n"
        f"socket = 127.0.0.1:{app_port}\nwsgi-file = {REPO / 'conf' / 'hello.py'}\nprocesses = 2\n"
    )
    exec_start = service["ExecStart"].replace("%i", "site").replace("/etc/uwsgirouter", str(etc))
    argv = shlex.split(exec_start.replace(INSTALLED_BIN, str(VENV_BIN / "uwsgirouter")))
    main = procs.start(argv, "uwsgirouter", env={"NOTIFY_SOCKET": manager.address})
    ready = manager.wait_for("READY")[-1]
    assert ready["MAINPID"] == str(main.pid)
    assert uwsgi_request(("127.0.0.1", router_port), request_vars(host="example.com")).status == 200

    reload = service["ExecReload"].replace("$MAINPID", ready["MAINPID"])
    subprocess.run(shlex.split(reload), check=True, timeout=30)
    manager.wait_for("READY", count=2)
    assert manager.states() == ["READY", "RELOADING", "READY"]
    assert uwsgi_request(("127.0.0.1", router_port), request_vars(host="example.com")).status == 200

    main.signal(getattr(signal, service["KillSignal"]))
    assert main.wait(seconds(service["TimeoutStopSec"])) == 0
    assert manager.states() == ["READY", "RELOADING", "READY", "STOPPING"]
