"""A router started as root with ``--uid nobody``: it serves what needs late work (a 502 page, signed
subscriptions), and ``--reload``/``--stop PIDFILE`` work whoever runs them (issue 10, "Clear errors").

Realistic where the interpreter lives under ``/root`` (unreadable by nobody): a module imported after the
drop fails there, as the master's pidfile cleanup once did (``LookupError: unknown encoding: ascii``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import APPS, ROUTER, ProcessManager, free_port, request_vars, uwsgi_request, wait_until

pytestmark = pytest.mark.integration

SETPRIV = shutil.which("setpriv")
KEY = "example.com"


def _nobody() -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


NOBODY = _nobody()
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or NOBODY is None or SETPRIV is None,
    reason="needs root, a 'nobody' user and setpriv to run a router as nobody and signal it as another user",
)


#: Processes that become nobody run unmeasured (under ``scripts/test``): nobody may not write coverage's data
#: files, and coverage would add its own traceback to the logs and stderr these tests read.
NO_COVERAGE = {"COVERAGE_PROCESS_START": "", "COVERAGE_PROCESS_CONFIG": ""}


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run as nobody (unmeasured: see ``NO_COVERAGE``)."""
    assert SETPRIV is not None and NOBODY is not None
    prefix = [SETPRIV, f"--reuid={NOBODY[0]}", f"--regid={NOBODY[1]}", "--clear-groups"]
    env = {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_")}
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30, check=False, env=env)


def as_root(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A directory like /run/uwsgirouter: readable by all, owned by nobody (the master removes its pidfile)."""
    path = Path(tempfile.mkdtemp(prefix="uwsgirouter-priv-"))
    try:
        os.chmod(path, 0o755)
        if NOBODY is not None and os.geteuid() == 0:
            os.chown(path, *NOBODY)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _keys(run_dir: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_dir = run_dir / "public"
    public_dir.mkdir(mode=0o755)
    (public_dir / f"{KEY}.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private = run_dir / "private.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    private.chmod(0o600)  # read by root before the instance drops to nobody
    return public_dir, private


@needs_root
def test_a_router_run_as_nobody_serves_and_is_reloaded_and_stopped_by_anyone(
    procs: ProcessManager, run_dir: Path
) -> None:
    public_dir, private = _keys(run_dir)
    port, server, node = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    pidfile = run_dir / "router.pid"
    drop = ("--uid", "nobody", "--gid", str(NOBODY[1] if NOBODY else 0))
    router = procs.router(
        "--master",
        "--fastrouter",
        f"127.0.0.1:{port}",
        "--fastrouter-subscription-server",
        f"127.0.0.1:{server}",
        "--subscriptions-sign-check",
        f"SHA1:{public_dir}",
        "--pidfile",
        str(pidfile),
        *drop,
        wait_for=("127.0.0.1", port),
        env=NO_COVERAGE,
    )
    procs.router(
        "--master",
        "--socket",
        f"127.0.0.1:{node}",
        "--wsgi-file",
        str(APPS / "instance_app.py"),
        "--subscribe2",
        f"server=127.0.0.1:{server},key={KEY},sign=SHA1:{private}",
        *drop,
        env={"INSTANCE": "signed", **NO_COVERAGE},
        wait_for=("127.0.0.1", node),
    )
    assert pwd.getpwuid(os.stat(f"/proc/{router.pid}").st_uid).pw_name == "nobody"

    def routed() -> bool:
        return uwsgi_request(("127.0.0.1", port), request_vars(KEY)).status == 200

    wait_until(routed, 15, what="the signed node routed by the router running as nobody")
    missing = uwsgi_request(("127.0.0.1", port), request_vars("unknown.example"))
    assert missing.status == 502 and b"unknown.example" in missing.body, missing.raw

    for run in (as_nobody, as_root):
        reloads = router.log().count("graceful reload: starting")
        done = run(*ROUTER, "--reload", str(pidfile))
        assert (done.returncode, done.stderr) == (0, ""), done

        def reloaded(before: int = reloads) -> bool:
            return router.log().count("graceful reload: starting") > before

        wait_until(reloaded, 10, what="a reload")
        wait_until(routed, 10, what="routing after the reload")

    done = as_nobody(*ROUTER, "--stop", str(pidfile))
    assert (done.returncode, done.stderr) == (0, ""), done
    assert router.wait(15) == 0, router.log()
    assert not pidfile.exists()
    assert "Traceback" not in router.log(), router.log()


@needs_root
def test_signalling_a_master_one_may_not_signal_or_an_unreadable_pidfile_is_one_line(run_dir: Path) -> None:
    secret = run_dir / "secret.pid"
    secret.write_text(f"{os.getpid()}\n")
    secret.chmod(0o600)
    done = as_nobody(*ROUTER, "--stop", str(secret))
    assert done.returncode == 2
    assert done.stderr == f"uwsgirouter: cannot read a pid from {secret}: [Errno 13] Permission denied: '{secret}'\n"

    foreign = run_dir / "root.pid"
    foreign.write_text(f"{os.getpid()}\n")  # this test, run by root: nobody may not signal it
    foreign.chmod(0o644)
    done = as_nobody(*ROUTER, "--reload", str(foreign))
    assert done.returncode == 2
    assert done.stderr == (
        f"uwsgirouter: not allowed to signal pid {os.getpid()} (from {foreign}): run this as its user or root\n"
    )
