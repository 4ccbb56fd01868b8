"""The seed's "Way 3" (cache), "Way 5" (code string), "Cheap mode and shared sockets" and "Post-buffering mode".

Every example runs as written, with the seed's addresses moved to 127.0.0.1 and free ports. The backends
are real uWSGI 2.0.31 instances (tests/apps/instance_app.py) or, where the test must see what reaches a
backend and when (modifier1 5, which real uWSGI refuses, or the timing of an upload), a scripted uwsgi
backend running in a thread of the test. docs/differences.md, "Cheap mode when the last node goes" (cheap mode never
cuts a request) and "The code-string mapper" (the
code-string mapper gets a str, may return str, bytes or None, and never kills the router) are covered.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest

from tests.support import (
    APPS,
    Proc,
    ProcessManager,
    Response,
    ThreadedNode,
    connect,
    free_port,
    parse_vars,
    read_all,
    recv_exactly,
    request_vars,
    router_worker,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
INSTANCE_APP = str(APPS / "instance_app.py")
KIB = 1 << 10
MIB = 1 << 20


# -- a scripted uwsgi backend: records what reaches it, and when --------------------------------------------


@dataclass
class Received:
    """One connection the scripted backend accepted."""

    accepted_at: float
    modifier1: int = -1
    modifier2: int = -1
    vars: dict[str, str] = field(default_factory=dict)
    head_at: float = 0.0
    body: bytearray = field(default_factory=bytearray)
    first_body_at: float = 0.0
    last_body_at: float = 0.0
    complete: bool = False

    @property
    def busy(self) -> float:
        """Seconds from the connection to the last request byte: how long a worker waited for the request."""
        return (self.last_body_at or self.head_at) - self.accepted_at


class ScriptedBackend(ThreadedNode):
    """A uwsgi backend on 127.0.0.1:<free port> in threads of the test; answers like instance_app.py.

    It records the header's modifier1 and the request's vars, body and timestamps. The body is read
    up to CONTENT_LENGTH; with the var ``HTTP_X_STREAM`` and no CONTENT_LENGTH it is read until the
    bytes ``END`` arrive (a streamed request).
    """

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.received: list[Received] = []
        self.lock = threading.Lock()
        super().__init__(port=port, backlog=256)

    def complete(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.complete]

    def accepted(self, conn: socket.socket) -> None:
        """Each connection in a thread of its own: requests overlap."""
        record = Received(time.monotonic())
        with self.lock:
            self.received.append(record)
        threading.Thread(target=self._handle, args=(conn, record), daemon=True).start()

    def _handle(self, conn: socket.socket, record: Received) -> None:
        with conn:
            conn.settimeout(30)
            try:
                modifier1, size, modifier2 = struct.unpack("<BHB", recv_exactly(conn, 4))
                record.vars = parse_vars(recv_exactly(conn, size))
                record.modifier1, record.modifier2, record.head_at = modifier1, modifier2, time.monotonic()
                length = int(record.vars.get("CONTENT_LENGTH") or 0)
                streamed = not length and "HTTP_X_STREAM" in record.vars
                while len(record.body) < length or (streamed and not record.body.endswith(b"END")):
                    data = conn.recv(min(1 << 16, length - len(record.body)) if length else 1 << 16)
                    if not data:
                        return
                    now = time.monotonic()
                    record.first_body_at = record.first_body_at or now
                    record.last_body_at = now
                    record.body += data
                record.complete = True
                body = (
                    f"instance={self.name} modifier1={modifier1} len={len(record.body)} "
                    f"md5={hashlib.md5(record.body).hexdigest()}\n"
                ).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                return


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedBackend]]:
    """Make scripted backends (``scripted(name, port=0)``); all are closed at teardown."""
    made: list[ScriptedBackend] = []

    def make(name: str, port: int = 0) -> ScriptedBackend:
        backend = ScriptedBackend(name, port)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


# -- small helpers ------------------------------------------------------------------------------------------


def router_port(procs: ProcessManager, *args: str) -> tuple[Proc, tuple[str, int]]:
    """``uwsgirouter --fastrouter 127.0.0.1:P ARGS``, waited for; returns the process and (host, P)."""
    port = free_port()
    address = (LOOPBACK, port)
    proc = procs.router("--fastrouter", f"{LOOPBACK}:{port}", *args, wait_for=address)
    return proc, address


def uwsgi_backend(procs: ProcessManager, name: str) -> int:
    """A real uWSGI instance serving instance_app.py as NAME on a free port; returns the port."""
    port = free_port()
    procs.uwsgi_backend(f"{LOOPBACK}:{port}", name, wait_for=(LOOPBACK, port))
    return port


def get(address: tuple[str, int], host: str, timeout: float = 10.0) -> Response:
    return uwsgi_request(address, request_vars(host), timeout=timeout)


def instance_of(response: Response) -> str | None:
    """NAME of an ``instance=NAME ...`` 200 answer (instance_app.py or a scripted backend), else None."""
    match = re.match(rb"instance=(\S+) ", response.body)
    return match.group(1).decode() if response.status == 200 and match else None


def post(address: tuple[str, int], body: bytes, host: str = "example.com", timeout: float = 30.0) -> Response:
    pairs = request_vars(host, "/upload", "POST", len(body))
    return uwsgi_request(address, pairs, body, timeout=timeout)


def md5_line(body: bytes) -> bytes:
    return f"len={len(body)} md5={hashlib.md5(body).hexdigest()}".encode()


def log_has(proc: Proc, pattern: str) -> bool:
    return re.search(pattern, proc.log(), re.MULTILINE) is not None


# == Way 5: --fastrouter-use-code-string ====================================================================

MEGAMAPPER = """\
domains = {}
domains['example.com'] = {'nodes': ('127.0.0.1:3031', '192.168.0.100:3032'), 'node': 0}
domains['unbit.it'] = {'nodes': ('127.0.0.1:3035,5', '192.168.0.100:3035,5'), 'node': 0}

