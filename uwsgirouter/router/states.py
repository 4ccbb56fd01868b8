"""The session's state machine: its states, the events that move it, and the one table of allowed moves.

States and the events that move between them (``TRANSITIONS``; any other move is a bug and raises)::

    HEAD ──buffer──> BUFFERING            (post-buffering: the body is held before a node is chosen)
    HEAD, BUFFERING, WAITING, CONNECTING, RELAY ──connecting──> CONNECTING  (a node's handshake is under way)
    HEAD, BUFFERING, WAITING, CONNECTING, RELAY ──connected──> RELAY        (the head went out: relay both ways)
    HEAD, BUFFERING, WAITING, CONNECTING, RELAY ──no_descriptor──> WAITING  (no descriptor left for the node)
    HEAD, BUFFERING, WAITING, CONNECTING, RELAY ──closing──> CLOSING        (an error page or the rest of the
                                                                            answer is flushed, then the end)
    any but DONE ──close──> DONE

CONNECTING and RELAY lead back to CONNECTING/RELAY when a node fails and the request goes to the next one.
"""

from __future__ import annotations

from typing import Final

HEAD: Final = 0
BUFFERING: Final = 1
WAITING: Final = 2
CONNECTING: Final = 3
RELAY: Final = 4
CLOSING: Final = 5
DONE: Final = 6
STATE_NAMES: Final = ("HEAD", "BUFFERING", "WAITING", "CONNECTING", "RELAY", "CLOSING", "DONE")

# events
BUFFER: Final = 0
CONNECT_STARTED: Final = 1
CONNECTED: Final = 2
NO_DESCRIPTOR: Final = 3
CLOSE_AFTER_FLUSH: Final = 4
CLOSE: Final = 5
EVENT_NAMES: Final = ("buffer", "connecting", "connected", "no_descriptor", "closing", "close")
_EVENTS: Final = 6

_ROUTING_STATES = (HEAD, BUFFERING, WAITING, CONNECTING, RELAY)
#: (state, event) -> next state; what is not here is not a move the session makes.
TRANSITIONS: Final[dict[tuple[int, int], int]] = {
    (HEAD, BUFFER): BUFFERING,
    **{(state, CONNECT_STARTED): CONNECTING for state in _ROUTING_STATES},
    **{(state, CONNECTED): RELAY for state in _ROUTING_STATES},
    **{(state, NO_DESCRIPTOR): WAITING for state in _ROUTING_STATES},
    **{(state, CLOSE_AFTER_FLUSH): CLOSING for state in _ROUTING_STATES},
    **{(state, CLOSE): DONE for state in (*_ROUTING_STATES, CLOSING)},
}
#: The same table flat, indexed by ``state * _EVENTS + event`` (-1: no such move): a lookup without a
#: key tuple to build, four times a request.
_NEXT_STATE: Final = tuple(
    TRANSITIONS.get((state, event), -1) for state in range(len(STATE_NAMES)) for event in range(_EVENTS)
)


class InvalidTransition(Exception):
    """A session was asked to make a move its state machine does not have (a bug, never the peer's doing)."""


def next_state(state: int, event: int) -> int:
    """The state ``event`` moves a session in ``state`` to; ``InvalidTransition`` if it is not a move of the table."""
    following = _NEXT_STATE[state * _EVENTS + event]
    if following < 0:
        raise InvalidTransition(f"{EVENT_NAMES[event]!r} in state {STATE_NAMES[state]}")
    return following
