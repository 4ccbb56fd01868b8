"""Helpers for tests that run real processes: ports, polling, process groups, a raw uwsgi client.

Every process is started in its own session and its whole group is killed at teardown; nothing is
left running. Output goes to files in the test's tmp_path (never an undrained pipe). The process
harness itself (``Proc``, ``ProcessManager``'s base, ``wait_until``, ``free_port``, ``connect``,
``can_connect``) lives in tools/harness.py, shared with the benchmark, and is re-exported here.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tools import harness
from tools.harness import (  # re-exported: the tests import them from here
    Address as Address,
    Proc as Proc,
    can_connect as can_connect,
    connect as connect,
    free_port as free_port,
    nginx_conf,
    wait_until as wait_until,
)

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
UWSGI = shutil.which("uwsgi", path=str(VENV_BIN)) or shutil.which("uwsgi")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
WRK = shutil.which("wrk")
APPS = REPO / "tests" / "apps"
ROUTER = [sys.executable, "-m", "uwsgirouter"]


def encode_vars(pairs: Mapping[str, str] | Sequence[tuple[str, str]]) -> bytes:
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    out = bytearray()
    for key, value in items:
        k, v = key.encode(), value.encode("utf-8", "surrogateescape")
        out += struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
    return bytes(out)


def uwsgi_packet(pairs: Mapping[str, str] | Sequence[tuple[str, str]], modifier1: int = 0, modifier2: int = 0) -> bytes:
    block = encode_vars(pairs)
    return struct.pack("<BHB", modifier1, len(block), modifier2) + block


def request_vars(
    host: str = "example.com", path: str = "/", method: str = "GET", body_len: int = 0, **extra: str
) -> dict[str, str]:
    env = {
        "REQUEST_METHOD": method,
        "REQUEST_URI": path,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "CONTENT_LENGTH": str(body_len) if body_len else "",
    }
    if host:
        env["HTTP_HOST"] = host
    env.update(extra)
    return env


@dataclass
class Response:
    raw: bytes
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def parse(cls, raw: bytes) -> Response:
        head, sep, body = raw.partition(b"\r\n\r\n")
        if not sep:
            return cls(raw)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return cls(raw, status, headers, body)


def read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def uwsgi_request(
    address: Address,
    vars: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    modifier1: int = 0,
    modifier2: int = 0,
    timeout: float = 10.0,
    half_close: bool = False,
) -> Response:
    """Send one uwsgi request and read the raw HTTP response until the server closes."""
    pairs = vars if vars is not None else request_vars(body_len=len(body))
    with connect(address, timeout) as sock:
        sock.sendall(uwsgi_packet(pairs, modifier1, modifier2) + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return Response.parse(read_all(sock))


class ProcessManager(harness.ProcessManager):
    """Starts processes for one test and stops all of them at teardown; knows how to start this project's cast."""

    def router(self, *args: str, wait_for: Address | None = None, env: Mapping[str, str] | None = None) -> Proc:
        """Start ``uwsgirouter ARGS``; wait until ``wait_for`` accepts connections."""
        proc = self.start([*ROUTER, *args], "uwsgirouter", env)
        if wait_for is not None:
            wait_until(lambda: can_connect(wait_for) or not proc.alive(), 15, what=f"uwsgirouter on {wait_for!r}")
            assert proc.alive(), proc.log()
        return proc

    def uwsgi_backend(self, socket_arg: str, instance: str, *args: str, wait_for: Address | None = None) -> Proc:
        """A real uWSGI 2.0.31 instance serving tests/apps/instance_app.py, answering with its name."""
        assert UWSGI, "uWSGI 2.0.31 is not installed (scripts/install)"
        argv = [
            UWSGI,
            "--socket",
            socket_arg,
            "--wsgi-file",
            str(APPS / "instance_app.py"),
            "--master",
            "--processes",
            "2",
            "--disable-logging",
            "--die-on-term",
            *args,
        ]
        proc = self.start(argv, f"uwsgi-{instance}", {"INSTANCE": instance})
        if wait_for is not None:
            wait_until(lambda: can_connect(wait_for) or not proc.alive(), 15, what=f"uWSGI {instance}")
            assert proc.alive(), proc.log()
        return proc

    def nginx(self, uwsgi_pass: str, port: int) -> Proc:
        """Real nginx on 127.0.0.1:port with ``uwsgi_pass`` to the router, logs in tmp_path."""
        assert NGINX, "nginx is not installed (scripts/install)"
        conf_dir = self.tmp_path / f"nginx-{port}"
        conf_dir.mkdir()
        conf = conf_dir / "nginx.conf"
        conf.write_text(nginx_conf(conf_dir, NGINX_SERVER.format(port=port, uwsgi_pass=uwsgi_pass)))
        proc = self.start([NGINX, "-p", str(conf_dir), "-c", str(conf), "-e", str(conf_dir / "error.log")], "nginx")
        wait_until(lambda: can_connect(("127.0.0.1", port)) or not proc.alive(), 15, what="nginx")
        assert proc.alive(), (conf_dir / "error.log").read_text() if (conf_dir / "error.log").exists() else proc.log()
        return proc


