"""Fills the router's cache for conf/use-cache.ini (run by the master, before the router starts): key -> node,
with ``,N`` for a modifier1. The node comes from the INI's route-node (uwsgi.opt holds every key of the INI,
with its %(...) references resolved)."""

import uwsgi

node = uwsgi.opt.get("route-node", b"127.0.0.1:3031").decode()
# requests for example.com, and for example.com on port 8000 (the Host header keeps the port)
uwsgi.cache_set("example.com", node)
uwsgi.cache_set("example.com:8000", node)
# modifier1 5 (perl/PSGI) for unbit.it, as an example of the ",N" form
uwsgi.cache_set("unbit.it", node + ",5")
