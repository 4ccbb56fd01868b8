"""Mappers: how a request's key becomes a node, all in one package.

``base`` holds the interface (``Mapper``, with the ``stats`` hook the stats document calls) and ``NoMapper``;
one module per mapper (``path``: use-base and use-pattern, ``static``: to and use-socket, ``cache``, ``code``,
``subscription``); ``choose`` owns uWSGI's precedence among them.
"""

from __future__ import annotations

from uwsgirouter.router.mappers.base import Mapper, NoMapper, UnsafeKey
from uwsgirouter.router.mappers.cache import CacheMapper, build_cache_mapper
from uwsgirouter.router.mappers.choose import choose_mapper
from uwsgirouter.router.mappers.code import CodeMapper, load_mapper_function
from uwsgirouter.router.mappers.path import BaseDirMapper, PatternMapper, check_path_key
from uwsgirouter.router.mappers.static import StaticMapper, static_nodes
from uwsgirouter.router.mappers.subscription import SubscriptionMapper

__all__ = [
    "BaseDirMapper",
    "CacheMapper",
    "CodeMapper",
    "Mapper",
    "NoMapper",
    "PatternMapper",
    "StaticMapper",
    "SubscriptionMapper",
    "UnsafeKey",
    "build_cache_mapper",
    "check_path_key",
    "choose_mapper",
    "load_mapper_function",
    "static_nodes",
]
