"""Large bodies pass through the router intact, both ways, and its memory stays bounded while they do."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psutil
import pytest

from tests.support import (
    Proc,
    ProcessManager,
    Response,
    ThreadedNode,
    free_port,
    http_get,
    parse_vars,
    read_all,
    recv_exactly,
    request_vars,
    router_worker,
    tree_rss,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

SIZE = 10 * 1024 * 1024
RSS_BUDGET = 16 * 1024 * 1024


@dataclass
class RssSampler:
    """Samples the resident memory of a process tree in a thread, keeping the peak."""

    pid: int
    interval: float = 0.002
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        # Resolve the tree once; then each sample is one cheap /proc read per process.
        root = psutil.Process(self.pid)
        members = [root, *root.children(recursive=True)]
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, sum(member.memory_info().rss for member in members))
            except psutil.NoSuchProcess:
                self.peak = max(self.peak, tree_rss(self.pid))
                members = [root, *root.children(recursive=True)]
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Setup:
    router: Proc
    router_port: int
    http_port: int


@pytest.fixture
def setup(procs: ProcessManager) -> Iterator[Setup]:
    backend_port, router_port, http_port = free_port(), free_port(), free_port()
    procs.uwsgi_backend(f"127.0.0.1:{backend_port}", "big", wait_for=("127.0.0.1", backend_port))
    router = procs.router(
        "--fastrouter",
        f"127.0.0.1:{router_port}",
        "--fastrouter-to",
        f"127.0.0.1:{backend_port}",
        wait_for=("127.0.0.1", router_port),
    )
    procs.nginx(f"127.0.0.1:{router_port}", http_port)
    # Warm up both paths so that the baseline includes whatever the first request allocates.
    assert uwsgi_request(("127.0.0.1", router_port)).status == 200
    assert http_get(http_port).status == 200
    yield Setup(router, router_port, http_port)


def measured(router: Proc, transfer: Callable[[], None]) -> tuple[int, int]:
    """Run ``transfer`` while sampling the router tree's RSS; return (peak growth, growth after)."""
    baseline = tree_rss(router.pid)
    assert baseline > 0
    with RssSampler(router.pid) as sampler:
        transfer()
    assert sampler.samples > 0
    assert router.alive(), router.log()
    return sampler.peak - baseline, tree_rss(router.pid) - baseline


def check_big_response(response: Response) -> None:
    assert response.status == 200, response.raw[:300]
    assert int(response.headers["content-length"]) == SIZE
    assert len(response.body) == SIZE
    assert response.body == b"x" * SIZE


def check_upload(response: Response, body: bytes) -> None:
    assert response.status == 200, response.raw[:300]
    assert f"len={len(body)} md5={hashlib.md5(body).hexdigest()}".encode() in response.body


