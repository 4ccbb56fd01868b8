"""Which services a master runs, built from its configuration (one line per feature)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from uwsgirouter.emperor.link import build_emperor_link
from uwsgirouter.emperor.service import build_emperor
from uwsgirouter.services.base import MasterControl, Service
from uwsgirouter.services.cheap import build_cheap_watch
from uwsgirouter.services.fifo import build_fifo
from uwsgirouter.services.logfile import build_log_file
from uwsgirouter.services.notify import build_notifier
from uwsgirouter.services.stats import build_stats_server
from uwsgirouter.services.touch import build_touch_watcher

if TYPE_CHECKING:
    from uwsgirouter.arbiter import Arbiter
    from uwsgirouter.config import Config
    from uwsgirouter.heartbeat import HeartbeatTable
    from uwsgirouter.pause import PauseSwitch
    from uwsgirouter.sockets import Sockets


class MasterView(MasterControl, Protocol):
    """What building the services reads of the master (``master.Master``), besides the actions of
    ``MasterControl``: declared here so that the services need not know the master, which knows them."""

    @property
    def config(self) -> Config: ...
    @property
    def arbiter(self) -> Arbiter: ...
    @property
    def sockets(self) -> Sockets: ...
    @property
    def heartbeats(self) -> HeartbeatTable: ...
    @property
    def pause_switch(self) -> PauseSwitch: ...
    @property
    def environ(self) -> Mapping[str, str]: ...
    @property
    def rescan_hooks(self) -> list[Callable[[], None]]:
        """What the master's rescan request (fifo ``E``) calls; the Emperor adds its own."""
        ...


def build_services(master: MasterView) -> list[Service]:
    """The services ``master``'s configuration asks for, in the order the loop serves them. Each takes what it
    needs from the master here, at construction (config, arbiter, sockets, heartbeats), and asks the master
    for actions only through ``MasterControl`` (the master itself)."""
    services: list[Service] = []
    config, arbiter, sockets = master.config, master.arbiter, master.sockets
    if log_file := build_log_file(config):  # first: --logto2 takes over before the others log
        services.append(log_file)
    if stats := build_stats_server(config, sockets, arbiter, master.heartbeats, master.pause_switch):
        services.append(stats)
    listeners = [listener.name for listener in (*sockets.router, *sockets.app)]
    if notifier := build_notifier(listeners, arbiter.routers, arbiter.apps):
        services.append(notifier)
    if fifo := build_fifo(config.master_fifo, master, config.vacuum):
        services.append(fifo)
    if touch := build_touch_watcher(master, config.touch_reload, config.touch_logreopen):
        services.append(touch)
    if cheap := build_cheap_watch(arbiter, sockets.app, master):
        services.append(cheap)
    if link := build_emperor_link(master.environ, master, config.heartbeat):
        services.append(link)
    if emperor := build_emperor(config, lambda: master.arbiter.stopping):
        master.rescan_hooks.append(emperor.rescan)
        services.append(emperor)
        if emperor.stats is not None:
            services.append(emperor.stats)
    return services
