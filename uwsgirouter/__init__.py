"""uwsgirouter: a drop-in replacement for the uWSGI FastRouter."""

__version__ = "0.1.0"