def upload_body() -> bytes:
    # Not one repeated byte: a dropped, duplicated or reordered chunk changes the md5.
    return bytes(range(256)) * (SIZE // 256) + b"tail"


def test_10mib_response_via_uwsgi_client(setup: Setup) -> None:
    responses: list[Response] = []
    peak, after = measured(
        setup.router,
        lambda: responses.append(
            uwsgi_request(("127.0.0.1", setup.router_port), request_vars(path=f"/bytes/{SIZE}"), timeout=30)
        ),
    )
    check_big_response(responses[0])
    assert peak < RSS_BUDGET, f"router tree RSS grew by {peak / 2**20:.1f} MiB during the transfer"
    assert after < RSS_BUDGET


def test_10mib_request_body_via_uwsgi_client(setup: Setup) -> None:
    body = upload_body()
    responses: list[Response] = []
    peak, after = measured(
        setup.router,
        lambda: responses.append(
            uwsgi_request(
                ("127.0.0.1", setup.router_port),
                request_vars(method="POST", path="/upload", body_len=len(body)),
                body,
                timeout=30,
            )
        ),
    )
    check_upload(responses[0], body)
    assert peak < RSS_BUDGET, f"router tree RSS grew by {peak / 2**20:.1f} MiB during the upload"
    assert after < RSS_BUDGET


def test_10mib_both_ways_through_nginx(setup: Setup) -> None:
    body = upload_body()
    responses: list[Response] = []

    def transfer() -> None:
        responses.append(http_get(setup.http_port, f"/bytes/{SIZE}", timeout=30))
        responses.append(http_get(setup.http_port, "/upload", method="POST", body=body, timeout=30))

    peak, after = measured(setup.router, transfer)
    check_big_response(responses[0])
    check_upload(responses[1], body)
    assert peak < RSS_BUDGET, f"router tree RSS grew by {peak / 2**20:.1f} MiB during the transfers"
    assert after < RSS_BUDGET


def test_stalled_reader_does_not_make_the_router_buffer_the_response(setup: Setup) -> None:
    """A client that stops reading for a while: the router must push back, not hold 10 MiB for it."""
    raw: list[bytes] = []

    def transfer() -> None:
        with socket.create_connection(("127.0.0.1", setup.router_port), timeout=30) as sock:
            sock.sendall(uwsgi_packet(request_vars(path=f"/bytes/{SIZE}")))
            # The behaviour under test: this client does not read for one second (not a wait for a condition).
            time.sleep(1.0)
            raw.append(read_all(sock))

    peak, after = measured(setup.router, transfer)
    check_big_response(Response.parse(raw[0]))
    assert peak < RSS_BUDGET, f"router tree RSS grew by {peak / 2**20:.1f} MiB while the client stalled"
    assert after < RSS_BUDGET


# -- backpressure: a slow peer on one side makes the router stop reading the other ----------------------------

#: What the router worker may grow by while 10 MiB wait on a slow peer: its relay buffers are a few KiB; without
#: backpressure it would hold most of the 10 MiB.
BACKPRESSURE_BUDGET = 3 * 1024 * 1024
#: Socket buffers of the test's own ends: small, so the kernel cannot absorb the transfer for the router.
SMALL_BUFFER = 64 * 1024
CHUNK = 64 * 1024


class SlowNode(ThreadedNode):
    """A uwsgi node in a thread of the test. ``/big``: answers 10 MiB, counting what it managed to send;
    ``/upload``: reads the head, then the body only once ``release`` is set; anything else: a short answer."""

    def __init__(self) -> None:
        self.sent = 0
        self.release = threading.Event()
        super().__init__(backlog=16, buffer_size=SMALL_BUFFER)

    def handle(self, conn: socket.socket) -> None:
        head = recv_exactly(conn, 4)
        pairs = parse_vars(recv_exactly(conn, int.from_bytes(head[1:3], "little")))
        path = pairs.get("PATH_INFO", "/")
        if path == "/big":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
            chunk = b"x" * CHUNK
            for _ in range(SIZE // CHUNK):
                conn.sendall(chunk)
                self.sent += CHUNK
            return
        body = b""
        if path == "/upload":
            self.release.wait(60)
            body = recv_exactly(conn, int(pairs.get("CONTENT_LENGTH") or 0))
        answer = f"len={len(body)} md5={hashlib.md5(body).hexdigest()}".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

    def close(self) -> None:
        self.release.set()
        super().close()


@pytest.fixture
def slow_node(procs: ProcessManager) -> Iterator[tuple[SlowNode, Proc, tuple[str, int]]]:
    node = SlowNode()
    try:
        port = free_port()
        address = ("127.0.0.1", port)
        router = procs.router("--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", node.address, wait_for=address)
        assert uwsgi_request(address).status == 200  # warm-up: the baseline includes a served request
        yield node, router, address
    finally:
        node.close()


def settled(progress: Callable[[], int], what: str) -> int:
    """Wait until ``progress()`` reached SIZE or has not moved for a second (the transfer is stuck on the slow
    peer); returns it."""
    last = [-1, time.monotonic()]

    def done() -> bool:
        value, now = progress(), time.monotonic()
        if value != last[0]:
            last[:] = [value, now]
        return value >= SIZE or now - last[1] >= 1.0

    wait_until(done, 60, interval=0.05, what=what)
    return progress()


def small_socket(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.settimeout(30)
    sock.connect(address)
    return sock


def test_a_client_that_does_not_read_stops_the_router_reading_the_node(
    slow_node: tuple[SlowNode, Proc, tuple[str, int]],
) -> None:
    node, router, address = slow_node
    worker = router_worker(router)
    baseline = worker.memory_info().rss
    with small_socket(address) as client:
        client.sendall(uwsgi_packet(request_vars(path="/big")))
        sent = settled(lambda: node.sent, "the node's answer to stall or end")
        grown = worker.memory_info().rss - baseline
        assert grown < BACKPRESSURE_BUDGET, (
            f"the router worker grew by {grown / 2**20:.1f} MiB for a client that reads nothing"
            f" (the node sent {sent / 2**20:.1f} MiB)"
        )
        assert sent < SIZE, "the whole answer left the node although the client read nothing"
        check_big_response(Response.parse(read_all(client)))


def test_a_node_that_does_not_read_stops_the_router_reading_the_client(
    slow_node: tuple[SlowNode, Proc, tuple[str, int]],
) -> None:
    node, router, address = slow_node
    worker = router_worker(router)
    baseline = worker.memory_info().rss
    body = upload_body()
    sent = [0]
    with small_socket(address) as client:
        client.sendall(uwsgi_packet(request_vars(method="POST", path="/upload", body_len=len(body))))

        def upload() -> None:
            try:
                for offset in range(0, len(body), CHUNK):
                    client.sendall(body[offset : offset + CHUNK])
                    sent[0] = offset + CHUNK
            except OSError:
                pass  # the test failed and closed the socket: its assertion says why

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        settled(lambda: sent[0], "the upload to stall or end")
        grown = worker.memory_info().rss - baseline
        node.release.set()
        uploader.join(30)
        assert not uploader.is_alive()
        response = Response.parse(read_all(client))
    assert grown < BACKPRESSURE_BUDGET, (
        f"the router worker grew by {grown / 2**20:.1f} MiB for a node that reads nothing"
        f" (the client had sent {sent[0] / 2**20:.1f} MiB)"
    )
    check_upload(response, body)


def test_fastrouter_buffer_size_bounds_what_the_router_holds_for_a_client_that_does_not_read(
    procs: ProcessManager,
) -> None:
    """The per-direction backlog follows --fastrouter-buffer-size: with 4 MiB the router takes (and holds) about
    4 MiB more of a node's answer for a client that reads nothing than with the default 4 KiB."""

    def node_sent(*extra: str) -> int:
        node = SlowNode()
        try:
            port = free_port()
            address = ("127.0.0.1", port)
            procs.router("--fastrouter", f"127.0.0.1:{port}", "--fastrouter-to", node.address, *extra,
                         wait_for=address)  # fmt: skip
            with small_socket(address) as client:
                client.sendall(uwsgi_packet(request_vars(path="/big")))
                return settled(lambda: node.sent, "the node's answer to stall")
        finally:
            node.close()

    default = node_sent()
    large = node_sent("--fastrouter-buffer-size", str(4 << 20))
    assert default < SIZE and large < SIZE
    assert large - default > 3 << 20, f"4 MiB buffers took {large - default} bytes more of the answer"
