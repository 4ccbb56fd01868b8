"""Statistics for monitoring tools: uWSGI's stats documents (for uwsgitop and the like) and Prometheus metrics.

``document`` builds the master's document, ``prometheus`` turns documents into metrics, ``exchange`` serves one
stats client without blocking the loop that owns it (the master's, or a router process's).
"""
