"""WSGI apps for the worker tests; run inside the forked worker (one path per behaviour)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse
from wsgiref.validate import validator

TEXT = [("Content-Type", "text/plain")]


def _arg(environ: dict[str, Any], name: str, default: str = "") -> str:
    query: str = environ.get("QUERY_STRING", "")
    return parse_qs(query).get(name, [default])[0]


def _touch(environ: dict[str, Any], suffix: str = "") -> None:
    marker = environ.get("HTTP_X_MARKER")
    if marker:
        Path(marker + suffix).write_text(str(os.getpid()))


def _stream(start_response: StartResponse, count: int, size: int, environ: dict[str, Any]) -> Iterator[bytes]:
    try:
        start_response("200 OK", TEXT)  # PEP 3333 allows calling it lazily, from the first iteration
        yield b""
        for i in range(count):
            yield bytes([65 + i % 26]) * size
    finally:
        _touch(environ, ".closed")


def demo(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/post":
        data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        body = f"len={len(data)} md5={hashlib.md5(data).hexdigest()}".encode()
    elif path == "/lines":
        body = b"|".join(line.rstrip(b"\n") for line in environ["wsgi.input"])
    elif path == "/stream":
        return _stream(start_response, int(_arg(environ, "n", "10")), int(_arg(environ, "size", "1000")), environ)
    elif path == "/write":
        write = start_response("200 OK", TEXT)
        write(b"written ")
        return [b"and ", b"returned"]
    elif path == "/raise":
        raise ValueError("boom from the app")
    elif path == "/exit":
        sys.exit(3)
    elif path == "/raise_late":

        def late() -> Iterator[bytes]:
            yield b"partial"
            raise ValueError("late boom")

        start_response("200 OK", TEXT)
        return late()
    elif path == "/sleep":
        try:
            _touch(environ)
            time.sleep(float(_arg(environ, "s", "1")))
        finally:
            _touch(environ, ".done")
        body = f"slept pid={os.getpid()}".encode()
    elif path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/environ":
        keys = ("wsgi.url_scheme", "uwsgi.version", "uwsgi.node", "SCRIPT_NAME", "HTTP_HOST", "uwsgi.modifier1")
        body = repr({k: environ.get(k) for k in keys}).encode()
    elif path == "/uwsgi":
        import uwsgi

        body = f"worker_id={uwsgi.worker_id()} numproc={uwsgi.numproc}".encode()
    elif path == "/noread":
        body = b"did not read the body"
    elif path == "/stderr":
        print("to wsgi.errors", file=environ["wsgi.errors"])
        body = b"ok"
    else:
        body = f"hello {environ['REQUEST_METHOD']} {path} {environ.get('QUERY_STRING', '')}".encode()
    start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
    return [body]


def raw(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Not validated: the file wrapper must reach the worker unwrapped to be sent with sendfile."""
    path = environ["PATH_INFO"]
    if path == "/raw/file":
        f = open(_arg(environ, "path"), "rb")  # noqa: SIM115 - closed by the worker through the wrapper
        f.seek(int(_arg(environ, "offset", "0")))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](f, 4096)
        return wrapper
    if path == "/raw/big":
        start_response("200 OK", TEXT)
        return (b"x" * (1 << 20) for _ in range(int(_arg(environ, "mib", "64"))))
    start_response("200", [])  # no reason phrase, no Content-Type: validator would refuse
    return [b"raw"]


validated = validator(demo)


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"].startswith("/raw/"):
        return raw(environ, start_response)
    if environ["PATH_INFO"] == "/file":  # the file wrapper through the validator: plain iteration
        f = open(_arg(environ, "path"), "rb")  # noqa: SIM115
        return validator(lambda e, s: (s("200 OK", TEXT), e["wsgi.file_wrapper"](f))[1])(environ, start_response)
    return validated(environ, start_response)
