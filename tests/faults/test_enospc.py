"""Post-buffering into a full file system (ENOSPC).

``--fastrouter-post-buffering-dir`` is a 1 MiB tmpfs and an upload is larger than that: the client must get
an HTTP error answer (503), nothing may stay on the file system, and the router worker must go on
serving, with no descriptor lost.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import (
    Proc,
    ProcessManager,
    connect,
    free_port,
    request_vars,
    router_worker,
    short_unix_dir,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
FS_SIZE = 1 << 20
MEMORY_LIMIT = 4096
BIG = 2 * FS_SIZE
UPLOADS = 5


@pytest.fixture
def full_fs() -> Iterator[Path]:
    """A fresh 1 MiB tmpfs, unmounted at teardown (after the processes, which are stopped first)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = short_unix_dir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


def used_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def upload_and_read(address: tuple[str, int], body: bytes) -> bytes:
    """Send the head and BODY from a thread while reading the answer: the router may answer (and close)
    before the body is all sent. Returns what arrived before the connection closed or was reset."""
    received = bytearray()
    with connect(address, 20) as sock:
        sock.sendall(uwsgi_packet(request_vars("example.com", "/upload", "POST", len(body))))

        def send() -> None:
            try:
                sock.sendall(body)
            except OSError:
                pass  # the router stopped reading: expected once it has answered

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            while data := sock.recv(1 << 16):
                received += data
        except OSError:
            pass  # a reset after the answer: the router closed with unread body bytes
        try:
            sock.shutdown(socket.SHUT_RDWR)  # unblocks the sender if it is still sending
        except OSError:
            pass
        sender.join(20)
    return bytes(received)


def md5_line(body: bytes) -> bytes:
    return f"len={len(body)} md5={hashlib.md5(body).hexdigest()}".encode()


def start(procs: ProcessManager, directory: Path) -> tuple[Proc, tuple[str, int]]:
    backend = free_port()
    procs.uwsgi_backend(f"{LOOPBACK}:{backend}", "app", wait_for=(LOOPBACK, backend))
    port = free_port()
    router = procs.router(
        "--fastrouter",
        f"{LOOPBACK}:{port}",
        "--fastrouter-to",
        f"{LOOPBACK}:{backend}",
        "--fastrouter-post-buffering",
        str(MEMORY_LIMIT),
        "--fastrouter-post-buffering-dir",
        str(directory),
        wait_for=(LOOPBACK, port),
    )
    return router, (LOOPBACK, port)


def test_upload_into_a_full_file_system(full_fs: Path, procs: ProcessManager) -> None:
    router, address = start(procs, full_fs)
    worker = router_worker(router)
    # One whole request first; then give the master (which looks once a second when idle) time to see the
    # worker's heartbeat: the worker is past its start-up.
    assert uwsgi_request(address).status == 200
    served_at = time.monotonic()
    wait_until(lambda: time.monotonic() - served_at > 1.5, 5, what="the master to see the worker's heartbeat")
    idle_fds = worker.num_fds()

    for number in range(UPLOADS):
        raw = upload_and_read(address, os.urandom(BIG))
        assert raw.startswith((b"HTTP/1.0 503 ", b"HTTP/1.1 503 ")), (number, raw[:300], router.log()[-2000:])
        # nothing stays on the file system, not even an unlinked file still holding its blocks
        wait_until(lambda: used_bytes(full_fs) == 0, 5, what="the tmpfs to be empty again")
        assert os.listdir(full_fs) == []
        assert router_worker(router).pid == worker.pid, f"the router worker died: {router.log()[-3000:]}"

    # the same worker goes on serving: a plain GET, a body kept in memory, a body spilled to the (now empty) fs
    assert uwsgi_request(address).status == 200
    for size in (MEMORY_LIMIT, 256 << 10):
        body = os.urandom(size)
        response = uwsgi_request(address, request_vars("example.com", "/upload", "POST", size), body, timeout=20)
        assert response.status == 200 and md5_line(body) in response.body, response.raw[:300]
    wait_until(lambda: worker.num_fds() <= idle_fds, 5, what=f"the worker back to {idle_fds} descriptors")
    assert used_bytes(full_fs) == 0
    assert router.alive() and psutil.pid_exists(worker.pid)
