"""Features of the master that its loop drives through one interface (``Service``).

Each feature (stats server, master fifo, service-manager notifications, touch watchers, log reopening, the
subscription server and announcer) is a small module here or in its own package; the master only
collects their descriptors and deadlines, waits, and dispatches. See ``base`` for the interface.
"""

from uwsgirouter.services.base import Lifecycle, MasterControl, Service

__all__ = ["Lifecycle", "MasterControl", "Service"]
