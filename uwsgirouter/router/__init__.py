"""The router worker: accepts uwsgi requests, picks a node by key and relays both directions."""
