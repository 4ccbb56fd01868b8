"""uWSGI's throttling of bad-behaving vassals (its "blacklist"), as pure functions over one record per vassal.

A vassal that dies before it announced its loyalty is blacklisted: its next spawn may happen only ``level``
seconds after its last death. The first death costs next to nothing (uWSGI's first level is
--emperor-throttle read as microseconds: 1 ms by default), each further one adds --emperor-throttle
milliseconds, and once the level passes --emperor-max-throttle it halves instead. A loyal vassal leaves the
blacklist. As in uWSGI, a respawn is checked against the record as it stood before the death being handled,
so the waits before the 3rd, 4th, 5th... spawn are 1, 2, 3... times --emperor-throttle.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Blacklisted:
    """One vassal's throttling record (uWSGI's uwsgi_emperor_blacklist_item); times are wall-clock seconds."""

    level: float  #: seconds after ``last_attempt`` before the vassal may spawn again
    attempt: int  #: deaths counted after the first
    first_attempt: float
    last_attempt: float


#: Notes for the log when a record crosses one of uWSGI's marks.
THROTTLING = "throttling"  #: the second death after the first: "unloyal bad behaving vassal found"
MAXIMUM = "maximum"  #: the level reached --emperor-max-throttle and halves


def after_death(
    record: Blacklisted | None, now: float, throttle_ms: int, max_throttle_ms: int
) -> tuple[Blacklisted, tuple[str, ...]]:
    """The record after one more death of a vassal that was not loyal, and notes for the log."""
    if record is None:
        return Blacklisted(throttle_ms / 1_000_000, 0, now, now), ()
    notes: list[str] = []
    if record.level < max_throttle_ms / 1000:
        level = record.level + throttle_ms / 1000
    else:
        notes.append(MAXIMUM)
        level = record.level / 2
    attempt = record.attempt + 1
    if attempt == 2:
        notes.append(THROTTLING)
    return replace(record, level=level, attempt=attempt, last_attempt=now), tuple(notes)


def allowed_at(record: Blacklisted | None) -> float:
    """The earliest wall-clock time the vassal may spawn (0: at once)."""
    return 0.0 if record is None else record.last_attempt + record.level
