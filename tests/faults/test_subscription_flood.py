"""A flood of valid-looking subscriptions cannot lock new keys out, nor grow the master without bound.

The flood comes from 127.0.0.2 (another sender, as an attacker's host would be), the legitimate
announces from 127.0.0.1; both are loopback addresses of this machine.
"""

from __future__ import annotations

import json
import socket
import time

import psutil
import pytest

from tests.support import (
    Proc,
    ProcessManager,
    can_connect,
    connect,
    free_port,
    log_lines,
    read_all,
    request_vars,
    uwsgi_packet,
    uwsgi_request,
    wait_until,
)

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
FLOODER = "127.0.0.2"
BOGUS_KEYS = 10_000


def announce(key: str, address: str) -> bytes:
    pairs = {
        "key": key,
        "address": address,
        "modifier1": "0",
        "modifier2": "0",
        "cores": "1",
        "load": "0",
        "weight": "1",
    }
    return uwsgi_packet(pairs, modifier1=224)


def flood(server: tuple[str, int], count: int, prefix: str, stats_address: tuple[str, int]) -> int:
    """``count`` announces of distinct bogus keys from 127.0.0.2, paced; returns the keys the router took in
    once their number has settled (a slow run, under coverage say, drops some at a full socket buffer)."""
    start_seen = keys_seen(stats_address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((FLOODER, 0))
        started = time.monotonic()
        for number in range(count):
            sock.sendto(announce(f"{prefix}-{number}.bogus", f"127.0.0.1:{1 + number % 60000}"), server)
            if number % 100 == 99:
                time.sleep(0.01)  # pacing of the flood itself, not a wait for a condition
            assert time.monotonic() - started < 60
    seen = [keys_seen(stats_address)]

    def settled() -> bool:
        seen.append(keys_seen(stats_address))
        return seen[-1] == seen[-2]

    wait_until(settled, 20, interval=0.5, what="the flood to be taken in")
    return seen[-1] - start_seen


def keys_seen(stats_address: tuple[str, int]) -> int:
    """Keys in the table plus keys it gave up: every new key the router took in."""
    document = stats(stats_address)
    subscriptions = document.get("subscriptions", [])
    displaced = document.get("subscription_keys_displaced", 0)
    assert isinstance(subscriptions, list) and isinstance(displaced, int), document
    return len(subscriptions) + displaced


def stats(address: tuple[str, int]) -> dict[str, object]:
    with connect(address) as sock:
        return dict(json.loads(read_all(sock)))


def start(procs: ProcessManager, *extra: str) -> tuple[Proc, tuple[str, int], tuple[str, int], tuple[str, int], str]:
    port, sub_port, stats_port, backend_port = free_port(), free_port(), free_port(), free_port()
    procs.uwsgi_backend(f"{LOOPBACK}:{backend_port}", "legit", wait_for=(LOOPBACK, backend_port))
    router = procs.router(
        "--fastrouter", f"{LOOPBACK}:{port}", "--fastrouter-subscription-server", f"{LOOPBACK}:{sub_port}",
        "--fastrouter-stats", f"{LOOPBACK}:{stats_port}", *extra, wait_for=(LOOPBACK, port),
    )  # fmt: skip
    # The stats listener is bound just after the router's: wait for it too.
    wait_until(lambda: can_connect((LOOPBACK, stats_port)), 10, what="the stats server")
    return router, (LOOPBACK, port), (LOOPBACK, sub_port), (LOOPBACK, stats_port), f"{LOOPBACK}:{backend_port}"


#: A new key during a flood is taken as soon as the master reads its datagram (the table is published within a
#: second): generous for a loaded 2-core machine working through the flood's backlog, yet well below the
#: --subscription-tolerance (17 s) after which a locked-out key could only get in by expiring the flood's keys.
NEW_KEY_DEADLINE_S = 10.0


def routes_within(address: tuple[str, int], key: str, seconds: float) -> float:
    """Seconds until a request for ``key`` is answered 200; fails after ``seconds``."""
    started = time.monotonic()
    wait_until(lambda: uwsgi_request(address, request_vars(host=key)).status == 200, seconds, interval=0.05,
               what=f"{key} to route")  # fmt: skip
    return time.monotonic() - started


def legit_announce(server: tuple[str, int], key: str, backend: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.sendto(announce(key, backend), server)


def test_10000_bogus_keys_neither_lock_out_a_new_key_nor_grow_the_master_unbounded(procs: ProcessManager) -> None:
    router, address, server, stats_address, backend = start(procs)
    master = psutil.Process(router.pid)
    rss_before = master.memory_info().rss
    assert flood(server, BOGUS_KEYS, "a", stats_address) >= BOGUS_KEYS / 2
    legit_announce(server, "legit.example", backend)
    routes_within(address, "legit.example", NEW_KEY_DEADLINE_S)
    growth = master.memory_info().rss - rss_before
    assert growth < 40 << 20, f"the master grew by {growth >> 20} MiB for {BOGUS_KEYS} keys"
    wait_until(lambda: "like these in the last second" in router.log(), 5, what="the line counting the rest")
    lines = log_lines(router)
    assert len(lines) < 600, f"{len(lines)} log lines for {BOGUS_KEYS} new keys"


def test_a_full_table_gives_up_unused_flood_keys_for_new_and_used_ones(procs: ProcessManager) -> None:
    router, address, server, stats_address, backend = start(procs, "--subscription-max-keys", "200")
    taken = flood(server, BOGUS_KEYS, "a", stats_address)
    assert taken >= BOGUS_KEYS / 2
    assert stats(stats_address)["subscription_keys_displaced"] >= taken - 200  # type: ignore[operator]
    legit_announce(server, "legit.example", backend)
    routes_within(address, "legit.example", NEW_KEY_DEADLINE_S)
    # The flood goes on (the attacker re-announces every key): the key that carries requests stays.
    flood(server, BOGUS_KEYS, "b", stats_address)
    flood(server, BOGUS_KEYS, "a", stats_address)
    for _ in range(10):
        assert uwsgi_request(address, request_vars(host="legit.example")).status == 200
    document = stats(stats_address)
    assert len(document["subscriptions"]) <= 200  # type: ignore[arg-type]
    # A second legitimate key arriving while the flood holds the table is taken too.
    legit_announce(server, "second.example", backend)
    routes_within(address, "second.example", NEW_KEY_DEADLINE_S)
    assert router.alive()
