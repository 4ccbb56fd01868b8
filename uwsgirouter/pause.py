"""The instance's pause switch (the master fifo's ``p``, SIGTSTP to the master), shared by the master and its
app workers.

As in uWSGI 2.0, the state lives in memory every worker shares (one byte of an anonymous shared ``mmap`` the
master creates before it forks), and the master then sends SIGTSTP to each app worker only to wake it: the
worker reads the switch, not the signal. So a SIGTSTP from elsewhere (a terminal's Ctrl-Z reaches the whole
process group) cannot pause or resume a worker against the master's state, and a worker born while the
instance is paused (a respawn, a reload) starts paused. A paused worker finishes the request in hand, then
accepts nothing until the switch is off again; connections wait in the listen queue meanwhile.
"""

from __future__ import annotations

import mmap


class PauseSwitch:
    """One shared byte: the master sets it, the workers read it."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 1)

    @property
    def on(self) -> bool:
        return self._map[0] != 0

    def set(self, paused: bool) -> None:
        self._map[0] = 1 if paused else 0
