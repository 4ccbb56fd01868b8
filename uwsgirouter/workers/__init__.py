"""App workers: load a WSGI app (``app_loader``) and serve it over the uwsgi protocol (``wsgi``)."""

from uwsgirouter.workers.app_loader import AppLoadError, apply_env, load_app, run_file
from uwsgirouter.workers.wsgi import WsgiWorker

__all__ = ["AppLoadError", "WsgiWorker", "apply_env", "load_app", "run_file"]
