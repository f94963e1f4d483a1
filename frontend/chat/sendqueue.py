"""A connection's outgoing lines: one bounded queue per room, served fairly under a token bucket.

Fair twice over: between *tenants* first, then between the rooms of a tenant. The writer takes one line
from each tenant that has lines ready in turn, and within a tenant one line from each of its ready
rooms in turn, so neither one chatty room nor one tenant with many rooms can starve the others: a
tenant with one line waiting gets it out within a turn of the tenants ahead of it, however many lines
and rooms the others have. Rooms without a ``tenant`` are one tenant; a tenant is its label here,
registered or not. Only rooms that are *enabled* (joined) are served; the lines of a room that is
(re)joining wait. A line whose deadline passed when its turn comes is dropped as ``stale``; past
``max_per_room`` queued lines the oldest are dropped as ``flood_dropped``.

The rooms of a registered tenant also obey the tenant's share on this frontend (``TenantShares``,
``tenant_share.py``, given with ``use_shares``): a line takes a token from the tenant's bucket
(``lines_per_minute``) before the connection's; a tenant whose bucket is empty is passed over (the
other tenants go on) and the writer is told when its next token is due. Past the tenant's
``max_queued`` lines queued on this frontend (over every connection) its oldest line is dropped
(reported as ``tenant_queued``: an ``error`` ``flood_dropped`` for the room). The cost per line for
such a room is an attribute read, a bucket take and two additions; for any other room, nothing.

Queues are keyed by *seat* (``base.Seat``: a room's membership of one channel or MUC; its ``tenant``
is the room's), so rooms on one channel still get their own queue and fair share, an acknowledgement
goes to the room whose line it was, and a room moving to another channel keeps its old lines apart
from its new ones.

A line whose ``data`` is None is a *barrier*: it writes nothing and takes no token; its ``on_sent``
runs once the room's lines before it are written (a room leaving a channel that another room keeps).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Hashable, Optional

import gevent.event

from ..pacing import TokenBucket
from ..protocol import Command
from .tenant_share import TenantShare, TenantShares

log = logging.getLogger(__name__)

#: the drop code of a line dropped for its tenant's ``max_queued`` (the room hears ``flood_dropped``)
TENANT_QUEUED = "tenant_queued"


class OutLine:
    """One protocol line (bytes, CRLF-terminated; None for a barrier) and what to do once written."""

    __slots__ = ("data", "command", "deadline", "on_sent", "seq")

    def __init__(self, data: Any, command: Command | None = None, deadline: float = float("inf"),
                 on_sent: Callable[[], None] | None = None) -> None:
        self.data = data
        self.command = command  # set on a command's last line only: acknowledged once that is sent
        self.deadline = deadline
        self.on_sent = on_sent
        self.seq = 0  # its tenant's count when queued (registered tenants: the oldest is the lowest)


DropHandler = Callable[[Hashable, OutLine, str], None]


class _Lines(deque):
    """A seat's queued lines, and the tenant group of the seat."""

    __slots__ = ("group",)


#: the ``ready`` of a group out of its queue's ring
NOT_READY: tuple[()] = ()


class _Group:
    """The seats of one tenant on this connection: those with lines ready, in turn (``ready``), and
    every seat that is enabled or has lines (``members``; the group goes when it has none). A group
    is in its queue's ring exactly while ``ready`` is not empty."""

    __slots__ = ("tenant", "share", "ready", "members", "queue")

    def __init__(self, tenant: Any, share: Optional[TenantShare], queue: "SendQueue") -> None:
        self.tenant = tenant
        self.share = share
        #: a deque while the group is in its queue's ring; the empty tuple while it is not (an empty
        #: deque is 0.8 KB, and a connection's group of quiet rooms is out of the ring most of the time)
        self.ready: deque[Hashable] | tuple[()] = NOT_READY
        self.members: set[Hashable] = set()
        self.queue = queue

    def __repr__(self) -> str:
        return f"<group {self.tenant!r}: {len(self.ready)} ready of {len(self.members)}>"


def _tenant_of(seat: Hashable) -> Any:
    return getattr(seat, "tenant", None)


