"""The Emperor protocol of uWSGI 2.0: one byte at a time on a socketpair, its fd in ``UWSGI_EMPEROR_FD``.

The values are uWSGI's (core/emperor.c, core/master.c, core/utils.c); the names are ours.
"""

from __future__ import annotations

#: Environment variable naming the vassal's end of the socketpair.
EMPEROR_FD_ENV = "UWSGI_EMPEROR_FD"
#: Set when the Emperor passes the configuration itself on a second socketpair (not a file); not used here.
EMPEROR_FD_CONFIG_ENV = "UWSGI_EMPEROR_FD_CONFIG"
#: ``UWSGI_VASSAL_FOO=bar`` in the Emperor's environment becomes ``UWSGI_FOO=bar`` in every vassal's.
VASSAL_ENV_PREFIX = "UWSGI_VASSAL_"
#: Variables an Emperor does not pass on to its vassals (they belong to the Emperor's own instance).
NOT_INHERITED_ENV = ("UWSGI_RELOADS", "NOTIFY_SOCKET")

# -- from the Emperor to a vassal --------------------------------------------------------------------------
#: Stop now (uWSGI's vassal kills its workers).
STOP = 0
#: Reload gracefully.
RELOAD = 1
#: Stop gracefully (uWSGI's Emperor sends it instead of STOP under --emperor-graceful-shutdown).
GRACEFUL_STOP = 2

# -- from a vassal to its Emperor --------------------------------------------------------------------------
#: The instance is up ("has been spawned"); uWSGI's vassal sends it once its workers are forked.
READY = 1
#: The vassal asks for its configuration again (only with UWSGI_EMPEROR_FD_CONFIG).
CONFIG_REQUEST = 2
#: The first worker accepts requests ("is ready to accept requests").
ACCEPTING = 5
#: The vassal behaves ("is now loyal"): a loyal vassal that dies is respawned without throttling.
LOYAL = 17
#: "Stop me" (an idle vassal under --die-on-idle, or an on-demand vassal going back to sleep).
STOP_ME = 22
#: "I am alive", every --heartbeat seconds.
HEARTBEAT = 26
#: "Send reinforcements" (Broodlord mode, --vassal-sos).
SOS = 30

#: Exit status with which a vassal tells the Emperor not to respawn it (uWSGI's UWSGI_EXILE_CODE).
EXILE_CODE = 26

#: What each byte from a vassal means, for the log of a byte the Emperor does not act on.
VASSAL_MESSAGES = {
    READY: "ready",
    CONFIG_REQUEST: "configuration request",
    ACCEPTING: "accepting",
    LOYAL: "loyal",
    STOP_ME: "stop me",
    HEARTBEAT: "heartbeat",
    SOS: "reinforcements request",
}
