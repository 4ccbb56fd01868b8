"""Modules imported before ``--uid``/``--gid`` drop privileges, so that nothing is imported after it.

After the drop the interpreter's own files may be unreadable (an interpreter installed under ``/root``): a
module first imported later fails there, as ``open(path, encoding="ascii")`` did when the master removed its
pidfile at exit (``LookupError: unknown encoding: ascii``). Codecs are looked up by name at first use, so
every codec the code names is imported here; the rest of the code imports at module level, and the few
deferred imports (cryptography for signing, the WSGI worker for app instances) happen while the master builds
its parts, before the drop. The application's own modules load after the drop, as in uWSGI.
"""

from __future__ import annotations

import importlib

#: Codecs named in the code (``encoding="ascii"``, ``.decode("latin-1")``...) and the ones the socket
#: module uses for host names (``idna``).
CODECS = ("encodings.ascii", "encodings.latin_1", "encodings.utf_8", "encodings.idna")


def preload() -> None:
    """Import now what would otherwise be imported at first use."""
    for name in CODECS:
        importlib.import_module(name)
    # Lookups by name fill the codec cache too, which is what the first use would do.
    for codec in ("ascii", "latin-1", "utf-8", "idna"):
        "".encode(codec)