class SendQueue:
    """Per-room FIFO queues, served round-robin by tenant then by room, optional token bucket."""

    __slots__ = ("bucket", "max_per_room", "_on_drop", "_queues", "_enabled", "_ring", "_in_ready",
                 "_groups", "_last", "wake", "_on_wake", "shares", "_sent", "_emptied", "__weakref__")

    def __init__(self, bucket: TokenBucket | None, max_per_room: int, on_drop: DropHandler,
                 on_wake: Callable[[], None] | None = None, shares: Optional[TenantShares] = None) -> None:
        self.bucket = bucket
        self.max_per_room = max_per_room
        self._on_drop = on_drop
        self._queues: dict[Hashable, _Lines] = {}
        self._enabled: set[Hashable] = set()
        # made when the first line is queued (a room that never speaks costs no deque: 0.7 KB)
        self._ring: deque[_Group] | None = None
        self._in_ready: set[Hashable] | None = None
        self._groups: dict[Any, _Group] = {}
        self._last: Optional[_Group] = None  # the group a line was last queued for (most are one)
        self.wake = gevent.event.Event()
        #: called right after ``wake`` is set: the IRC connection starts its writer on demand
        self._on_wake = on_wake
        #: the registered tenants' shares on this frontend (None: no tenant limits, nothing counted)
        self.shares: Optional[TenantShares] = None
        self._sent = None  # the frontend's tally of every room's lines sent (the shares')
        #: room -> an Event set when its last queued line is taken (``wait_empty``; made on first use)
        self._emptied: dict[Hashable, gevent.event.Event] | None = None
        if shares is not None:
            self.use_shares(shares)

    def use_shares(self, shares: Optional[TenantShares]) -> None:
        """Consult these tenant shares from now on (the pool gives every session its frontend's);
        they call ``rebind`` when a tenant gets or loses its share."""
        self.shares = shares
        self._sent = shares.lines if shares is not None else None
        if shares is not None:
            shares.watch(self)
        self.rebind()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def has_ready(self) -> bool:
        """True while some enabled room has lines waiting."""
        ring = self._ring
        if not ring:
            return False
        queues, enabled = self._queues, self._enabled
        return any(queues.get(r) for g in ring for r in g.ready if r in enabled)

    def has_lines(self) -> bool:
        """Cheap: False when no room has a line queued (emptied queues are dropped)."""
        return bool(self._queues)

    def depth(self, room: Hashable) -> int:
        q = self._queues.get(room)
        return len(q) if q else 0

    def wait_empty(self, room: Hashable, timeout: float) -> bool:
        """Block the calling greenlet until the room has no line queued (taken by the writer, dropped,
        or the room removed), or ``timeout`` seconds; True when none is left."""
        if not self._queues.get(room):
            return True
        emptied = self._emptied
        if emptied is None:
            emptied = self._emptied = {}
        event = emptied.get(room)
        if event is None:
            event = emptied[room] = gevent.event.Event()
        # (a wait that times out leaves its Event: it goes when the queue empties or the room goes)
        return event.wait(timeout) or not self._queues.get(room)

    def _now_empty(self, room: Hashable) -> None:
        """The room's last queued line went: whoever waits for that (``wait_empty``) goes on."""
        emptied = self._emptied
        if emptied:
            event = emptied.pop(room, None)
            if event is not None:
                event.set()

    # ------------------------------------------------------------------------------ groups
    def _group_of(self, room: Hashable) -> _Group:
        tenant = _tenant_of(room)
        group = self._groups.get(tenant)
        if group is None:
            shares = self.shares
            share = shares.get(tenant) if shares is not None else None
            group = self._groups[tenant] = _Group(tenant, share, self)
            if share is not None:
                share.groups.add(group)
        group.members.add(room)
        return group

    def _lines_of(self, room: Hashable) -> _Lines:
        """The room's queue, made (and its group joined) when it has none."""
        q = self._queues.get(room)
        if q is None:
            q = self._queues[room] = _Lines()
            q.group = self._group_of(room)
        return q

    def _forget(self, room: Hashable, group: _Group) -> None:
        """The room has no lines left: its queue goes (an empty deque is 0.7 KB: most rooms are quiet),
        and the room leaves its group unless it is enabled."""
        del self._queues[room]
        if self._emptied:
            self._now_empty(room)
        if room not in self._enabled:
            self._leave(room, group)

    def _leave(self, room: Hashable, group: _Group) -> None:
        group.members.discard(room)
        if not group.members and not group.ready:
            self._drop_group(group)

    def _drop_group(self, group: _Group) -> None:
        if self._last is group:
            self._last = None
        if self._groups.get(group.tenant) is group:
            del self._groups[group.tenant]
        if group.share is not None:
            group.share.groups.discard(group)

    def rebind(self) -> None:
        """The tenant registry changed (a tenant got or lost its share): every group looks its
        tenant's share up again, its queued lines counted over."""
        shares = self.shares
        for group in list(self._groups.values()):
            new = shares.get(group.tenant) if shares is not None else None
            old = group.share
            if new is old:
                continue
            lines = sum(1 for r in group.members for line in self._queues.get(r, ()) if line.data is not None)
            if old is not None:
                old.groups.discard(group)
                old.queued -= lines
            group.share = new
            if new is not None:
                new.groups.add(group)
                new.queued += lines

    # ------------------------------------------------------------------------------ lines in
    def put(self, room: Hashable, line: OutLine) -> None:
        q = self._queues.get(room)
        if q is None:
            q = self._queues[room] = _Lines()
            group = self._last
            if group is None or room not in group.members:
                group = self._last = self._group_of(room)
            q.group = group
        else:
            group = q.group
            if len(q) >= self.max_per_room:
                self._drop(room, q, "flood_dropped")
        q.append(line)
        share = group.share
        if share is not None and line.data is not None:
            share.seq += 1
            line.seq = share.seq
            share.queued += 1
            limit = share.max_queued
            if limit is not None and share.queued > limit:
                _drop_oldest(share)
        in_ready = self._in_ready
        if in_ready is None:
            self._mark_ready(room, q)
        elif room not in in_ready and room in self._enabled and q:
            in_ready.add(room)
            ready = group.ready
            if not ready:
                ready = group.ready = deque()
                self._ring.append(group)  # type: ignore[union-attr]
            ready.append(room)
            self.wake.set()
            if self._on_wake is not None:
                self._on_wake()

    def put_front(self, items: list[tuple[Hashable, OutLine]]) -> None:
        """Give back lines taken for a write that failed, keeping their order (they count as queued
        again, without a drop: they were accepted before)."""
        for room, line in reversed(items):
            q = self._lines_of(room)
            q.appendleft(line)
            share = q.group.share
            if share is not None and line.data is not None:
                share.queued += 1
            self._mark_ready(room, q)

    def enable(self, room: Hashable) -> None:
        self._enabled.add(room)
        self._group_of(room)
        q = self._queues.get(room)
        if q is not None:
            self._mark_ready(room, q)

    def disable(self, room: Hashable) -> None:
        if room in self._enabled:
            self._enabled.discard(room)
            if room not in self._queues:
                group = self._groups.get(_tenant_of(room))
                if group is not None:
                    self._leave(room, group)

    def remove(self, room: Hashable) -> list[OutLine]:
        """Forget a room; returns its unsent lines."""
        self._enabled.discard(room)
        q = self._queues.pop(room, None)
        if self._emptied:
            self._now_empty(room)
        group = q.group if q is not None else self._groups.get(_tenant_of(room))
        if group is not None:
            if q and group.share is not None:
                group.share.queued -= sum(1 for line in q if line.data is not None)
            self._leave(room, group)
        return list(q) if q else []

    def _mark_ready(self, room: Hashable, q: _Lines) -> None:
        in_ready = self._in_ready
        if in_ready is None:
            in_ready = self._in_ready = set()
            self._ring = deque()
        if room not in in_ready and room in self._enabled and q:
            in_ready.add(room)
            ready = q.group.ready
            if not ready:
                ready = q.group.ready = deque()
                self._ring.append(q.group)  # type: ignore[union-attr]
            ready.append(room)
            self.wake.set()
            if self._on_wake is not None:
                self._on_wake()

    def _drop(self, room: Hashable, q: _Lines, code: str) -> OutLine:
        """Drop the room's oldest line (the queue may be left empty: the caller sees to it)."""
        line = q.popleft()
        share = q.group.share
        if line.data is not None:
            if share is not None:
                share.queued -= 1
                share.tally.dropped += 1
        if not q and self._emptied:
            self._now_empty(room)
        self._on_drop(room, line, code)
        return line

    # ------------------------------------------------------------------------------ lines out
    def take(self, limit: int) -> tuple[list[tuple[Hashable, OutLine]], float]:
        """Up to ``limit`` lines due now, fairly across tenants, then rooms; and seconds until the next
        token when lines are waiting for one (the connection's, or every ready tenant's) (else 0.0)."""
        out: list[tuple[Hashable, OutLine]] = []
        ring = self._ring
        if not ring:
            return out, 0.0
        in_ready = self._in_ready
        assert in_ready is not None
        queues, enabled, bucket = self._queues, self._enabled, self.bucket
        now = time.time()
        barriers = 0
        wait = 0.0
        group = ring[0]
        if len(ring) == 1 and group.share is None:
            # one tenant without a share has lines ready (most connections): round-robin between its
            # rooms, as fast as before tenants had turns
            ready = group.ready
            while ready and len(out) < limit:
                room = ready[0]
                q = queues.get(room)
                if not q or room not in enabled:
                    ready.popleft()
                    in_ready.discard(room)
                    if q is not None and not q:
                        self._forget(room, group)
                    continue
                line = q[0]
                if line.deadline < now:
                    self._drop(room, q, "stale")
                    continue
                if line.data is None:
                    barriers += 1
                elif bucket is not None:
                    wait = bucket.take()
                    if wait > 0:
                        break
                ready.popleft()
                out.append((room, q.popleft()))
                if q:
                    ready.append(room)
                else:
                    in_ready.discard(room)
                    del queues[room]  # (the room is enabled: it stays in its group)
                    if self._emptied:
                        self._now_empty(room)
            if not ready:
                ring.popleft()
                group.ready = NOT_READY
                if not group.members:
                    self._drop_group(group)
            tally = self._sent
            if tally is not None:
                tally.sent += len(out) - barriers
            return out, wait
        passed = 0  # tenants passed over in a row because their bucket is empty
        tenant_wait = 0.0
        while ring and len(out) < limit:
            group = ring[0]
            ready = group.ready
            if not ready:
                ring.popleft()
                group.ready = NOT_READY
                if not group.members:
                    self._drop_group(group)
                continue
            room = ready[0]
            q = queues.get(room)
            if not q or room not in enabled:
                ready.popleft()
                in_ready.discard(room)
                if q is not None and not q:
                    self._forget(room, group)
                continue
            line = q[0]
            if line.deadline < now:
                self._drop(room, q, "stale")
                continue
            share = group.share
            if line.data is None:
                barriers += 1
            elif share is None:
                if bucket is not None:
                    wait = bucket.take()
                    if wait > 0:
                        break
            else:  # a registered tenant's line: its bucket first, then the connection's
                tb = share.bucket
                if tb is not None:
                    wait = tb.take()
                    if wait > 0:  # this tenant is out of lines for now: the next tenant's turn
                        passed += 1
                        if not tenant_wait or wait < tenant_wait:
                            tenant_wait = wait
                        if passed >= len(ring):
                            wait = tenant_wait
                            break
                        ring.rotate(-1)
                        wait = 0.0
                        continue
                if bucket is not None:
                    wait = bucket.take()
                    if wait > 0:
                        if tb is not None:
                            tb.refund()
                        break
                share.queued -= 1
                share.tally.sent += 1
            passed = 0
            ready.popleft()
            out.append((room, q.popleft()))
            if q:
                ready.append(room)
            else:
                in_ready.discard(room)
                del queues[room]  # (the room is enabled: it stays in its group)
                if self._emptied:
                    self._now_empty(room)
            if not ready:
                ring.popleft()
                group.ready = NOT_READY
                if not group.members:
                    self._drop_group(group)
            elif len(ring) > 1:
                ring.rotate(-1)
        tally = self._sent
        if tally is not None:
            tally.sent += len(out) - barriers
        return out, wait


