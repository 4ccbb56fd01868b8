"""The app worker: serves a WSGI app over the uwsgi protocol, one request at a time, like uWSGI's default
(with ``--threads N``, one request at a time on each of N threads: see ``cores``).

Many workers share the listening sockets and race on accept (the losers get BlockingIOError). Per
connection: read the head (``--buffer-size`` bounds the vars block, ``--socket-timeout`` bounds the
wait), run the app, write a raw HTTP response (no uwsgi header), close. The body is read only when
the app asks for it. What uWSGI 2.0.31 does is kept where apps or proxies can see it (checked against
the binary): environ keys, response bytes, reason phrases for bare codes, refusal of oversized heads,
of too many vars and of unknown modifiers, the request log line, a worker that dies on sys.exit().
Deliberate differences: an app that fails before sending anything gets a 500 (uWSGI sends nothing);
SCRIPT_NAME defaults to ''; REQUEST_SCHEME counts for wsgi.url_scheme; an unread body up to 1 MiB
is drained so closing does not reset the connection under the response.

Signals only set flags (the loop acts on them): SIGTERM, SIGHUP and SIGUSR2 (the master's "retire")
finish the current request then exit 0; SIGINT and SIGQUIT exit at once, interrupting the app. SIGTSTP only
wakes the loop to read the instance's pause switch (``pause``): paused, the worker finishes the request in
hand and accepts nothing until it is resumed.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import Any
from wsgiref.types import WSGIApplication

from uwsgirouter import uwsgi_module
from uwsgirouter.arbiter import WORKER_RECYCLED
from uwsgirouter.config import Config
from uwsgirouter.logs import RequestLog
from uwsgirouter.pause import PauseSwitch
from uwsgirouter.protocol import (
    Body,
    ConnectionClosed,
    RemoteProtocolError,
    RequestHead,
    RequestReader,
    content_length,
)
from uwsgirouter.ratelog import LogLimiter
from uwsgirouter.sock import Listener
from uwsgirouter.workers.base import BaseWorker, Beat
from uwsgirouter.workers.cores import CorePool, Recycle
from uwsgirouter.workers.environ import (
    READ_CHUNK,
    ClientDisconnected,
    FileWrapper,
    InputStream,
    _printable,
    build_environ,
)
from uwsgirouter.workers.response import Response

__all__ = ["ClientDisconnected", "FileWrapper", "InputStream", "WsgiWorker", "build_environ"]

log = logging.getLogger("uwsgirouter.wsgi")
#: lines a client can cause (bad heads, dropped connections, app errors) are rate-limited
_notes = LogLimiter(log)

#: Body bytes the app left unread that we still read and discard, so closing does not reset the
#: connection (a reset can make the client lose the response). Larger leftovers are not worth it.
DRAIN_LIMIT = 1 << 20
PING_MODIFIER1 = 100
PONG = bytes((PING_MODIFIER1, 0, 0, 1))  # modifier1 100, empty vars, modifier2 1
#: Served as WSGI: 0, and 30 (SCRIPT_NAME is stripped from PATH_INFO).
WSGI_MODIFIERS = (0, 30)
IDLE_POLL_MS = 1000
ACCEPT_PAUSE_S = 0.1
#: run()'s status after the app called sys.exit(): not a boot failure, so the master respawns.
APP_EXIT_STATUS = 1


class _Interrupted(BaseException):
    """Raised by the SIGINT/SIGQUIT handler inside a request so the app unwinds at once."""


class WsgiWorker(BaseWorker):
    """One app worker process: ``init_process()`` serves until told to stop and returns the exit status.

    The heartbeat is sent at least once a second while idle and right before and after each request.
    """

    kind = "worker"
    RECORDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2, signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP)
    IGNORED = (signal.SIGUSR1, signal.SIGPIPE)

    def __init__(
        self,
        config: Config,
        listeners: Sequence[Listener],
        app: WSGIApplication,
        worker_id: int,
        beat: Beat | None = None,
        pause: PauseSwitch | None = None,
    ) -> None:
        super().__init__(config, worker_id, beat)
        #: the instance's pause switch, set by the master (None: never paused)
        self.pause = pause
        self.paused = False
        self.listeners = list(listeners)
        self.app = app
        self.worker_id = worker_id
        self.buffer_size: int = config.buffer_size
        self.max_pairs: int = 2 * config.max_vars
        self.timeout: float | None = float(config.socket_timeout) or None
        self.request_log = RequestLog(config)
        self.node = socket.gethostname().encode("utf-8", "surrogateescape")
        self.app_requests = 0
        self.exit_status = 0
        self._in_request = False
        self.threads: int = config.threads
        #: when each core's request started (a core is a thread; core 0 alone without --threads)
        self._starts: dict[int, float] = {}
        self._lock = threading.Lock()  # cores share the counters and the heartbeat
        self.born = time.monotonic()
        self.recycle = Recycle(config, worker_id)

    # -- signals ---------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Record; SIGINT/SIGQUIT also unwind a running request (exit at once means now)."""
        if signum == signal.SIGTSTP:
            return  # the master changed the pause switch: the wakeup pipe makes the loop read it
        if signum in (signal.SIGINT, signal.SIGQUIT):
            self.exit_now = True
            if self._in_request:
                self._in_request = False
                raise _Interrupted
        else:
            self.stopping = True

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until a signal or the master's death says stop: 0, 1 if the app called sys.exit(), or
        ``WORKER_RECYCLED`` when --max-requests or --reload-on-rss says so."""
        uwsgi_module.set_worker_id(self.worker_id)
        if self.threads > 1:
            CorePool(self, self.threads).run()
            return self._stopped()
        poller = select.poll()
        poller.register(self._wakeup_r, select.POLLIN)
        by_fd = {listener.fileno(): listener.sock for listener in self.listeners}
        listening = False
        try:
            while not (self.stopping or self.exit_now):
                self.beat_now()
                _notes.flush()  # the count of lines left out is written even when the flood has stopped
                if self.master_gone():
                    break
                if self.paused_now() == listening:  # paused: wait on the wakeup pipe alone
                    listening = not listening
                    for fd in by_fd:
                        if listening:
                            poller.register(fd, select.POLLIN)
                        else:
                            poller.unregister(fd)
                ready = [fd for fd, _ in poller.poll(IDLE_POLL_MS)]
                if self._wakeup_r in ready:
                    self.drain_wakeup()
                for fd in ready:
                    if self.stopping or self.exit_now or self.paused_now():
                        break
                    sock = by_fd.get(fd)
                    if sock is not None:
                        self.accept_and_serve(sock)
        except _Interrupted:
            pass
        return self._stopped()

    def paused_now(self) -> bool:
        """Read the pause switch (between requests only); a change is logged as uWSGI does."""
        paused = self.pause is not None and self.pause.on
        if paused != self.paused:
            self.paused = paused
            log.info("*** worker %d %s ***", self.worker_id, "suspended" if paused else "resumed")
        return paused

    def _stopped(self) -> int:
        if self.exit_now:
            log.info("worker %d: immediate stop", self.worker_id)
        elif self.stopping and self.exit_status != WORKER_RECYCLED:
            log.info("worker %d: graceful stop after %d request(s)", self.worker_id, self.requests_served)
        return self.exit_status

    def beat_now(self) -> None:
        """The heartbeat, from whichever core or the main loop (one at a time: a slot has one writer)."""
        with self._lock:
            self.heartbeat()

    def _request_started(self, core: int) -> float:
        start = time.monotonic()
        with self._lock:
            self._starts[core] = start
            self.busy_since = min(self._starts.values())
            self.requests_served += 1
            self.heartbeat()
        return start

    def _request_ended(self, core: int) -> None:
        """Not busy on this core any more; recycle the worker once it has served its share."""
        with self._lock:
            self._starts.pop(core, None)
            self.busy_since = min(self._starts.values(), default=0.0)
            self.heartbeat()
            if not self.stopping and self.recycle.due(self.requests_served, self.born):
                log.info("...The work of process %d is done. Seeya!", os.getpid())
                self.stopping, self.exit_status = True, WORKER_RECYCLED
        if self.stopping and self.threads > 1:
            self.wake()  # the main thread tells the other cores

    def accept_and_serve(self, listener: socket.socket, core: int = 0) -> None:
        """Accept one connection on ``listener`` if one is still there and serve it (on ``core``)."""
        try:
            client, _ = listener.accept()
        except BlockingIOError:
            return  # another worker won the race
        except OSError as exc:
            if exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR):
                _notes.error("cannot accept a connection: %s; pausing briefly", exc.strerror or exc)
                time.sleep(ACCEPT_PAUSE_S)  # EMFILE and the like: never spin
            return
        self._in_request = self.threads == 1  # SIGINT unwinds a request on the main thread only
        try:
            client.settimeout(self.timeout)
            self._serve(client, core)
        except Exception:
            _notes.exception("internal error while serving a connection; the worker goes on")
        finally:
            self._in_request = False
            client.close()
            if core in self._starts:
                self._request_ended(core)

    # -- one connection --------------------------------------------------------------------------

    def _read_head(self, client: socket.socket) -> tuple[RequestHead, bytes] | None:
        """Head and the body bytes that came with it; None (after logging if worth it) to just close."""
        reader = RequestReader(self.buffer_size)
        first = b""
        received = 0
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            if deadline is not None:
                client.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = client.recv(READ_CHUNK)
            except TimeoutError:
                _notes.warning("timeout reading a request head (%d bytes received)", received)
                return None
            except OSError:
                return None
            received += len(data)
            if len(first) < 4:
                first += data[: 4 - len(first)]
            try:
                reader.receive_data(data)
                event = reader.next_event()
            except RemoteProtocolError as exc:
                if exc.error_status_hint == 431:
                    size = first[1] | first[2] << 8
                    _notes.error("invalid request block size: %d (max %d)...skip", size, self.buffer_size)
                else:
                    _notes.error("invalid uwsgi request: %s", exc)
                return None
            if isinstance(event, ConnectionClosed):
                return None
            if isinstance(event, RequestHead):
                client.settimeout(self.timeout)
                rest = reader.next_event()
                return event, rest.data if isinstance(rest, Body) else b""

    def _serve(self, client: socket.socket, core: int) -> None:
        got = self._read_head(client)
        if got is None:
            return
        head, initial = got
        start = self._request_started(core)
        wall = time.time()
        if head.modifier1 not in WSGI_MODIFIERS:
            if head.modifier1 == PING_MODIFIER1:
                log.info("PING")
                try:
                    client.sendall(PONG)
                except OSError:
                    pass
            else:
                _notes.error("-- unavailable modifier requested: %d --", head.modifier1)
            return
        if len(head.vars) > self.max_pairs:
            _notes.error("too many vars: %d (max %d)...skip", len(head.vars), self.max_pairs)
            return
        try:
            length = content_length(head.vars)
        except RemoteProtocolError as exc:
            _notes.error("%s...skip", exc)
            return
        stream = InputStream(client.recv, initial, length)
        environ = build_environ(head, stream, self.node)
        response = Response(client, head.get(b"SERVER_PROTOCOL") or b"HTTP/1.0")
        with self._lock:
            self.app_requests += 1
        self._run_app(environ, response, head)
        with self._lock:
            self.counters.request_done(time.monotonic() - start, response.head_size + response.body_size)
        if self.request_log.wants(response.status_code, time.monotonic() - start):
            self._log_request(head, response, start, wall, core)
        if not response.failed and 0 < stream.unread <= DRAIN_LIMIT:
            self._drain_body(client, stream.unread)

    def _run_app(self, environ: dict[str, Any], response: Response, head: RequestHead) -> None:
        """Call the app and send what it returns; every failure is logged, none leaves this method."""
        try:
            result: Iterable[bytes] = self.app(environ, response.start_response)
            try:
                if not (isinstance(result, FileWrapper) and response.sendfile(result)):
                    write = response.write
                    for chunk in result:
                        write(chunk)
                response.finish()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except ClientDisconnected as exc:
            remote = _printable(head.get(b"REMOTE_ADDR") or b"-")
            _notes.warning("%s (from %s): %s", self._what(head), remote, exc)
        except SystemExit as exc:  # as under uWSGI, the worker dies (apps use it to get recycled)
            log.error("the app called sys.exit(%r) while serving %s; worker exits", exc.code, self._what(head))
            self.stopping, self.exit_status = True, APP_EXIT_STATUS
            if not response.head_sent and not response.failed:
                response.internal_error()
        except Exception:
            with self._lock:
                self.counters.exceptions += 1
            _notes.exception("exception in the app while serving %s:", self._what(head))
            if not response.head_sent and not response.failed:
                response.internal_error()

    @staticmethod
    def _what(head: RequestHead) -> str:
        method = _printable(head.get(b"REQUEST_METHOD") or b"-")
        return f"{method} {_printable(head.get(b'REQUEST_URI') or head.get(b'PATH_INFO') or b'-')}"

    def _drain_body(self, client: socket.socket, left: int) -> None:
        """Read and drop the body the app did not read, so closing does not reset the connection."""
        try:
            client.shutdown(socket.SHUT_WR)
            while left > 0:
                data = client.recv(min(left, READ_CHUNK))
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass

    def _log_request(self, head: RequestHead, response: Response, start: float, wall: float, core: int) -> None:
        """uWSGI's request line; '{N vars in M bytes}' counts keys and values, as uWSGI does."""
        msecs = int((time.monotonic() - start) * 1000)
        log.info(
            "[pid: %d|app: 0|req: %d/%d] %s (%s) {%d vars in %d bytes} [%s] %s => generated %d bytes in %d msecs "
            "(%s %d) %d headers in %d bytes (%d switches on core %d)",
            os.getpid(),
            self.app_requests,
            self.requests_served,
            _printable(head.get(b"REMOTE_ADDR") or b""),
            _printable(head.get(b"REMOTE_USER") or b""),
            2 * len(head.vars),
            len(head.raw) - 4,
            time.asctime(time.localtime(wall)),
            self._what(head),
            response.body_size,
            msecs,
            _printable(response.protocol),
            response.status_code,
            len(response.headers),
            response.head_size,
            response.switches,
            core,
        )