#: The http block of a test's nginx: one server passing everything to the router.
NGINX_SERVER = """
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location / {{
            include /etc/nginx/uwsgi_params;
            uwsgi_pass {uwsgi_pass};
            uwsgi_read_timeout 30s;
        }}
    }}"""


def http_get(
    port: int, path: str = "/", host: str = "example.com", method: str = "GET", body: bytes = b"", timeout: float = 15.0
) -> Response:
    """A minimal HTTP/1.0 client (Connection: close) for requests through nginx."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        head = f"{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        sock.sendall(head + body)
        return Response.parse(read_all(sock))


# -- helpers added for the router-worker integration tests -------------------------------------------


def short_unix_dir() -> Path:
    """A fresh directory under /tmp for UNIX socket paths (tmp_path may exceed AF_UNIX's 107 bytes).

    The caller removes it (``shutil.rmtree``), typically from a fixture.
    """
    import tempfile

    return Path(tempfile.mkdtemp(prefix="ur-", dir="/tmp"))


def tree_rss(pid: int) -> int:
    """Resident memory in bytes of process ``pid`` and all its descendants (0 for those already gone)."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def router_worker(proc: Proc, timeout: float = 10.0) -> psutil.Process:
    """The (first) router worker process forked by the uwsgirouter master ``proc``."""
    worker: psutil.Process = wait_until(
        lambda: next(iter(proc.children()), None), timeout, what="the router worker process"
    )
    return worker


def log_lines(proc: Proc) -> list[str]:
    """The lines ``proc`` has written to its log so far."""
    return proc.log().splitlines()


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` (every process a test starts has its own session)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def start_router_with_nofile(procs: ProcessManager, nofile: int, *args: str) -> Proc:
    """uwsgirouter started by a shell that lowers RLIMIT_NOFILE first, so master and workers inherit it."""
    return procs.start(["bash", "-c", f'ulimit -n {nofile} && exec "$@"', "bash", *ROUTER, *args], "uwsgirouter")


class NotifyListener:
    """A stand-in for systemd's NOTIFY_SOCKET (a path, or ``@name`` for the abstract namespace): every datagram
    the master sends, parsed into its assignments (``{"READY": "1", "STATUS": ...}``)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address if not address.startswith("@") else "\0" + address[1:])
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    def receive(self) -> list[dict[str, str]]:
        """Every message so far (waits briefly for more)."""
        for _ in range(100):
            try:
                datagram = self.sock.recv(4096)
            except TimeoutError:
                break
            self.messages.append(dict(line.split("=", 1) for line in datagram.decode().splitlines()))
        return self.messages

    def wait_for(self, name: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, str]]:
        """Every message so far, once ``count`` of them carry ``name`` (READY, RELOADING, STOPPING)."""
        wait_until(
            lambda: len([m for m in self.receive() if name in m]) >= count,
            timeout,
            what=f"{count} message(s) with {name}",
        )
        return self.messages

    def states(self) -> list[str]:
        """The sequence of state assignments, STATUS-only messages left out."""
        return [name for m in self.receive() for name in ("READY", "RELOADING", "STOPPING") if name in m]

    def close(self) -> None:
        self.sock.close()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock``; ``ConnectionError`` when the peer closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 16))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def parse_vars(block: bytes) -> dict[str, str]:
    """A uwsgi vars block as a dict (latin-1, as the bytes come)."""
    pairs: dict[str, str] = {}
    offset = 0
    while offset < len(block):
        (key_len,) = struct.unpack_from("<H", block, offset)
        key = block[offset + 2 : offset + 2 + key_len].decode("latin-1")
        offset += 2 + key_len
        (value_len,) = struct.unpack_from("<H", block, offset)
        pairs[key] = block[offset + 2 : offset + 2 + value_len].decode("latin-1")
        offset += 2 + value_len
    return pairs


class ThreadedNode:
    """A TCP node on 127.0.0.1 served by a thread of the test, for behaviours no real app shows (breaking,
    stalling, scripted answers). Subclasses set their own attributes, then call ``__init__``, and write
    ``handle`` (run in the serving thread, one connection at a time, unless ``accepted`` is overridden); an
    ``OSError`` in it ends that connection only. ``close`` stops the thread and the listener."""

    #: seconds each accepted connection may block in one call
    connection_timeout = 30.0

    def __init__(self, *, port: int = 0, backlog: int = 64, buffer_size: int | None = None) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if buffer_size is not None:  # inherited by the accepted connections
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(backlog)
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"{type(self).__name__}-{self.port}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted(conn)

    def accepted(self, conn: socket.socket) -> None:
        """Serve ``conn`` (here, in the serving thread) and close it."""
        with conn:
            conn.settimeout(self.connection_timeout)
            try:
                self.handle(conn)
            except OSError:
                pass

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.listener.close()