DEFAULT_NODE = '192.168.0.1:1717'

def get(key):
    if key not in domains:
        return DEFAULT_NODE

    # get the node to forward requests to
    nodes = domains[key]['nodes']
    current_node = domains[key]['node']
    value = nodes[current_node]

    # round robin :P
    next_node = current_node + 1
    if next_node >= len(nodes):
        next_node = 0

    domains[key]['node'] = next_node

    return value
"""


def seed_text(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each seed address replaced in one pass; no 192.168 address may remain."""
    pattern = re.compile("|".join(re.escape(old) for old in sorted(replacements, key=len, reverse=True)))
    result = pattern.sub(lambda m: replacements[m.group(0)], text)
    assert "192.168" not in result
    return result


def test_way5_constant_mapper_as_written(procs: ProcessManager, tmp_path: Path) -> None:
    port = uwsgi_backend(procs, "mapped")
    (tmp_path / "mapper.py").write_text(f"def get(key):\n    return '127.0.0.1:{port}'\n")
    # uwsgi --fastrouter 127.0.0.1:3017 --fastrouter-use-code-string 0:mapper.py:get
    _, address = router_port(procs, "--fastrouter-use-code-string", "0:mapper.py:get")
    for host in ("example.com", "unbit.it", "anything.org"):
        response = get(address, host)
        assert response.status == 200, response.raw
        assert response.body.startswith(f"instance=mapped host={host} ".encode())


