"""WSGI app for the app-worker option tests: /pid, /sleep/SECONDS (a file in $MARK_DIR when it starts),
/grow/MB (kept), /import/MODULE, /ticker (starts a thread that writes to $MARK_DIR/ticks)."""

import importlib
import os
import threading
import time
from collections.abc import Iterable
from typing import Any
from wsgiref.types import StartResponse

_kept: list[bytearray] = []


def _tick(path: str) -> None:
    for _ in range(3000):
        with open(path, "a") as ticks:
            ticks.write("tick\n")
        time.sleep(0.01)


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/sleep/"):
        if "MARK_DIR" in os.environ:  # tells the test the request is in the app
            mark = os.path.join(os.environ["MARK_DIR"], f"{os.getpid()}-{threading.get_ident()}")
            open(mark, "w").close()
        time.sleep(float(path.split("/")[2]))
    elif path == "/ticker":  # a thread of the app's own, writing a line to $MARK_DIR/ticks every 10 ms
        threading.Thread(target=_tick, args=(os.path.join(os.environ["MARK_DIR"], "ticks"),), daemon=True).start()
    elif path.startswith("/grow/"):
        _kept.append(bytearray(int(path.split("/")[2]) * 1024 * 1024))  # zero pages that are written: resident
        for block in _kept[-1:]:
            block[::4096] = b"x" * len(block[::4096])
    elif path.startswith("/import/"):
        try:
            module = importlib.import_module(path.split("/")[2])
        except ImportError as exc:
            body = f"ImportError {exc}".encode()
            start_response("500 Internal Server Error", [("Content-Length", str(len(body)))])
            return [body]
        body = f"{module.VALUE} from {module.__file__}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    body = f"pid={os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
