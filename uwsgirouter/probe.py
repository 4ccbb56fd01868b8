"""Send one uwsgi request and print the raw HTTP answer: ``python -m uwsgirouter.probe ADDR HOST[/PATH]``.

A debugging aid, like curl for the uwsgi protocol: it talks to a router or an instance directly,
without a web server in front. ADDR is ``host:port``, a UNIX socket path or ``@abstract``.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence

from uwsgirouter.protocol import encode_packet
from uwsgirouter.router.nodes import resolve


def request(address: str, target: str, timeout: float = 10.0) -> bytes:
    host, _, path = target.partition("/")
    path = "/" + path
    pairs = [
        (b"REQUEST_METHOD", b"GET"),
        (b"REQUEST_URI", path.encode()),
        (b"PATH_INFO", path.partition("?")[0].encode()),
        (b"QUERY_STRING", path.partition("?")[2].encode()),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"SERVER_NAME", host.encode()),
        (b"SERVER_PORT", b"80"),
        (b"REMOTE_ADDR", b"127.0.0.1"),
        (b"HTTP_HOST", host.encode()),
    ]
    family, sockaddr = resolve(address, allow_dns=True)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        sock.sendall(encode_packet(pairs))
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m uwsgirouter.probe ADDR HOST[/PATH]", file=sys.stderr)
        return 2
    try:
        answer = request(args[0], args[1])
    except (OSError, ValueError) as exc:
        print(f"probe: {args[0]}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(answer.decode("utf-8", "replace"))
    return 0 if answer else 1


if __name__ == "__main__":
    raise SystemExit(main())
