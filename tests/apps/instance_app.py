"""WSGI app for interop tests: answers with its instance name; /big, /sleep, POST echo a checksum."""

import hashlib
import os
import time
from collections.abc import Iterable
from typing import Any
from wsgiref.types import StartResponse


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    instance = os.environ.get("INSTANCE", "?")
    if environ.get("REQUEST_METHOD") == "POST":
        data = environ["wsgi.input"].read()
        body = f"instance={instance} len={len(data)} md5={hashlib.md5(data).hexdigest()}\n".encode()
    elif path.startswith("/bytes/"):
        body = b"x" * int(path.split("/")[2])
    elif path.startswith("/sleep/"):
        time.sleep(float(path.split("/")[2]))
        body = f"instance={instance} slept\n".encode()
    else:
        body = (
            f"instance={instance} host={environ.get('HTTP_HOST', '')} modifier1={environ.get('uwsgi.modifier1', '')}\n"
        ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
