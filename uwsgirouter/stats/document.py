"""The master's stats document: uWSGI 2.0.31's layout (``uwsgi_master_generate_stats``), so uwsgitop and
other readers of uWSGI's stats work unchanged.

Per-worker counters come from the heartbeat table (each worker writes its own slot), the history of each
worker id (spawns, harakiris, counters of its exited processes) from the arbiter, memory from /proc
(psutil), the listen queues from the kernel (TCP_INFO on the listening sockets). As in uWSGI, a worker
id's counters go on across respawns; unlike uWSGI, across reloads too, since the master is not
re-executed (counters that only grow suit Prometheus). ``workers`` lists the app workers; a master
without app workers lists its router processes there instead, so uwsgitop shows them; with both, the
routers are in the extra ``fastrouters`` list.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from uwsgirouter import __version__
from uwsgirouter.arbiter import APP, ROUTER, Arbiter, Worker, WorkerRecord
from uwsgirouter.heartbeat import CHEAP, Beat, HeartbeatTable
from uwsgirouter.pause import PauseSwitch
from uwsgirouter.sock import Listener

UWSGI_VERSION = "2.0.31"
#: uWSGI's lock list, always present in its document (uwsgirouter takes none of these locks).
LOCKS = ("user 0", "signal", "filemon", "timer", "rbtimer", "cron", "rpc", "snmp")
#: struct tcp_info: tcpi_unacked and tcpi_sacked, which on a listening socket are the accept queue's
#: length and its limit (what uWSGI and ss read).
_TCP_INFO_QUEUE = struct.Struct("=24xII")


def listen_queue(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting, backlog) of a listening TCP socket; None for other sockets."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_QUEUE.size)
    except OSError:
        return None
    if len(info) < _TCP_INFO_QUEUE.size:
        return None
    return _TCP_INFO_QUEUE.unpack(info)


@dataclass(frozen=True, slots=True)
class StatsSocket:
    listener: Listener
    shared: bool


class MasterStats:
    """Builds the document on demand; holds only a psutil handle per worker process."""

    def __init__(
        self,
        arbiter: Arbiter,
        heartbeats: HeartbeatTable,
        sockets: Sequence[StatsSocket],
        backlog: int,
        pause: PauseSwitch | None = None,
    ):
        self.arbiter = arbiter
        self.pause = pause
        self.heartbeats = heartbeats
        self.sockets = list(sockets)
        self.backlog = backlog
        self._procs: dict[int, psutil.Process] = {}

    def document(self) -> dict[str, Any]:
        sockets = [self._socket(entry) for entry in self.sockets]
        backlog = max((entry["queue"] for entry in sockets), default=0)
        doc: dict[str, Any] = {
            "version": UWSGI_VERSION,
            "uwsgirouter_version": __version__,
            "listen_queue": backlog,
            "listen_queue_errors": 0,
            "signal_queue": 0,
            "load": backlog,
            "pid": os.getpid(),
            "uid": os.getuid(),
            "gid": os.getgid(),
            "cwd": _cwd(),
            "locks": [{name: 0} for name in LOCKS],
            "sockets": sockets,
        }
        arbiter = self.arbiter
        live = {pid for pid in arbiter.workers}
        for pid in [pid for pid in self._procs if pid not in live]:
            del self._procs[pid]
        apps = [self._worker(APP, n) for n in range(1, arbiter.apps + 1)]
        routers = [self._worker(ROUTER, n) for n in range(1, arbiter.routers + 1)]
        doc["workers"] = apps or routers
        if apps and routers:
            doc["fastrouters"] = routers
        return doc

    def _socket(self, entry: StatsSocket) -> dict[str, Any]:
        queue = listen_queue(entry.listener.sock)
        waiting, limit = queue if queue is not None else (0, self.backlog)
        return {
            "name": entry.listener.name,
            "proto": "uwsgi",
            "queue": waiting,
            "max_queue": limit,
            "shared": 1 if entry.shared else 0,
            "can_offload": 0,
        }

    def _worker(self, kind: str, number: int) -> dict[str, Any]:
        arbiter = self.arbiter
        processes = [w for w in arbiter.workers.values() if w.spec.kind == kind and w.spec.number == number]
        # the serving one: the newest generation that is not retiring
        serving = max(processes, key=lambda w: (not w.retiring_since, w.spec.generation), default=None)
        beats: dict[int, Beat] = {}
        for process in processes:
            beat = self.heartbeats.read(process.spec.slot)
            if beat is not None and beat.pid == process.pid:
                beats[process.pid] = beat
        record = arbiter.records.get((kind, number)) or WorkerRecord()
        current = beats.get(serving.pid) if serving is not None else None
        requests = record.requests + sum(b.requests for b in beats.values())
        exceptions = record.exceptions + sum(b.exceptions for b in beats.values())
        busy = current is not None and (current.busy_since > 0 or current.in_flight > 0)
        # uWSGI's "cheap": a router waiting for a node, or app workers stopped until a connection (--cheap, C)
        cheap = (current is not None and bool(current.flags & CHEAP)) or (kind == APP and arbiter.cheap)
        paused = kind == APP and self.pause is not None and self.pause.on and not busy  # uWSGI's "pause"
        accepting = serving is not None and serving.booted and not serving.retiring_since and not cheap and not paused
        rss, vsz = self._memory(serving)
        entry: dict[str, Any] = {
            "id": number,
            "pid": serving.pid if serving is not None else 0,
            "accepting": 1 if accepting else 0,
            "requests": requests,
            "delta_requests": current.requests if current is not None else 0,
            "exceptions": exceptions,
            "harakiri_count": record.harakiri_count,
            "signals": 0,
            "signal_queue": 0,
            "status": "cheap" if cheap else "pause" if paused else "busy" if busy else "idle",
            "rss": rss,
            "vsz": vsz,
            "running_time": record.running_us + sum(b.running_us for b in beats.values()),
            "last_spawn": int(record.last_spawn),
            "respawn_count": record.respawn_count,
            "tx": record.tx + sum(b.tx for b in beats.values()),
            "avg_rt": current.avg_rt_us if current is not None else 0,
            "kind": kind,
        }
        entry["apps"] = (
            [
                {
                    "id": 0,
                    "modifier1": 0,
                    "mountpoint": "",
                    "startup_time": 0,
                    "requests": requests,
                    "exceptions": exceptions,
                    "chdir": "",
                }
            ]
            if kind == APP
            else []
        )
        entry["cores"] = [
            {
                "id": 0,
                "requests": requests,
                "static_requests": 0,
                "routed_requests": requests if kind == ROUTER else 0,
                "offloaded_requests": 0,
                "write_errors": 0,
                "read_errors": 0,
                "in_request": 1 if busy else 0,
                "vars": [],
                "req_info": {},
            }
        ]
        return entry

    def _memory(self, worker: Worker | None) -> tuple[int, int]:
        if worker is None:
            return 0, 0
        try:
            process = self._procs.get(worker.pid)
            if process is None:
                process = self._procs[worker.pid] = psutil.Process(worker.pid)
            info = process.memory_info()
        except (psutil.Error, OSError):
            return 0, 0
        return int(info.rss), int(info.vms)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""