def test_way5_megamapper_round_robin_with_fallback_node(
    procs: ProcessManager, scripted: Callable[..., ScriptedBackend], tmp_path: Path
) -> None:
    first, second, fallback = (uwsgi_backend(procs, name) for name in ("first", "second", "fallback"))
    perl_a, perl_b = scripted("perl-a"), scripted("perl-b")  # real uWSGI refuses modifier1 5
    (tmp_path / "megamapper.py").write_text(
        seed_text(
            MEGAMAPPER,
            {
                "127.0.0.1:3031": f"127.0.0.1:{first}",
                "192.168.0.100:3032": f"127.0.0.1:{second}",
                "127.0.0.1:3035,5": f"{perl_a.address},5",
                "192.168.0.100:3035,5": f"{perl_b.address},5",
                "192.168.0.1:1717": f"127.0.0.1:{fallback}",
            },
        )
    )
    # uwsgi --fastrouter 127.0.0.1:3017 --fastrouter-use-code-string 0:megamapper.py:get
    _, address = router_port(procs, "--fastrouter-use-code-string", "0:megamapper.py:get")

    assert [instance_of(get(address, "example.com")) for _ in range(4)] == ["first", "second", "first", "second"]

    unbit = [get(address, "unbit.it") for _ in range(4)]
    assert [instance_of(r) for r in unbit] == ["perl-a", "perl-b", "perl-a", "perl-b"], [r.raw for r in unbit]
    assert [r.modifier1 for r in perl_a.complete() + perl_b.complete()] == [5, 5, 5, 5]

    for host in ("unknown.org", "www.example.com"):
        response = get(address, host)
        assert instance_of(response) == "fallback", response.raw
        assert f"host={host} ".encode() in response.body


D8_MAPPER = """\
import time

NODE = '127.0.0.1:{port}'


def get(key):
    if key == 'bytes.test':
        return NODE.encode()
    if key == 'none.test':
        return None
    if key == 'raise.test':
        raise RuntimeError('mapper exploded for ' + key)
    if key == 'slow.test':
        time.sleep(0.2)
    return NODE
"""


@pytest.fixture
def d8_router(procs: ProcessManager, tmp_path: Path) -> tuple[Proc, tuple[str, int]]:
    """A router whose code-string mapper returns bytes, None, raises or sleeps 0.2 s, by key."""
    port = uwsgi_backend(procs, "d8")
    (tmp_path / "d8mapper.py").write_text(D8_MAPPER.format(port=port))
    return router_port(procs, "--fastrouter-use-code-string", f"0:{tmp_path / 'd8mapper.py'}:get")


def test_d8_mapper_returning_bytes_works(d8_router: tuple[Proc, tuple[str, int]]) -> None:
    _, address = d8_router
    response = get(address, "bytes.test")
    assert response.status == 200, response.raw
    assert response.body.startswith(b"instance=d8 host=bytes.test ")


def test_d8_mapper_returning_none_gives_502(d8_router: tuple[Proc, tuple[str, int]]) -> None:
    _, address = d8_router
    response = get(address, "none.test")
    assert response.status == 502, response.raw
    assert b"none.test" in response.body
    assert instance_of(get(address, "str.test")) == "d8"


def test_d8_mapper_that_raises_gives_502_with_traceback_and_router_keeps_serving(
    d8_router: tuple[Proc, tuple[str, int]],
) -> None:
    proc, address = d8_router
    worker = router_worker(proc)
    for _ in range(3):
        response = get(address, "raise.test")
        assert response.status == 502, response.raw
        assert b"raise.test" in response.body
    wait_until(
        lambda: (
            "Traceback (most recent call last)" in proc.log()
            and "RuntimeError: mapper exploded for raise.test" in proc.log()
        ),
        5,
        what="the mapper's traceback in the router log",
    )
    for host in ("str.test", "bytes.test"):
        assert instance_of(get(address, host)) == "d8"
    assert proc.alive()
    assert router_worker(proc).pid == worker.pid, "the router process was replaced"


def test_d8_slow_mapper_is_logged_as_blocking_the_router(d8_router: tuple[Proc, tuple[str, int]]) -> None:
    proc, address = d8_router
    response = get(address, "slow.test")
    assert instance_of(response) == "d8", response.raw
    wait_until(
        lambda: any("slow.test" in line and "block" in line.lower() for line in proc.log().splitlines()),
        5,
        what="a log line saying the mapper for slow.test blocks the router",
    )
    get(address, "str.test")
    assert not any("str.test" in line and "block" in line.lower() for line in proc.log().splitlines())


