"""uWSGI-compatible configuration: settings declared once, loaded from env, command line and INI files."""

from uwsgirouter.config.loader import load_config, load_entries
from uwsgirouter.config.model import REGISTRY, Config, Entry
from uwsgirouter.config.presentation import format_help, format_show_config, render_options_markdown

__all__ = [
    "REGISTRY",
    "Config",
    "Entry",
    "format_help",
    "format_show_config",
    "load_config",
    "load_entries",
    "render_options_markdown",
]
