"""Which services a master runs, built from its configuration (one line per feature)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from uwsgirouter.emperor.link import build_emperor_link
from uwsgirouter.emperor.service import build_emperor
from uwsgirouter.services.base import Service
from uwsgirouter.services.cheap import build_cheap_watch
from uwsgirouter.services.fifo import build_fifo
from uwsgirouter.services.logfile import build_log_file
from uwsgirouter.services.notify import build_notifier
from uwsgirouter.services.stats import build_stats_server
from uwsgirouter.services.touch import build_touch_watcher

if TYPE_CHECKING:
    from uwsgirouter.master import Master


def build_services(master: Master) -> list[Service]:
    """The services ``master``'s configuration asks for, in the order the loop serves them. Each takes what it
    needs from the master here, at construction (config, arbiter, sockets, heartbeats), and asks the master
    for actions only through ``MasterControl`` (the master itself)."""
    services: list[Service] = []
    if log_file := build_log_file(master):  # first: --logto2 takes over before the others log
        services.append(log_file)
    if stats := build_stats_server(master):
        services.append(stats)
    if notifier := build_notifier(master):
        services.append(notifier)
    config = master.config
    if fifo := build_fifo(config.master_fifo, master, config.vacuum):
        services.append(fifo)
    if touch := build_touch_watcher(master, config.touch_reload, config.touch_logreopen):
        services.append(touch)
    if cheap := build_cheap_watch(master):
        services.append(cheap)
    if link := build_emperor_link(master.environ, master, config.heartbeat):
        services.append(link)
    if emperor := build_emperor(config, lambda: master.arbiter.stopping):
        master.rescan_hooks.append(emperor.rescan)
        services.append(emperor)
    return services