# == Way 3: --fastrouter-use-cache ==========================================================================

FOOBAR = """\
import uwsgi
# Requests for example.com on port 8000 will go to 127.0.0.1:4040
uwsgi.cache_set("example.com:8000", "127.0.0.1:4040")
# Requests for unbit.it will go to 127.0.0.1:4040 with the modifier1 set to 5 (perl/PSGI)
uwsgi.cache_set("unbit.it", "127.0.0.1:4040,5")
"""


def cache_router(procs: ProcessManager, tmp_path: Path, backend_port: int) -> tuple[Proc, tuple[str, int]]:
    """foobar.py as written (4040 -> BACKEND_PORT) and the seed's command line, run in tmp_path."""
    (tmp_path / "foobar.py").write_text(FOOBAR.replace("4040", str(backend_port)))
    # uwsgi --fastrouter 127.0.0.1:3017 --fastrouter-use-cache --cache 100 --file foobar.py
    return router_port(procs, "--fastrouter-use-cache", "--cache", "100", "--file", "foobar.py")


def test_way3_cache_as_written_routes_by_host_and_port(procs: ProcessManager, tmp_path: Path) -> None:
    port = uwsgi_backend(procs, "cached")
    _, address = cache_router(procs, tmp_path, port)
    response = get(address, "example.com:8000")
    assert response.status == 200, response.raw
    assert response.body.startswith(b"instance=cached host=example.com:8000 ")
    for missing in ("example.com", "missing.org"):
        response = get(address, missing)
        assert response.status == 502, response.raw
        assert missing.encode() in response.body


def test_way3_cache_value_with_modifier1_5(
    procs: ProcessManager, scripted: Callable[..., ScriptedBackend], tmp_path: Path
) -> None:
    perl = scripted("perl")
    _, address = cache_router(procs, tmp_path, perl.port)
    assert instance_of(get(address, "unbit.it")) == "perl"
    assert instance_of(get(address, "example.com:8000")) == "perl"
    assert [(r.vars["HTTP_HOST"], r.modifier1, r.modifier2) for r in perl.complete()] == [
        ("unbit.it", 5, 0),
        ("example.com:8000", 0, 0),
    ]


def test_way3_named_cache2_and_several_nodes_alternate(procs: ProcessManager, tmp_path: Path) -> None:
    one, two, wrong = (uwsgi_backend(procs, name) for name in ("one", "two", "wrong"))
    (tmp_path / "fill.py").write_text(
        "import uwsgi\n"
        f'uwsgi.cache_set("example.com", "127.0.0.1:{wrong}", 0, "other")\n'
        f'uwsgi.cache_set("example.com", "127.0.0.1:{one}|127.0.0.1:{two}", 0, "mycache")\n'
    )
    # "other" is defined first, so it is the default cache: only --fastrouter-use-cache=mycache reaches one|two
    _, address = router_port(
        procs,
        "--cache2",
        "name=other,items=10",
        "--cache2",
        "name=mycache,items=10",
        "--fastrouter-use-cache=mycache",
        "--file",
        "fill.py",
    )
    answers = [instance_of(get(address, "example.com")) for _ in range(6)]
    assert set(answers) == {"one", "two"}, answers
    assert all(a != b for a, b in pairwise(answers)), f"not alternating: {answers}"
    assert get(address, "unbit.it").status == 502


# == Cheap mode and shared sockets ==========================================================================

CHEAP_INI = """\
[uwsgi]
;create a shared socket (the webserver will connect to it)
shared-socket = 127.0.0.1:{port}

; bind the fastrouter to the shared socket
fastrouter = =0
; bind an instance to the same socket
socket = =0

; having a master is always a good thing...
master = true
; our subscription server
fastrouter-subscription-server = 127.0.0.1:{subscription_port}
; our app
wsgi-file = {app}
; a bunch of processes
processes = 4
; and put the fastrouter in cheap mode
fastrouter-cheap = true
; nodes that stop announcing themselves expire after 3 s (the default is 17)
subscription-tolerance = 3
"""

