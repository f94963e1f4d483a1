"""A connection's outgoing lines: one bounded queue per room, served round-robin under a token bucket.

Rooms sharing a connection get their lines out fairly: the writer takes one line from each ready room
in turn, so one chatty room cannot starve another. Only rooms that are *enabled* (joined) are
served; the lines of a room that is (re)joining wait. A line whose deadline passed when its turn comes
is dropped as ``stale``; past ``max_per_room`` queued lines the oldest are dropped as ``flood_dropped``.

Queues are keyed by *seat* (``base.Seat``: a room's membership of one channel or MUC), so rooms on
one channel still get their own queue and fair share, an acknowledgement goes to the room whose line
it was, and a room moving to another channel keeps its old lines apart from its new ones.

A line whose ``data`` is None is a *barrier*: it writes nothing and takes no token; its ``on_sent``
runs once the room's lines before it are written (a room leaving a channel that another room keeps).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Hashable

import gevent.event

from ..pacing import TokenBucket
from ..protocol import Command

log = logging.getLogger(__name__)


class OutLine:
    """One protocol line (bytes, CRLF-terminated; None for a barrier) and what to do once written."""

    __slots__ = ("data", "command", "deadline", "on_sent")

    def __init__(self, data: Any, command: Command | None = None, deadline: float = float("inf"),
                 on_sent: Callable[[], None] | None = None) -> None:
        self.data = data
        self.command = command  # set on a command's last line only: acknowledged once that is sent
        self.deadline = deadline
        self.on_sent = on_sent


DropHandler = Callable[[Hashable, OutLine, str], None]


class SendQueue:
    """Per-room FIFO queues, round-robin service, optional token bucket."""

    __slots__ = ("bucket", "max_per_room", "_on_drop", "_queues", "_enabled", "_ready", "_in_ready",
                 "wake", "_on_wake")

    def __init__(self, bucket: TokenBucket | None, max_per_room: int, on_drop: DropHandler,
                 on_wake: Callable[[], None] | None = None) -> None:
        self.bucket = bucket
        self.max_per_room = max_per_room
        self._on_drop = on_drop
        self._queues: dict[Hashable, deque[OutLine]] = {}
        self._enabled: set[Hashable] = set()
        # made when the first line is queued (a room that never speaks costs no deque: 0.7 KB)
        self._ready: deque[Hashable] | None = None
        self._in_ready: set[Hashable] | None = None
        self.wake = gevent.event.Event()
        #: called right after ``wake`` is set: the IRC connection starts its writer on demand
        self._on_wake = on_wake

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def has_ready(self) -> bool:
        """True while some enabled room has lines waiting."""
        ready = self._ready
        return bool(ready) and any(self._queues.get(r) for r in ready if r in self._enabled)

    def has_lines(self) -> bool:
        """Cheap: False when no room has a line queued (emptied queues are dropped)."""
        return bool(self._queues)

    def depth(self, room: Hashable) -> int:
        q = self._queues.get(room)
        return len(q) if q else 0

    def put(self, room: Hashable, line: OutLine) -> None:
        q = self._queues.get(room)
        if q is None:
            q = self._queues[room] = deque()
        if len(q) >= self.max_per_room:
            self._on_drop(room, q.popleft(), "flood_dropped")
        q.append(line)
        self._mark_ready(room)

    def put_front(self, items: list[tuple[Hashable, OutLine]]) -> None:
        """Give back lines taken for a write that failed, keeping their order."""
        for room, line in reversed(items):
            self._queues.setdefault(room, deque()).appendleft(line)
            self._mark_ready(room)

    def enable(self, room: Hashable) -> None:
        self._enabled.add(room)
        self._mark_ready(room)

    def disable(self, room: Hashable) -> None:
        self._enabled.discard(room)

    def remove(self, room: Hashable) -> list[OutLine]:
        """Forget a room; returns its unsent lines."""
        self._enabled.discard(room)
        return list(self._queues.pop(room, ()))

    def _mark_ready(self, room: Hashable) -> None:
        in_ready = self._in_ready
        if in_ready is None:
            in_ready = self._in_ready = set()
            self._ready = deque()
        if room in self._enabled and room not in in_ready and self._queues.get(room):
            in_ready.add(room)
            self._ready.append(room)  # type: ignore[union-attr]
            self.wake.set()
            if self._on_wake is not None:
                self._on_wake()

    def take(self, limit: int) -> tuple[list[tuple[Hashable, OutLine]], float]:
        """Up to ``limit`` lines due now, fairly across rooms; and seconds until the next token
        when lines are waiting for one (else 0.0)."""
        out: list[tuple[Hashable, OutLine]] = []
        ready, in_ready = self._ready, self._in_ready
        if not ready:
            return out, 0.0
        assert in_ready is not None
        now = time.time()
        while ready and len(out) < limit:
            room = ready[0]
            q = self._queues.get(room)
            if not q or room not in self._enabled:
                ready.popleft()
                in_ready.discard(room)
                if q is not None and not q:
                    del self._queues[room]
                continue
            if q[0].deadline < now:
                self._on_drop(room, q.popleft(), "stale")
                continue
            if self.bucket is not None and q[0].data is not None:
                wait = self.bucket.take()
                if wait > 0:
                    return out, wait
            ready.popleft()
            out.append((room, q.popleft()))
            if q:
                ready.append(room)
            else:
                in_ready.discard(room)
                del self._queues[room]  # an empty deque is 0.7 KB: most rooms are quiet
        return out, 0.0


# ------------------------------------------------------------ what adapters tell rooms about lines


def queue_command(queue: SendQueue, key: Hashable, room: Any, command: Command, items: list[Any],
                  max_line_age: float) -> None:
    """Queue a command's protocol items; the last carries the command, acked once it is delivered.

    A command with nothing printable is answered with an ``error`` and acked at once.
    """
    if not items:
        room.emit("error", code="bad_command", detail="text has nothing printable to send",
                  cmd_id=command.cmd_id)
        room.ack(command)
        return
    deadline = command.expires if command.expires is not None else command.received + max_line_age
    last = len(items) - 1
    for i, item in enumerate(items):
        queue.put(key, OutLine(item, command if i == last else None, deadline))


def report_drop(room: Any, line: OutLine, code: str, max_per_room: int) -> None:
    """A queued line was dropped (``stale`` or ``flood_dropped``): the room's backend hears why."""
    if line.command is None:
        return
    detail = ("older than its deadline when its turn came" if code == "stale"
              else f"more than {max_per_room} lines queued for the room")
    log.warning("room %s: dropped a line (%s)", room.id, code)
    room.emit("error", code=code, detail=detail, cmd_id=line.command.cmd_id)
    room.ack(line.command)


def report_unsent(room: Any, lines: list[OutLine]) -> None:
    """The room was parted with these lines still queued: each command gets ``not_sent``."""
    for line in lines:
        if line.command is not None:
            room.emit("error", code="not_sent", detail="the room was parted before this was sent",
                      cmd_id=line.command.cmd_id)
            room.ack(line.command)
