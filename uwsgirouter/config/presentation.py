"""What the configuration looks like to a user: ``--help``, ``--show-config`` and the options reference.

All three come from the setting declarations, so they cannot drift from what the parser accepts.
``--help`` is rendered by configargparse, which also shows each option's ``UWSGI_*`` variable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import configargparse

from uwsgirouter import __version__
from uwsgirouter.config.model import REGISTRY, Entry
from uwsgirouter.config.setting import Arg, Setting

DESCRIPTION = (
    "A drop-in replacement for the uWSGI FastRouter: routes uwsgi-protocol requests by key "
    "(UWSGI_FASTROUTER_KEY > HTTP_HOST > SERVER_NAME). Options work as in uWSGI: on the command line, "
    "in INI files (uwsgirouter site.ini, --ini file.ini[:section]) and as UWSGI_<OPTION> variables."
)


def _metavar(setting: Setting[Any]) -> str:
    return setting.converter.metavar


def build_help_parser() -> configargparse.ArgumentParser:
    """An argparse parser used only to render ``--help``; our own loader parses the command line."""
    parser = configargparse.ArgumentParser(
        prog="uwsgirouter",
        usage="uwsgirouter [OPTIONS] [FILE.ini ...]",
        description=DESCRIPTION,
        add_help=False,
        add_env_var_help=True,
        formatter_class=configargparse.HelpFormatter,
    )
    groups: dict[str, Any] = {}
    for setting in REGISTRY.settings:
        group = groups.get(setting.group)
        if group is None:
            group = groups[setting.group] = parser.add_argument_group(setting.group)
        kwargs: dict[str, Any] = {"help": setting.full_help.replace("%", "%%"), "env_var": setting.env_var}
        if setting.arg is Arg.NONE:
            kwargs["action"] = "store_true"
        elif setting.arg is Arg.OPTIONAL:
            kwargs["nargs"] = "?"
            kwargs["metavar"] = _metavar(setting)
        else:
            kwargs["metavar"] = _metavar(setting)
        group.add_argument(*setting.flags, **kwargs)
    return parser


def format_help() -> str:
    return str(build_help_parser().format_help())


def format_show_config(entries: Sequence[Entry]) -> str:
    """uWSGI's ``--show-config`` layout: every entry in load order, a bare flag shown as ``true``."""
    lines = ["", ";uwsgirouter instance configuration", "[uwsgi]"]
    lines += [f"{e.key} = {'true' if e.value is None else e.value}" for e in entries]
    lines += [";end of configuration", "", ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _default_text(setting: Setting[Any]) -> str:
    if setting.multiple:
        return "(none; repeatable)"
    default = setting.default
    if default is None or default == "":
        return "(unset)"
    if default is True or default is False:
        return "off"
    return f"`{default}`"


def render_options_markdown() -> str:
    """The options reference, ``docs/options.md``; a test fails when the committed copy is stale."""
    out = [
        "# uwsgirouter options",
        "",
        f"Generated from the setting declarations of uwsgirouter {__version__} by `scripts/build_options_doc.py`;"
        " do not edit by hand.",
        "",
        "Every option can be given three ways, exactly as in uWSGI:",
        "",
        "- on the command line: `--fastrouter-use-base /tmp/sockets/` or `--fastrouter-use-base=/tmp/sockets/`;",
        "- as a key of an INI file's `[uwsgi]` section: `fastrouter-use-base = /tmp/sockets/`;",
        "- as an environment variable: `UWSGI_FASTROUTER_USE_BASE=/tmp/sockets/`.",
        "",
        "Options marked *later* are accepted and validated, but take effect in a later release.",
        "",
    ]
    group = ""
    for setting in REGISTRY.settings:
        if setting.group != group:
            group = setting.group
            out += ["", f"## {group}", "", "| option | value | default | environment | what it does |"]
            out.append("|---|---|---|---|---|")
        flags = ", ".join(f"`{flag}`" for flag in setting.flags)
        value = {Arg.NONE: "flag", Arg.OPTIONAL: f"[={_metavar(setting)}]"}.get(setting.arg, _metavar(setting))
        text = _md(setting.help) + (" *later*" if setting.planned else "")
        out.append(f"| {flags} | {_md(value)} | {_md(_default_text(setting))} | `{setting.env_var}` | {text} |")
    return "\n".join(out) + "\n"