def _drop_oldest(share: TenantShare) -> None:
    """The tenant has more than its ``max_queued`` lines queued on this frontend: drop its oldest one,
    whichever connection and room it waits in (the lowest ``seq`` among the rooms' first lines that
    write something: barriers before it, which write nothing and are not counted, stay)."""
    best: Optional[tuple[int, SendQueue, Hashable, _Lines, int]] = None
    for group in share.groups:
        queues = group.queue._queues
        for room in group.members:
            q = queues.get(room)
            if not q:
                continue
            for index, line in enumerate(q):
                if line.data is not None:
                    if best is None or line.seq < best[0]:
                        best = (line.seq, group.queue, room, q, index)
                    break
    if best is None:
        return
    _, queue, room, q, index = best
    if index:
        q.rotate(-index)  # the line to drop at the head, the barriers before it at the tail ...
        queue._drop(room, q, TENANT_QUEUED)
        q.rotate(index)   # ... and back in front, in their order
    else:
        queue._drop(room, q, TENANT_QUEUED)
    if not q and (queue._in_ready is None or room not in queue._in_ready):
        queue._forget(room, q.group)  # (a room in turn is cleaned up by ``take`` when it comes)


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
    if not last:  # one line, the commonest command
        queue.put(key, OutLine(items[0], command, deadline))
        return
    for i, item in enumerate(items):
        queue.put(key, OutLine(item, command if i == last else None, deadline))


def report_drop(room: Any, line: OutLine, code: str, max_per_room: int) -> None:
    """A queued line was dropped (``stale``, ``flood_dropped``, or ``tenant_queued``: its tenant's
    ``max_queued``, reported as ``flood_dropped``): the room's backend hears why."""
    if line.command is None:
        return
    if code == "stale":
        detail = "older than its deadline when its turn came"
    elif code == TENANT_QUEUED:
        detail = (f"more than the max_queued lines of tenant {room.spec.tenant} were queued "
                  "(its share on this frontend): its oldest line was dropped")
        code = "flood_dropped"
    else:
        detail = f"more than {max_per_room} lines queued for the room"
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