LOCAL_APP = """\
def application(environ, start_response):
    body = b"local\\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

TOLERANCE_S = 3.0
#: subscribe/unsubscribe cycles: the races below show in most cycles, so five make a pass by luck unlikely
CYCLES = 5


class FailedRequests(AssertionError):
    """Requests of the steady loop that did not get a 200 from the local app or the remote node."""


class RequestLoop:
    """One thread sending sequential requests for HOST; every outcome is kept with its start time."""

    def __init__(self, address: tuple[str, int], host: str) -> None:
        self.address = address
        self.host = host
        self.outcomes: list[tuple[float, float, str]] = []  # (start, duration, outcome)
        self.events: list[tuple[float, str]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="request-loop", daemon=True)

    def __enter__(self) -> RequestLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(20)

    def _run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                response = get(self.address, self.host, timeout=10)
            except OSError as exc:
                outcome = f"connection error after {time.monotonic() - started:.2f} s: {exc!r}"
            else:
                if response.status == 200 and response.body == b"local\n":
                    outcome = "local"
                elif instance_of(response) == "remote":
                    outcome = "remote"
                else:
                    outcome = f"failed: {response.raw[:300]!r}"
            self.outcomes.append((started, time.monotonic() - started, outcome))

    def mark(self, event: str) -> float:
        """Note a transition (for the failure report); returns its time."""
        now = time.monotonic()
        self.events.append((now, event))
        return now

    def since(self, when: float) -> list[str]:
        return [outcome for started, _, outcome in list(self.outcomes) if started >= when]

    def failures(self) -> list[tuple[float, float, str]]:
        """(start, duration, outcome) of every failed request."""
        return [entry for entry in list(self.outcomes) if entry[2] not in ("local", "remote")]

    def check(self) -> None:
        """Raise FailedRequests naming each failed request and the last transition before it."""
        failures = self.failures()
        if not failures:
            return
        lines = []
        for started, took, outcome in failures[:5]:
            before = [(t, e) for t, e in self.events if t <= started + took]
            when, event = before[-1] if before else (0.0, "start")
            lines.append(f"{started - when:+.3f} s to {started + took - when:+.3f} s after {event!r}: {outcome}")
        raise FailedRequests(f"{len(failures)} of {len(self.outcomes)} requests failed:\n" + "\n".join(lines))


@dataclass
class CheapSite:
    proc: Proc
    address: tuple[str, int]
    subscription: str


def start_cheap_site(procs: ProcessManager, tmp_path: Path) -> CheapSite:
    port, subscription_port = free_port(), free_port(socket.SOCK_DGRAM)
    (tmp_path / "myheavyapp.wsgi").write_text(LOCAL_APP)
    ini = tmp_path / "cheap.ini"
    ini.write_text(CHEAP_INI.format(port=port, subscription_port=subscription_port, app=tmp_path / "myheavyapp.wsgi"))
    proc = procs.router(str(ini), wait_for=(LOOPBACK, port))
    site = CheapSite(proc, (LOOPBACK, port), f"{LOOPBACK}:{subscription_port}")
    response = get(site.address, "example.com")
    assert response.status == 200 and response.body == b"local\n", response.raw
    return site


def start_remote(procs: ProcessManager, site: CheapSite) -> Proc:
    """A uwsgirouter instance announcing itself for example.com every second."""
    return procs.router(
        "--socket",
        f"{LOOPBACK}:0",
        "-M",
        "--subscribe-to",
        f"{site.subscription}:example.com",
        "--subscribe-freq",
        "1",
        "--wsgi-file",
        INSTANCE_APP,
        env={"INSTANCE": "remote"},
    )


def wait_both_answer(loop: RequestLoop, since: float) -> None:
    """Poll until the remote node answers, then until both it and the local app answer."""
    wait_until(lambda: "remote" in loop.since(since), 15, what="a remote answer")
    remote_at = time.monotonic()
    wait_until(lambda: {"local", "remote"} <= set(loop.since(remote_at)), 15, what="the local app and the remote node")


def wait_only_local(loop: RequestLoop, since: float, count: int = 30) -> None:
    """The first COUNT answers from SINCE on are all the local app's (failures are reported by check())."""
    wait_until(lambda: len(loop.since(since)) >= count, 20, what=f"{count} answers")
    answers = [a for a in loop.since(since)[:count] if a in ("local", "remote")]
    assert set(answers) == {"local"}, answers


