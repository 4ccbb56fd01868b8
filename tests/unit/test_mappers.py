"""The static, base, pattern and code-string mappers, in process: which node a key gets, and when none.

The integration tests route real requests through them; these pin the edges (hostile keys, the round-robin
order, grace times, the caches' bounds, uWSGI's precedence, the code-string mapper's results and logs) so
that tools/mutation can tell when one of them changes.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uwsgirouter.cache import Cache
from uwsgirouter.cache_config import CacheSet
from uwsgirouter.config import load_config
from uwsgirouter.errors import ConfigError
from uwsgirouter.router import nodes as nodes_module
from uwsgirouter.router.mappers import (
    BaseDirMapper,
    CacheMapper,
    CodeMapper,
    Mapper,
    NoMapper,
    PatternMapper,
    StaticMapper,
    SubscriptionMapper,
    UnsafeKey,
    build_cache_mapper,
    cache as cache_mapper,
    check_path_key,
    choose_mapper,
    code as code_mapper,
    load_mapper_function,
    path as path_mapper,
    static_nodes,
)
from uwsgirouter.router.nodes import Node, make_node
from uwsgirouter.subscription.image import TableImage

# --- hostile keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b".", "a relative directory name"),
        (b"..", "a relative directory name"),
        (b"a/b", "contains '/', '\\' or NUL"),
        (b"a\\b", "contains '/', '\\' or NUL"),
        (b"a\0b", "contains '/', '\\' or NUL"),
        (b"k" * 256, "longer than 255 bytes"),
    ],
)
def test_unsafe_keys_are_refused(key: bytes, reason: str) -> None:
    with pytest.raises(UnsafeKey) as info:
        check_path_key(key)
    assert str(info.value) == reason


@pytest.mark.parametrize("key", [b"k" * 255, b"...", b".a", b"a..b", b"example.com", b"\xff"])
def test_safe_keys_come_back_as_text(key: bytes) -> None:
    assert check_path_key(key) == key.decode("utf-8", "surrogateescape")


# --- base and pattern -----------------------------------------------------------------------------


def test_base_concatenates_and_keeps_one_node_per_key() -> None:
    mapper = BaseDirMapper("/tmp/sockets/")
    node = mapper.pick(b"app.sock", (), 0)
    assert node is not None and node.name == "/tmp/sockets/app.sock"
    assert node.family == socket.AF_UNIX
    assert mapper.pick(b"app.sock", (), 0) is node  # the same Node: its counters carry on
    assert mapper.pick(b"app.sock", (node,), 0) is None  # already tried: no other node for this key
    for hostile in (b"..", b"a/b"):  # the session answers 502 and logs why
        with pytest.raises(UnsafeKey):
            mapper.pick(hostile, (), 0)


def test_pattern_replaces_percent_s_and_percent_percent() -> None:
    mapper = PatternMapper("127.0.0.1:%s")
    node = mapper.pick(b"3031", (), 0)
    assert node is not None and node.name == "127.0.0.1:3031" and node.family == socket.AF_INET
    assert PatternMapper("/run/%%%s.%z").address_for("app") == "/run/%app."
    assert mapper.pick(b"not-a-port", (), 0) is None  # not an address: no node (502), nothing cached
    assert PatternMapper("127.0.0.1:%s").pick(b"", (), 0) is None


def test_path_nodes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(path_mapper, "MAX_CACHED_NODES", 3)
    mapper = BaseDirMapper("/tmp/")
    first = mapper.pick(b"k0", (), 0)
    for i in range(1, 3):
        mapper.pick(b"k%d" % i, (), 0)
    assert mapper.pick(b"k0", (), 0) is first  # three kept
    mapper.pick(b"k3", (), 0)  # a fourth starts again
    assert mapper.pick(b"k3", (), 0) is mapper.pick(b"k3", (), 0)
    again = mapper.pick(b"k0", (), 0)
    assert again is not first and again is not None and again.name == first.name  # type: ignore[union-attr]


# --- static ---------------------------------------------------------------------------------------


def three() -> list[Node]:
    return [make_node(f"127.0.0.1:{port}") for port in (3031, 3032, 3033)]


def test_static_round_robin_in_order_and_skips_tried_nodes() -> None:
    nodes = three()
    mapper = StaticMapper(nodes, 30)
    assert [mapper.pick(b"", (), 0) for _ in range(4)] == [nodes[0], nodes[1], nodes[2], nodes[0]]
    # a retry skips what was tried and goes on from the one it got
    assert mapper.pick(b"", (nodes[1],), 0) is nodes[2]
    assert mapper.pick(b"", (), 0) is nodes[0]
    assert mapper.pick(b"", tuple(nodes), 0) is None
    assert mapper.live_nodes() is None


def test_static_node_that_failed_is_skipped_for_its_grace_time(caplog: pytest.LogCaptureFixture) -> None:
    nodes = three()
    mapper = StaticMapper(nodes, 30)
    mapper.failed(nodes[0], 100.0)
    assert nodes[0].dead_until == 130.0
    assert [mapper.pick(b"", (), 100.0) for _ in range(2)] == [nodes[1], nodes[2]]
    assert mapper.pick(b"", (), 129.5) is nodes[1]  # skipped until the grace time is over
    with caplog.at_level(logging.INFO, "uwsgirouter.router"):
        assert mapper.pick(b"", (), 130.0) is nodes[2]
        assert mapper.pick(b"", (), 130.0) is nodes[0]  # dead until 130: alive at 130
    assert nodes[0].dead_until == 0.0
    assert [r.getMessage() for r in caplog.records] == [
        "static node 127.0.0.1:3031 is tried again after its grace time"
    ]


def test_static_with_a_grace_time_under_a_second() -> None:
    nodes = three()
    StaticMapper(nodes, 0.5).failed(nodes[0], 100.0)
    assert nodes[0].dead_until == 100.5


def test_static_without_grace_time_never_skips() -> None:
    nodes = three()
    mapper = StaticMapper(nodes, 0)
    mapper.failed(nodes[0], 100.0)
    assert nodes[0].dead_until == 0.0
    assert mapper.pick(b"", (), 100.0) is nodes[0]


def test_static_stats_are_uwsgis_static_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = three()
    nodes[0].stats.hits, nodes[0].stats.failures = 7, 2
    nodes[0].stats.bytes_from_node, nodes[0].stats.bytes_to_node = 300, 40
    nodes[1].dead_until = 130.75  # in its grace time: shown as the wall-clock second it ends
    nodes[2].dead_until = 100.0  # its grace time ends now: no longer marked
    monkeypatch.setattr(time, "monotonic", lambda: 100.0)  # the clocks uwsgirouter.router.mappers.static reads
    monkeypatch.setattr(time, "time", lambda: 5000.5)
    doc = StaticMapper(nodes, 30).stats()
    assert list(doc) == ["static_nodes"]
    assert [list(entry) for entry in doc["static_nodes"]] == [
        ["name", "hits", "grace", "failcnt", "tx", "rx", "death_mark"]
    ] * 3
    assert doc["static_nodes"] == [
        {"name": "127.0.0.1:3031", "hits": 7, "grace": 0, "failcnt": 2, "tx": 300, "rx": 40, "death_mark": 0},
        {"name": "127.0.0.1:3032", "hits": 0, "grace": 5031, "failcnt": 0, "tx": 0, "rx": 0, "death_mark": 1},
        {"name": "127.0.0.1:3033", "hits": 0, "grace": 5000, "failcnt": 0, "tx": 0, "rx": 0, "death_mark": 0},
    ]


def test_mappers_without_stats_of_their_own_add_nothing(tmp_path: Path) -> None:
    assert Mapper().stats() == {}
    assert BaseDirMapper("/tmp/").stats() == {} and PatternMapper("%s").stats() == {}
    assert CodeMapper(route).stats() == {}


def test_static_nodes_resolve_names_once_and_say_which_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes_module, "_cache", {})  # resolved here, not found among earlier results
    nodes = static_nodes(["localhost:3031", "/tmp/app.sock"])
    assert [node.name for node in nodes] == ["localhost:3031", "/tmp/app.sock"]
    assert nodes[0].sockaddr[1] == 3031
    with pytest.raises(ConfigError) as info:
        static_nodes(["127.0.0.1:3031", "127.0.0.1:http"])
    assert str(info.value).startswith("node 127.0.0.1:http: ")


def test_base_mapper_does_nothing_on_failed_and_done() -> None:
    node = make_node("127.0.0.1:3031")
    Mapper().failed(node, 1.0)
    Mapper().done(node)
    assert node.dead_until == 0.0
    with pytest.raises(NotImplementedError):
        Mapper().pick(b"", (), 0)


# --- precedence -----------------------------------------------------------------------------------


def route(key: str) -> str:
    return "127.0.0.1:3031"


#: every routing option, in uWSGI's precedence order; each case drops the ones before it
EVERY = (
    ("--fastrouter-use-cache",),
    ("--fastrouter-use-pattern", "/p/%s"),
    ("subscription",),  # a subscription server: the master's image is passed in
    ("--fastrouter-use-base", "/b/"),
    ("code",),  # --fastrouter-use-code-string: the master's loaded function is passed in
    ("--fastrouter-use-socket=1",),
    ("--fastrouter-to", "127.0.0.1:3031", "--fastrouter-to", "127.0.0.1:3032", "--fastrouter-gracetime", "7"),
)


def choose(*options: tuple[str, ...], sockets: tuple[str, ...] = ("/s0", "/s1")) -> Mapper:
    argv = [arg for option in options if option[0].startswith("--") for arg in option]
    caches = CacheSet.from_config(load_config(["--cache2", "name=routes,items=4"], {}))
    image = TableImage(1024) if ("subscription",) in options else None
    code = route if ("code",) in options else None
    try:
        return choose_mapper(load_config(argv, {}), caches, image, None, code, sockets)
    finally:
        caches.close()


EXPECTED = (CacheMapper, PatternMapper, SubscriptionMapper, BaseDirMapper, CodeMapper, StaticMapper, StaticMapper)


@pytest.mark.parametrize("first", range(len(EVERY)))
def test_precedence_is_uwsgis_whole_order(first: int) -> None:
    """use-cache > use-pattern > subscription server > use-base > use-code-string > use-socket > to (uWSGI's
    corerouter order): an option wins alone, over every option after it, and over each one after it in a pair."""
    expected = EXPECTED[first]
    assert type(choose(EVERY[first])) is expected
    assert type(choose(*EVERY[first:])) is expected
    for later in EVERY[first + 1 :]:
        assert type(choose(EVERY[first], later)) is expected, later
        assert type(choose(later, EVERY[first])) is expected, later


def test_each_mapper_gets_its_settings() -> None:
    cache = choose(EVERY[0])
    assert isinstance(cache, CacheMapper) and cache.cache.name == "routes"
    pattern = choose(*EVERY[1:])
    assert isinstance(pattern, PatternMapper) and pattern.pattern == "/p/%s"
    base = choose(*EVERY[3:])
    assert isinstance(base, BaseDirMapper) and base.base == "/b/"
    code = choose(*EVERY[4:])
    assert isinstance(code, CodeMapper) and code.function is route
    static = choose(*EVERY[5:])
    assert isinstance(static, StaticMapper)
    assert [node.name for node in static.nodes] == ["/s1"] and static.gracetime == 0
    # --fastrouter-use-socket without sockets of the instance's own falls through to --fastrouter-to
    static = choose(*EVERY[5:], sockets=())
    assert isinstance(static, StaticMapper)
    assert [node.name for node in static.nodes] == ["127.0.0.1:3031", "127.0.0.1:3032"] and static.gracetime == 7


def test_subscription_mapper_gets_the_image_report_socket_and_options() -> None:
    image = TableImage(1024)
    argv = ["--subscription-algo", "lrc", "--subscription-dotsplit", "--fastrouter-subscription-fallback-key", "fb"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as report:
        mapper = choose_mapper(load_config(argv, {}), CacheSet(), image, report, None, ())
        assert isinstance(mapper, SubscriptionMapper)
        assert (mapper.image, mapper.report) == (image, report)
        assert (mapper.algo, mapper.dotsplit, mapper.fallback_key) == ("lrc", True, b"fb")
    plain = choose_mapper(load_config([], {}), CacheSet(), image, None, None, ())
    assert isinstance(plain, SubscriptionMapper)
    assert (plain.algo, plain.dotsplit, plain.fallback_key) == ("wrr", False, None)


def test_use_cache_takes_the_named_cache() -> None:
    config = load_config(["--cache2", "name=a,items=4", "--cache2", "name=b,items=4", "--fastrouter-use-cache=b"], {})
    caches = CacheSet.from_config(config)
    try:
        mapper = choose_mapper(config, caches, None, None, None, ())
        assert isinstance(mapper, CacheMapper) and mapper.cache is caches.get_cache("b")
    finally:
        caches.close()


def test_use_cache_without_a_cache_stops_the_start() -> None:
    with pytest.raises(ConfigError, match="needs a cache"):
        choose_mapper(load_config(["--fastrouter-use-cache"], {}), CacheSet(), None, None, None, ())


def test_nothing_to_route_with_is_the_no_mapper() -> None:
    mapper = choose()
    assert type(mapper) is NoMapper
    assert mapper.pick(b"example.com", (), 0) is None  # every request: a 502
    assert mapper.live_nodes() is None and mapper.stats() == {}


# --- code string ----------------------------------------------------------------------------------


def write_module(tmp_path: Path, body: str) -> str:
    path = tmp_path / "router_code.py"
    path.write_text(body)
    return str(path)


def test_load_mapper_function(tmp_path: Path) -> None:
    path = write_module(tmp_path, "def route(key):\n    return key\nNOT_CALLABLE = 1\n")
    assert load_mapper_function(0, path, "route")("x") == "x"
    cases = [
        ((5, path, "route"), f"--fastrouter-use-code-string 5:{path}:route: only Python (0) is supported"),
        ((0, path, "missing"), f"--fastrouter-use-code-string: {path} has no function 'missing'"),
        ((0, path, "NOT_CALLABLE"), f"--fastrouter-use-code-string: {path} has no function 'NOT_CALLABLE'"),
        ((0, str(tmp_path / "none.py"), "route"), f"--fastrouter-use-code-string: {tmp_path}/none.py: file not found"),
        ((0, str(tmp_path / "none.txt"), "route"), f"--fastrouter-use-code-string: cannot load {tmp_path}/none.txt"),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError) as info:
            load_mapper_function(*args)
        assert str(info.value) == message
    broken = write_module(tmp_path, "raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError) as info:
        load_mapper_function(0, broken, "route")
    assert str(info.value) == f"--fastrouter-use-code-string: {broken} failed to load: RuntimeError('boom')"


def test_code_mapper_results() -> None:
    results: dict[str, object] = {
        "a": "127.0.0.1:3031",
        "b": b"127.0.0.1:3032,5",
        "c": " 127.0.0.1:3033 , 300 ",
        "d": "127.0.0.1:3034,x",
        "n": None,
        "bad": "127.0.0.1:99999",
    }
    mapper = CodeMapper(lambda key: results[key])
    a = mapper.pick(b"a", (), 0)
    assert a is not None and (a.name, a.modifier1, a.modifier2) == ("127.0.0.1:3031", 0, 0)
    assert mapper.pick(b"a", (), 0) is a  # one Node per distinct result
    assert mapper.pick(b"a", (a,), 0) is None
    b = mapper.pick(b"b", (), 0)
    assert b is not None and (b.name, b.modifier1) == ("127.0.0.1:3032", 5)
    c = mapper.pick(b"c", (), 0)
    assert c is not None and (c.name, c.modifier1) == ("127.0.0.1:3033", 300 % 256)
    d = mapper.pick(b"d", (), 0)
    assert d is not None and (d.name, d.modifier1) == ("127.0.0.1:3034", 0)
    assert mapper.pick(b"n", (), 0) is None
    assert mapper.pick(b"bad", (), 0) is None
    assert mapper.name == "<lambda>"


def test_code_mapper_logs_a_raising_or_slow_function_and_bad_results(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def route(key: str) -> str:
        if key == "boom":
            raise RuntimeError("boom")
        if key == "slow":
            clock[0] += 0.5
        if key == "edge":
            clock[0] += 0.25  # exactly at the limit is not slow
        return "127.0.0.1:3031" if key != "junk" else "junk:x"

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # the clock uwsgirouter.router.mappers.code reads
    monkeypatch.setattr(code_mapper, "SLOW_CALL_S", 0.25)  # exact in binary, as the clock's steps
    mapper = CodeMapper(route)
    with caplog.at_level(logging.INFO, "uwsgirouter.router"):
        assert mapper.pick(b"boom", (), 0) is None
        assert mapper.pick(b"slow", (), 0) is not None
        assert mapper.pick(b"junk", (), 0) is None
        assert mapper.pick(b"junk", (), 0) is None  # remembered as no node: logged once
        assert mapper.pick(b"edge", (), 0) is not None
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "key boom: the code-string mapper route raised; answered 502"
    assert caplog.records[0].exc_info is not None
    assert messages[1] == "key slow: the code-string mapper route took 500 ms, blocking the router"
    assert messages[2].startswith("the code-string mapper returned 'junk:x', not a usable node: ")
    assert len(messages) == 3


def test_code_mapper_nodes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(code_mapper, "MAX_CACHED_NODES", 2)
    mapper = CodeMapper(lambda key: f"127.0.0.1:{key}")
    first = mapper.pick(b"1", (), 0)
    assert mapper.pick(b"2", (), 0) is not None
    assert mapper.pick(b"1", (), 0) is first
    mapper.pick(b"3", (), 0)  # the third starts again
    assert mapper.pick(b"1", (), 0) is not first


def test_code_mapper_passes_and_takes_bytes_that_are_not_utf8() -> None:
    seen: list[str] = []

    def route(key: str) -> bytes:
        seen.append(key)
        return b"/tmp/\xff.sock"

    node = CodeMapper(route).pick(b"\xff.example.com", (), 0)
    assert seen == ["\udcff.example.com"]
    assert node is not None and node.name == "/tmp/\udcff.sock" and node.sockaddr == b"/tmp/\xff.sock"


def test_code_mapper_name_of_a_callable_without_one(caplog: pytest.LogCaptureFixture) -> None:
    def route(key: str) -> str:
        raise RuntimeError(key)

    mapper = CodeMapper(functools.partial(route))
    assert mapper.name == "mapper"
    with caplog.at_level(logging.ERROR, "uwsgirouter.router"):
        assert mapper.pick(b"k", (), 0) is None
    assert [r.getMessage() for r in caplog.records] == ["key k: the code-string mapper mapper raised; answered 502"]


def test_the_code_file_is_its_own_module_while_it_loads(tmp_path: Path) -> None:
    body = "import dataclasses\n@dataclasses.dataclass\nclass Pair:\n    a: int = 0\ndef route(key):\n    return key\n"
    assert load_mapper_function(0, write_module(tmp_path, body), "route")("x") == "x"


# --- cache ----------------------------------------------------------------------------------------


@pytest.fixture
def cache() -> Iterator[Cache]:
    c = Cache("test", 20, blocksize=100, keysize=32)
    try:
        yield c
    finally:
        c.close()


def names(picked: list[Node | None]) -> list[str | None]:
    return [node.name if node else None for node in picked]


def test_cache_mapper_goes_on_after_a_skipped_node(cache: Cache) -> None:
    mapper = CacheMapper(cache)
    cache.set(b"k", b"127.0.0.1:1|127.0.0.1:2|127.0.0.1:3")
    first = mapper.pick(b"k", (), 0)
    assert first is not None and first.name == "127.0.0.1:1"
    # a retry that already tried the next node (2) takes the one after it (3), and the turn goes on from there
    second = make_node("127.0.0.1:2")
    assert names([mapper.pick(b"k", (second,), 0)]) == ["127.0.0.1:3"]
    assert names([mapper.pick(b"k", (), 0) for _ in range(2)]) == ["127.0.0.1:1", "127.0.0.1:2"]


def test_cache_mapper_positions_are_per_key_and_bounded(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mapper, "MAX_COUNTERS", 2)
    mapper = CacheMapper(cache)
    for key in (b"a", b"b", b"c"):
        cache.set(key, b"127.0.0.1:1|127.0.0.1:2|127.0.0.1:3")
    assert names([mapper.pick(b"a", (), 0)]) == ["127.0.0.1:1"]
    assert names([mapper.pick(b"b", (), 0)]) == ["127.0.0.1:1"]  # another key: its own turn
    assert names([mapper.pick(b"a", (), 0)]) == ["127.0.0.1:2"]
    assert names([mapper.pick(b"c", (), 0)]) == ["127.0.0.1:1"]  # a third key: the positions start again
    assert names([mapper.pick(b"a", (), 0)]) == ["127.0.0.1:1"]


def test_cache_mapper_parsed_values_are_bounded(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mapper, "MAX_CACHED_VALUES", 2)
    mapper = CacheMapper(cache)
    cache.set(b"a", b"127.0.0.1:1")
    cache.set(b"b", b"127.0.0.1:2")
    cache.set(b"c", b"127.0.0.1:3")
    a = mapper.pick(b"a", (), 0)
    mapper.pick(b"b", (), 0)
    assert mapper.pick(b"a", (), 0) is a  # two values kept
    mapper.pick(b"c", (), 0)  # a third starts again
    again = mapper.pick(b"a", (), 0)
    assert again is not a and again is not None and again.name == "127.0.0.1:1"


def test_cache_mapper_values(cache: Cache, caplog: pytest.LogCaptureFixture) -> None:
    mapper = CacheMapper(cache)
    cache.set(b"raw", b"/tmp/\xff.sock")
    cache.set(b"wrap", b"127.0.0.1:1,256")
    cache.set(b"junk", b"127.0.0.1:1,x|127.0.0.1:2")
    raw = mapper.pick(b"raw", (), 0)
    assert raw is not None and raw.name == "/tmp/\udcff.sock" and raw.sockaddr == b"/tmp/\xff.sock"
    wrap = mapper.pick(b"wrap", (), 0)
    assert wrap is not None and wrap.modifier1 == 0  # 256 wraps to 0, as uWSGI's u8
    with caplog.at_level(logging.WARNING, "uwsgirouter.router"):
        assert names([mapper.pick(b"junk", (), 0)]) == ["127.0.0.1:2"]
    assert [r.getMessage() for r in caplog.records] == [
        "cache 'test' value 127.0.0.1:1,x|127.0.0.1:2: 127.0.0.1:1,x is not a usable node "
        "(modifier1 'x' is not a number)"
    ]


def test_build_cache_mapper_without_a_cache() -> None:
    caches = CacheSet.from_config(load_config([], {}))
    with pytest.raises(ConfigError) as info:
        build_cache_mapper(caches, None)
    assert str(info.value) == "--fastrouter-use-cache needs a cache: add --cache N or --cache2 name=...,items=N"
