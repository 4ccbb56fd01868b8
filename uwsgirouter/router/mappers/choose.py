"""Which mapper a router worker routes with: the one place for uWSGI's precedence of the routing options."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from uwsgirouter.cache_config import CacheSet
from uwsgirouter.config import Config
from uwsgirouter.router.mappers.base import Mapper, NoMapper
from uwsgirouter.router.mappers.cache import build_cache_mapper
from uwsgirouter.router.mappers.code import CodeMapper
from uwsgirouter.router.mappers.path import BaseDirMapper, PatternMapper
from uwsgirouter.router.mappers.static import StaticMapper, static_nodes
from uwsgirouter.router.mappers.subscription import SubscriptionMapper
from uwsgirouter.subscription.image import TableImage


def choose_mapper(
    config: Config,
    caches: CacheSet,
    image: TableImage | None,
    report: socket.socket | None,
    code_function: Callable[[str], object] | None,
    app_names: Sequence[str],
) -> Mapper:
    """The first that is configured of ``use-cache > use-pattern > subscription server > use-base >
    use-code-string > use-socket > to`` (uWSGI's corerouter order); ``NoMapper`` when none is.

    ``image`` is the subscription table's (None without a subscription server), ``code_function`` the loaded
    ``--fastrouter-use-code-string`` function, ``app_names`` the instance's own sockets (``--fastrouter-use-socket``
    counts among them; without any it falls through to ``--fastrouter-to``).
    """
    if config.fastrouter_use_cache is not None:
        return build_cache_mapper(caches, config.fastrouter_use_cache)
    if config.fastrouter_use_pattern is not None:
        return PatternMapper(config.fastrouter_use_pattern)
    if image is not None:
        fallback = config.fastrouter_subscription_fallback_key
        return SubscriptionMapper(
            image,
            report=report,
            algo=config.subscription_algo,
            dotsplit=config.subscription_dotsplit,
            fallback_key=fallback.encode() if fallback else None,
        )
    if config.fastrouter_use_base is not None:
        return BaseDirMapper(config.fastrouter_use_base)
    if code_function is not None:
        return CodeMapper(code_function)
    if config.fastrouter_use_socket is not None and app_names:
        return StaticMapper(static_nodes([app_names[config.fastrouter_use_socket]]), 0)
    if config.fastrouter_to:
        return StaticMapper(static_nodes(config.fastrouter_to), config.fastrouter_gracetime)
    return NoMapper()