def test_cheap_mode_only_local_app_answers_while_no_node(procs: ProcessManager, tmp_path: Path) -> None:
    site = start_cheap_site(procs, tmp_path)
    with RequestLoop(site.address, "example.com") as loop:
        wait_only_local(loop, 0.0, 50)
    loop.check()
    # the router may start after the app workers answered the first requests: poll for its line
    wait_until(lambda: log_has(site.proc, r"no more nodes available\. Going cheap\.\.\.$"), 10, what="going cheap")


def test_cheap_mode_node_subscribes_then_unsubscribes_without_a_failed_request(
    procs: ProcessManager, tmp_path: Path
) -> None:
    site = start_cheap_site(procs, tmp_path)
    with RequestLoop(site.address, "example.com") as loop:
        wait_only_local(loop, 0.0, 20)
        for cycle in range(CYCLES):
            remote = start_remote(procs, site)
            wait_both_answer(loop, loop.mark(f"remote {cycle} started"))
            loop.mark(f"SIGTERM to remote {cycle}")
            remote.signal(signal.SIGTERM)  # graceful stop: the instance unsubscribes
            assert remote.wait(20) == 0, remote.log()
            wait_only_local(loop, loop.mark(f"remote {cycle} exited"))
    assert len(re.findall(r"(?m)leaving cheap mode\.\.\.$", site.proc.log())) == CYCLES, site.proc.log()
    loop.check()


def test_cheap_mode_killed_node_expires_without_a_failed_request(procs: ProcessManager, tmp_path: Path) -> None:
    site = start_cheap_site(procs, tmp_path)
    with RequestLoop(site.address, "example.com") as loop:
        wait_only_local(loop, 0.0, 20)
        remote = start_remote(procs, site)
        wait_both_answer(loop, loop.mark("remote started"))
        loop.mark("kill -9 of remote")
        os.killpg(remote.pid, signal.SIGKILL)
        remote.wait(10)
        expired = loop.mark("remote killed") + TOLERANCE_S + 1.0
        wait_until(lambda: time.monotonic() > expired, TOLERANCE_S + 5, what="the subscription tolerance")
        wait_only_local(loop, loop.mark("tolerance over"))
        # a node coming back is used again
        start_remote(procs, site)
        wait_both_answer(loop, loop.mark("remote restarted"))
    loop.check()


# == Post-buffering mode ====================================================================================
# == Post-buffering mode ====================================================================================


def post_buffering_router(
    procs: ProcessManager, backend: str, buffer_dir: Path | None, *extra: str
) -> tuple[Proc, tuple[str, int]]:
    args = ["--fastrouter-to", backend, *extra]
    if buffer_dir is not None:
        args += ["--fastrouter-post-buffering", "8192", "--fastrouter-post-buffering-dir", str(buffer_dir)]
    return router_port(procs, *args)


