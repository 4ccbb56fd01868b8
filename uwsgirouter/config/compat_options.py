"""uWSGI options that configurations carry over but that have nothing to switch on in uwsgirouter.

uwsgirouter is its own Python program: it loads no uWSGI plugins and speaks the uwsgi protocol only. These
settings exist so that the lines real configurations hold are understood (and checked) instead of ignored.
"""

from __future__ import annotations

from uwsgirouter.config.converters import PATH, TEXT, choice
from uwsgirouter.config.setting import Multi, Scalar


class CompatOptions:
    GROUP = "uWSGI compatibility"

    plugins = Multi(
        TEXT,
        aliases=["plugin"],
        help="Plugins to load in uWSGI, comma-separated: python, python3 (any pythonNN), corerouter and fastrouter are "
        "built in; any other plugin is named in a warning and ignored.",
    )
    need_plugins = Multi(
        TEXT, aliases=["need-plugin"], help="As --plugins (uWSGI exits when one cannot be loaded); the same check."
    )
    plugins_dir = Multi(PATH, aliases=["plugin-dir"], help="Accepted: uwsgirouter loads no plugin files.")
    protocol = Scalar(
        choice("uwsgi"),
        "uwsgi",
        aliases=["socket-protocol"],
        help="The protocol of --socket: uwsgi, the only one uwsgirouter speaks.",
    )
