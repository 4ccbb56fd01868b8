"""The mapping function of conf/code-string.ini: called with the key (the Host) of every request, returns
"host:port" (",N" for a modifier1) or None for no node. It runs inside the router's event loop: never block."""

import itertools
import os

NODES = os.environ.get("MAPPER_NODES", "127.0.0.1:3031 127.0.0.1:3032").split()
DEFAULT_NODE = NODES[0]
domains = {
    "example.com": itertools.cycle(NODES),  # round robin
    "www.example.com": itertools.cycle(NODES),
}


def get(key):
    nodes = domains.get(key)
    return next(nodes) if nodes is not None else DEFAULT_NODE
