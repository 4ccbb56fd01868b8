"""uWSGI's Emperor: the master spawns one instance (vassal) per configuration file and governs it.

``protocol`` holds the bytes both ends exchange, ``scanner`` finds the vassal files, ``throttle`` decides
how soon a dead vassal comes back, ``vassal`` is one vassal process and its end of the socketpair,
``service`` is the Emperor as a master service, and ``link`` is the other side: this instance governed by an
Emperor (uWSGI's or ours). docs/emperor.md says what is supported and how it differs from uWSGI.
"""
