"""The instance's caches as the options declare them: ``--cache N`` (named "default") and ``--cache2``.

Kept apart from the cache itself (``uwsgirouter.cache``): this is option parsing and lookup by name,
with uWSGI's order (the ``--cache`` one first, then every ``--cache2`` in option order).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

from uwsgirouter.cache import DEFAULT_BLOCKSIZE, DEFAULT_KEYSIZE, INT64_MAX, INT64_MIN, MAX_KEYSIZE, Cache
from uwsgirouter.config import Config
from uwsgirouter.errors import ConfigError

log = logging.getLogger("uwsgirouter.cache")


#: --cache2 keys we read; the others uWSGI knows are accepted and ignored (with a warning).
_ITEMS_KEYS = ("items", "maxitems", "max_items")
_KNOWN_KEYS = {"name", "blocksize", "keysize", "key_size", "math_initial", *_ITEMS_KEYS}
_HARMLESS_KEYS = {"hash", "hashsize", "hash_size", "lazy_expire", "lazy", "no_expire", "ignore_full"}
_UNSUPPORTED_KEYS = {
    "blocks",
    "bitmap",
    "store",
    "store_sync",
    "storesync",
    "store_delete",
    "storedelete",
    "node",
    "nodes",
    "sync",
    "udp",
    "udp_servers",
    "udp_server",
    "udpservers",
    "udpserver",
    "lastmod",
    "purge_lru",
    "lru",
    "sweep_on_full",
    "clear_on_full",
}


def _number(spec: str, key: str, raw: str, minimum: int, maximum: int | None = None) -> int:
    text = raw.strip()
    if not text.lstrip("-").isdigit():
        raise ConfigError(f"--cache2 {spec}: {key}={raw!r} is not a number")
    value = int(text)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"--cache2 {spec}: {key} must be {bound}, not {value}")
    return value


def _cache2(spec: Mapping[str, str]) -> Cache:
    text = ",".join(f"{k}={v}" for k, v in spec.items())
    name = spec.get("name", "").strip()
    if not name:
        raise ConfigError(f"--cache2 {text}: a cache needs a name (name=NAME)")
    if "@" in name:
        raise ConfigError(f"--cache2 {text}: a cache name cannot contain '@' (it names a remote cache)")
    items_raw = None
    for key in spec:
        if key in _ITEMS_KEYS:
            items_raw = (key, spec[key])
    if items_raw is None:
        raise ConfigError(f"--cache2 {text}: a cache needs its number of items (items=N)")
    items = _number(text, items_raw[0], items_raw[1], 1)
    blocksize = _number(text, "blocksize", spec["blocksize"], 1) if "blocksize" in spec else DEFAULT_BLOCKSIZE
    keysize = DEFAULT_KEYSIZE
    for key in ("keysize", "key_size"):
        if key in spec:
            keysize = _number(text, key, spec[key], 1, MAX_KEYSIZE)
    math_initial = 0
    if "math_initial" in spec:
        math_initial = _number(text, "math_initial", spec["math_initial"], INT64_MIN, INT64_MAX)
    for key in spec:
        if key in _UNSUPPORTED_KEYS:
            log.warning("--cache2 %s: %s= is not supported by uwsgirouter; ignored", name, key)
        elif key not in _KNOWN_KEYS and key not in _HARMLESS_KEYS:
            log.warning("--cache2 %s: unknown key %s=; ignored", name, key)
    return _new_cache(name, items, blocksize, keysize, math_initial)


def _new_cache(name: str, items: int, blocksize: int, keysize: int, math_initial: int = 0) -> Cache:
    try:
        return Cache(name, items, blocksize, keysize, math_initial)
    except (ValueError, OSError, OverflowError, MemoryError) as exc:
        raise ConfigError(f"cache {name!r} ({items} items of {blocksize} bytes): cannot create it: {exc}") from None


class CacheSet:
    """Every cache of the instance, in uWSGI's order; the first is the default."""

    def __init__(self, caches: Sequence[Cache] = ()) -> None:
        self.caches = list(caches)
        self._by_name: dict[str, Cache] = {}
        for cache in self.caches:
            if cache.name in self._by_name:
                log.warning("cache %r is defined twice; its name finds the first one", cache.name)
            self._by_name.setdefault(cache.name, cache)

    @classmethod
    def from_config(cls, config: Config) -> CacheSet:
        """Caches of ``--cache N`` (named "default") and every ``--cache2``.

        As in uWSGI, the ``--cache`` one comes first wherever it was written (the real binary builds
        it before the ``--cache2`` ones), then the ``--cache2`` ones in option order.
        """
        caches: list[Cache] = []
        try:
            if config.cache:
                caches.append(_new_cache("default", int(config.cache), int(config.cache_blocksize), DEFAULT_KEYSIZE))
            for spec in config.cache2 or ():
                caches.append(_cache2(spec))
        except BaseException:
            for cache in caches:
                cache.close()
            raise
        return cls(caches)

    @property
    def default(self) -> Cache | None:
        return self.caches[0] if self.caches else None

    def get_cache(self, name: str | None) -> Cache | None:
        """The cache called ``name``; None or "" is the default; unknown (or remote ``a@host``) is None."""
        if not name:
            return self.default
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Cache]:
        return iter(self.caches)

    def __len__(self) -> int:
        return len(self.caches)

    def close(self) -> None:
        for cache in self.caches:
            cache.close()
