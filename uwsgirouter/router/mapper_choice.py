"""Which mapper a router worker routes with: one place for uWSGI's precedence of the routing options."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from uwsgirouter.cache_config import CacheSet
from uwsgirouter.config import Config
from uwsgirouter.router.cache_mapper import build_cache_mapper
from uwsgirouter.router.code_mapper import CodeMapper
from uwsgirouter.router.mappers import Mapper, build_mapper
from uwsgirouter.router.nodes import Node
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.subscription.mapper import SubscriptionMapper


class NoMapper(Mapper):
    """The seed's "most useless setup": listeners and no way to route; every request gets a 502."""

    def pick(self, key: bytes, tried: Sequence[Node], now: float) -> Node | None:
        return None


def choose_mapper(
    config: Config,
    caches: CacheSet,
    image: TableImage | None,
    report: socket.socket | None,
    code_function: Callable[[str], object] | None,
    app_names: Sequence[str],
) -> Mapper:
    """uWSGI's precedence: use-cache > use-pattern > subscription server > use-base > use-code-string >
    use-socket > to."""
    if config.fastrouter_use_cache is not None:
        return build_cache_mapper(caches, config.fastrouter_use_cache)
    if image is not None and config.fastrouter_use_pattern is None:
        fallback = config.fastrouter_subscription_fallback_key
        return SubscriptionMapper(
            image,
            report=report,
            algo=config.subscription_algo,
            dotsplit=config.subscription_dotsplit,
            fallback_key=fallback.encode() if fallback else None,
        )
    if code_function is not None and config.fastrouter_use_base is None:
        return CodeMapper(code_function)
    return build_mapper(config, app_names) or NoMapper()
