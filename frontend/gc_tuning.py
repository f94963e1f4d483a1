"""The cyclic garbage collector of a frontend process (``gc_young_threshold``).

Every chat line makes a few objects that reference counting frees at once (a command, a queued line,
an acknowledgement, an event). Python's collector still runs after every 700 objects made and not yet
freed, promotes what is in flight at that moment, and so now and then walks the older generations
with every object of every room. At 1,000 rooms, outbound at full speed, that was about a tenth of the
frontend's CPU (BENCHMARKS.md, "Hot path, session 6"), at the same RSS per room.

A larger young generation makes collections rarer but each young collection longer (measured over
1,000 rooms: 700, many pauses of up to 5 ms; 5,000, a few of up to 9 ms; 20,000, some of 14-33 ms),
and a full collection of such a heap takes about 75 ms whatever the threshold (a larger one makes it
rarer). 5,000 is the default: nearly all of the CPU saved, short pauses. What only the collector
frees (reference cycles, e.g. a parted room and its session) it still frees, later. 0 keeps
Python's thresholds.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

#: the interpreter's own thresholds, as they were when the frontend was imported
PYTHON_THRESHOLDS: tuple[int, int, int] = gc.get_threshold()  # type: ignore[assignment]


def check(young: int) -> None:
    """``ValueError`` unless ``young`` is a threshold ``apply`` takes (the interpreter takes a C int)."""
    if not 0 <= young <= 2 ** 31 - 1:
        raise ValueError("gc_young_threshold must be 0 (Python's default) or more, below 2**31")


def apply(young: int) -> tuple[int, int, int]:
    """Set the young generation's threshold (0: Python's); the thresholds now in force."""
    check(young)
    wanted = PYTHON_THRESHOLDS if young == 0 else (young, *PYTHON_THRESHOLDS[1:])
    if gc.get_threshold() != wanted:
        gc.set_threshold(*wanted)
        log.info("garbage collector: a collection every %d objects (Python's default: %d)", wanted[0],
                 PYTHON_THRESHOLDS[0])
    return wanted  # type: ignore[return-value]
