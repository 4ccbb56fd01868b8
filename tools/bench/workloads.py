"""What the benchmark sends: the workloads, their expected answers, and the checks made before measuring."""

from __future__ import annotations

import hashlib
import socket
import struct
from dataclasses import dataclass

INSTANCE = "bench"  # the backend app's name, part of the POST answer
POST_SIZE = 1 << 20


class BenchError(Exception):
    """A setup or sanity-check failure: reported in one clear message, then everything is torn down."""


@dataclass(frozen=True)
class Workload:
    """One kind of request. ``sequential`` ones go from the bench's own client straight to the router."""

    name: str
    label: str
    method: str
    path: str
    body: bytes = b""
    sequential: bool = False

    def expected_body(self) -> bytes:
        if self.method == "POST":
            md5 = hashlib.md5(self.body).hexdigest()
            return f"instance={INSTANCE} len={len(self.body)} md5={md5}\n".encode()
        return b"x" * int(self.path.rsplit("/", 1)[1])

    def lua(self) -> str:
        """wrk's script: the request (for a POST) and a done() hook printing wrk's summary as one JSON line."""
        head = ""
        if self.method == "POST":
            head = (
                'wrk.method = "POST"\n'
                f'wrk.body = string.rep("x", {len(self.body)})\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n'
            )
        return head + LUA_DONE


WORKLOADS = [
    Workload("get12", "GET 12 B", "GET", "/bytes/12"),
    Workload("get64k", "GET 64 KiB", "GET", "/bytes/65536"),
    Workload("post1m", "POST 1 MiB", "POST", "/post", b"x" * POST_SIZE),
    Workload("seq12", "sequential GET 12 B", "GET", "/bytes/12", sequential=True),
]

# One parseable line with wrk's own summary; latencies are in microseconds.
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, \"connect\": %d, \"read\": %d, " ..
    "\"write\": %d, \"status\": %d, \"timeout\": %d, \"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, " ..
    "\"mean_us\": %.1f, \"max_us\": %d}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def http_request(port: int, workload: Workload, timeout: float = 30.0) -> tuple[int, bytes, int]:
    """One keep-alive HTTP/1.1 request as wrk sends it; returns (status, body, bytes on the wire)."""
    head = f"{workload.method} {workload.path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if workload.method == "POST":
        head += f"Content-Length: {len(workload.body)}\r\nContent-Type: application/octet-stream\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n" + workload.body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise BenchError(f"connection closed before the response headers: {data[:200]!r}")
            data += chunk
        header, _, body = data.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" not in headers:
            raise BenchError(f"response without Content-Length: {lines}")
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body, len(header) + 4 + length


def uwsgi_packet(workload: Workload, port: int) -> bytes:
    """The uwsgi request nginx would send for ``workload`` (its stock uwsgi_params), for the sequential client."""
    pairs = {
        "QUERY_STRING": "",
        "REQUEST_METHOD": workload.method,
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": str(len(workload.body)) if workload.body else "",
        "REQUEST_URI": workload.path,
        "PATH_INFO": workload.path,
        "DOCUMENT_ROOT": "/",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_SCHEME": "http",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "SERVER_PORT": str(port),
        "SERVER_NAME": "localhost",
        "HTTP_HOST": f"127.0.0.1:{port}",
    }
    block = b"".join(
        struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode() for k, v in pairs.items()
    )
    return struct.pack("<BHB", 0, len(block), 0) + block + workload.body


def uwsgi_exchange(port: int, packet: bytes, timeout: float = 30.0) -> bytes:
    """Send one uwsgi request to 127.0.0.1:port and read the raw HTTP answer until the router closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(packet)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def answer_ok(raw: bytes, expected_body: bytes) -> bool:
    """Whether a raw HTTP answer is a 200 with exactly ``expected_body``."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    return bool(sep) and head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"] and body == expected_body