def slow_upload(address: tuple[str, int], body: bytes, seconds: float, steps: int = 30) -> Response:
    """Send the head at once and BODY in STEPS chunks spread over SECONDS, then read the answer."""
    chunk = -(-len(body) // steps)
    with connect(address, 30) as sock:
        sock.sendall(uwsgi_packet(request_vars("example.com", "/upload", "POST", len(body))))
        for offset in range(0, len(body), chunk):
            time.sleep(seconds / steps)
            sock.sendall(body[offset : offset + chunk])
        return Response.parse(read_all(sock))


def buffering_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "postbuf"
    directory.mkdir()
    return directory


@pytest.mark.parametrize("post_buffering", [True, False], ids=["post-buffering", "streaming"])
def test_slow_upload_holds_the_backend_only_without_post_buffering(
    procs: ProcessManager, scripted: Callable[..., ScriptedBackend], tmp_path: Path, post_buffering: bool
) -> None:
    backend = scripted("app")
    _, address = post_buffering_router(procs, backend.address, buffering_dir(tmp_path) if post_buffering else None)
    body = os.urandom(MIB)
    started = time.monotonic()
    response = slow_upload(address, body, 3.0)
    took = time.monotonic() - started
    assert took >= 3.0
    assert response.status == 200, response.raw
    assert md5_line(body) in response.body
    (record,) = backend.complete()
    if post_buffering:
        assert record.accepted_at >= started + 2.9, "the backend was connected before the body was complete"
        # a small part of the upload's time (streamed, the backend waits for all of it)
        assert record.busy < took / 10, f"the backend waited {record.busy:.3f} s for the request ({took:.1f} s)"
    else:
        assert record.busy > 2.5, f"a streamed upload kept the backend busy only {record.busy:.3f} s"


@pytest.mark.parametrize("size", [8 * KIB, 8 * KIB + 1, 10 * MIB], ids=["8KiB", "8KiB+1", "10MiB"])
def test_post_buffered_bodies_arrive_intact(procs: ProcessManager, tmp_path: Path, size: int) -> None:
    """Each side of the 8 KiB limit (memory or file: see the test after this one) and a large body."""
    port = uwsgi_backend(procs, "app")
    _, address = post_buffering_router(procs, f"{LOOPBACK}:{port}", buffering_dir(tmp_path))
    body = os.urandom(size)
    response = post(address, body)
    assert response.status == 200, response.raw
    assert response.body == b"instance=app " + md5_line(body) + b"\n"


def open_files_in(pid: int, directory: Path) -> list[str]:
    """Files (deleted or not) that process PID holds open in DIRECTORY."""
    found = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found


def router_has_read(router_port: int, client: socket.socket) -> bool:
    """Every byte ``client`` sent so far was read by the router: none waits in the client's send queue, nor in
    the receive queue of the router's end of the connection (``/proc/net/tcp``)."""
    unsent = struct.unpack("i", fcntl.ioctl(client.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    if unsent:
        return False
    local, remote = f":{router_port:04X}", f":{client.getsockname()[1]:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(local) and fields[2].endswith(remote):
                return int(fields[4].split(":")[1], 16) == 0
    return False


def test_post_buffering_holds_up_to_n_bytes_in_memory_then_an_unlinked_file(
    procs: ProcessManager, tmp_path: Path
) -> None:
    """``--fastrouter-post-buffering 8192``: while a body is incomplete, its first 8192 bytes are in memory (no
    file in the directory, none open in the router worker); at byte 8193 it moves to a temporary file that is
    open in the worker yet already unlinked (``/proc/PID/fd`` shows it "(deleted)" in the directory)."""
    port = uwsgi_backend(procs, "app")
    directory = buffering_dir(tmp_path)
    proc, address = post_buffering_router(procs, f"{LOOPBACK}:{port}", directory)
    worker = router_worker(proc)
    body = os.urandom(8 * KIB + 1000)
    with connect(address, 30) as sock:
        sock.sendall(uwsgi_packet(request_vars("example.com", "/upload", "POST", len(body))) + body[: 8 * KIB])
        wait_until(lambda: router_has_read(address[1], sock), 10, what="the router to read the first 8 KiB")
        assert open_files_in(worker.pid, directory) == [], (
            "the first 8 KiB of a body went to a file (up to N bytes stay in memory)"
        )
        assert os.listdir(directory) == []

        sock.sendall(body[8 * KIB : 8 * KIB + 1])  # one byte over the limit, and the client is still sending
        wait_until(lambda: router_has_read(address[1], sock), 10, what="the router to read byte 8193")
        held = open_files_in(worker.pid, directory)
        assert len(held) == 1 and held[0].endswith(" (deleted)"), held
        assert os.listdir(directory) == [], "the buffer file is visible on disk"

        *pieces, last = [body[offset : offset + 250] for offset in range(8 * KIB + 1, len(body), 250)]
        for piece in pieces:  # the rest, in slow pieces: the same unlinked file all along
            sock.sendall(piece)
            wait_until(lambda: router_has_read(address[1], sock), 10, what="the router to read the next piece")
            assert open_files_in(worker.pid, directory) == held and os.listdir(directory) == []
        sock.sendall(last)
        response = Response.parse(read_all(sock))
    assert response.status == 200, response.raw
    assert response.body == b"instance=app " + md5_line(body) + b"\n"
    wait_until(lambda: not open_files_in(worker.pid, directory), 5, what="the buffer file to be closed")
    assert os.listdir(directory) == []


def cut_upload(address: tuple[str, int], size: int) -> None:
    """Announce SIZE bytes, send half of them, and go away."""
    with connect(address, 10) as sock:
        sock.sendall(uwsgi_packet(request_vars("example.com", "/upload", "POST", size)) + os.urandom(size // 2))


def test_post_buffering_leaves_no_file_after_uploads_cut_midway(
    procs: ProcessManager, scripted: Callable[..., ScriptedBackend], tmp_path: Path
) -> None:
    backend = scripted("app")
    directory = buffering_dir(tmp_path)
    proc, address = post_buffering_router(procs, backend.address, directory)
    worker = router_worker(proc)
    size = 100 * KIB

    # An upload in progress is buffered in the directory given (and nothing reaches the backend yet)...
    with connect(address, 10) as sock:
        sock.sendall(uwsgi_packet(request_vars("example.com", "/upload", "POST", size)) + os.urandom(size // 2))
        wait_until(lambda: open_files_in(worker.pid, directory), 5, what="the upload's buffer file in the directory")
        assert not backend.received
    # ...and its file is gone once the client has gone away.
    wait_until(lambda: not open_files_in(worker.pid, directory), 5, what="the cut upload's file to be closed")

    def upload(number: int) -> Response | None:
        if number % 2:
            cut_upload(address, size)
            return None
        body = os.urandom(size)
        response = post(address, body)
        assert response.status == 200, response.raw
        assert md5_line(body) in response.body
        return response

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(upload, range(100)))
    assert sum(r is not None for r in results) == 50

    wait_until(
        lambda: not open_files_in(worker.pid, directory) and not os.listdir(directory),
        10,
        what="no buffer file left, open or on disk",
    )
    assert len(backend.complete()) == 50
    assert len(backend.received) == 50, "a cut upload reached the backend"
    assert proc.alive() and router_worker(proc).pid == worker.pid
    body = os.urandom(size)
    assert md5_line(body) in post(address, body).body


def test_post_buffering_request_without_content_length_is_streamed(
    procs: ProcessManager, scripted: Callable[..., ScriptedBackend], tmp_path: Path
) -> None:
    backend = scripted("app")
    _, address = post_buffering_router(procs, backend.address, buffering_dir(tmp_path))
    with connect(address, 10) as sock:
        sock.sendall(uwsgi_packet(request_vars("example.com", "/stream", "POST", HTTP_X_STREAM="1")))
        (record,) = wait_until(lambda: backend.received if backend.received and backend.received[0].head_at else None)
        assert record.vars["PATH_INFO"] == "/stream"
        sock.sendall(b"part one, ")
        wait_until(lambda: record.body == b"part one, ", 5, what="the first part at the backend")
        sock.sendall(b"part two. END")
        response = Response.parse(read_all(sock))
    assert response.status == 200, response.raw
    assert md5_line(b"part one, part two. END") in response.body
    # and a plain GET (no body) goes through as usual
    assert instance_of(get(address, "example.com")) == "app"
