"""The in-flight ledger: every command this frontend took and has not yet written to the chat server.

One class owns it (python-rq's ``IntermediateQueue`` is the model): the Redis hash
``control:ledger:<frontend id>`` (seq -> stored item) and its mirror here. Items enter it atomically in
a script, numbered from the frontend's counter: its router's script (what it routed to itself) or its
intake script (what other routers routed to it, from its inbox). Both come back here, and ``accept``
hands them out strictly in sequence order, whichever loop's reply arrives first, so the commands of a
room keep their order. An item leaves when its room wrote it or rejected it: ``ack(seq)`` queues an
HDEL that the outgoing dispatcher writes with its next batch (``take_acks``/``written``): one HDEL per
command, whatever the ledger holds.

The ledger is bounded (``inflight_max`` items, ``inflight_max_bytes`` bytes): the loops take no more
than there is room for, so a backlog waits in Redis, not in this process.

Nothing is lost: a reply lost on the way back leaves numbered entries this process never saw; the gap
they leave in the sequence is filled from Redis (``fill_gaps``), and after a Redis error the loops
``adopt_unknown`` at once. A dead frontend's ledger is routed to the new holders of its rooms
(``takeover.lua``); a ledger of a frontend that had no lease (a version before several frontends) goes
back to the head of ``control`` (``take_over``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import gevent.event
import redis

from . import scripts
from .config import Settings
from .keys import Keys

log = logging.getLogger(__name__)

TAKEOVER_LOCK_MS = 30_000
#: a gap in the sequence older than this is looked up in Redis (a reply lost on the way back)
GAP_TIMEOUT = 2.0


class InflightLedger:
    """The commands this frontend holds, in Redis and here."""

    def __init__(self, client: redis.Redis, keys: Keys, frontend_id: str, *, max_items: int,
                 max_bytes: int, wake_writer: Callable[[], None] = lambda: None,
                 ack_delay: float = 0.0) -> None:
        self._client = client
        self.keys = keys
        self.frontend_id = frontend_id
        self.key = keys.ledger(frontend_id)
        self.landing = keys.landing(frontend_id)
        self.inbox = keys.inbox(frontend_id)
        self.seq_key = keys.ledger_seq(frontend_id)
        self.max_items, self.max_bytes = max_items, max_bytes
        self._wake_writer = wake_writer
        #: seconds an acknowledgement may wait for others before the writer is woken for it
        #: (``ack_batch_delay``; 0: at once); anything else the writer writes meanwhile takes it along
        self.ack_delay = ack_delay
        self._ack_timer: Any = None
        self._acks_due = False
        self._held: dict[int, tuple[int, float]] = {}  # seq -> (bytes, monotonic time taken)
        self._bytes = 0
        self._acks: list[int] = []  # acknowledged, HDEL not written yet (still held)
        self._pending: dict[int, bytes] = {}  # taken, waiting for an earlier seq to be handed out
        self._next = 0  # the next seq to hand out; 0: not started
        self._gap_since = 0.0
        self._space = gevent.event.Event()
        self._space.set()
        self._written = gevent.event.Event()  # set whenever acknowledgements reached Redis
        self._intake = scripts.load("intake")
        self._seq_floor = scripts.load("seq_floor")
        self._raise_seq = self._seq_floor.register(client)
        self._requeue = scripts.load("requeue_ledger").register(client)
        self._requeue_entry = scripts.load("requeue_entry").register(client)
        self._suspects: set[int] = set()
        #: commands moved back to ``control`` (ledgers of frontends without a lease)
        self.requeued = 0

    # ------------------------------------------------------------------------------- the window
    def __len__(self) -> int:
        return len(self._held)

    @property
    def bytes(self) -> int:
        return self._bytes

    def room(self) -> tuple[int, int]:
        """How many more items and bytes the ledger may take now."""
        return self.max_items - len(self._held), self.max_bytes - self._bytes

    def wait_for_room(self, stopping: gevent.event.Event) -> bool:
        """Block until there is room for at least one more item (or ``stopping``); True when there is."""
        while len(self._held) >= self.max_items or (self._bytes >= self.max_bytes and self._held):
            self._space.clear()
            if self._acks:
                self._due()  # what frees room must not wait for its delay
            gevent.wait([self._space, stopping], count=1)
            if stopping.is_set():
                return False
        return True

    def wait_for_ack(self, stopping: gevent.event.Event) -> None:
        """The intake script said the ledger is full (the router filled it meanwhile): wait until an
        acknowledgement reached Redis, or ``stopping``."""
        self._written.clear()
        if self._acks:
            self._due()  # what frees room must not wait for its delay
        gevent.wait([self._written, stopping], count=1)

    @staticmethod
    def is_full(reply: list[Any]) -> bool:
        return len(reply) == 1 and int(reply[0]) == -1

    def oldest_age(self) -> float:
        """Seconds the oldest held command has been held (0 when none)."""
        if not self._held:
            return 0.0
        return time.monotonic() - min(taken for _, taken in self._held.values())

    # ------------------------------------------------------------------------------ sequencing
    def start(self) -> None:
        """Before any loop takes: hand out from the seq after the counter's current value."""
        self._next = int(self._client.get(self.seq_key) or 0) + 1
        self._pending.clear()

    def accept(self, reply: list[Any]) -> list[tuple[int, bytes]]:
        """A script's reply ``[seq, stored, ...]``: held from now, and what may be handed out now,
        in sequence order (possibly items of an earlier reply that waited for these)."""
        now = time.monotonic()
        held, pending, nxt = self._held, self._pending, self._next
        if not pending:  # the commonest reply: the next seqs in order, none seen before
            out = []
            size = 0
            for i in range(0, len(reply), 2):
                seq, stored = int(reply[i]), reply[i + 1]
                if seq != nxt or seq in held:
                    break
                held[seq] = (len(stored), now)
                size += len(stored)
                out.append((seq, stored))
                nxt += 1
            else:
                self._bytes += size
                self._next = nxt
                return out
            for seq, stored in out:  # not so after all: held again below, handed out in order
                del held[seq]
        for i in range(0, len(reply), 2):
            seq, stored = int(reply[i]), reply[i + 1]
            if seq < self._next:
                continue  # handed out already, or forgotten (``forget_all``)
            if seq not in held:
                held[seq] = (len(stored), now)
                self._bytes += len(stored)
            pending[seq] = stored
        return self._ready()

    def _ready(self) -> list[tuple[int, bytes]]:
        out = []
        pending = self._pending
        while self._next in pending:
            out.append((self._next, pending.pop(self._next)))
            self._next += 1
        self._gap_since = time.monotonic() if pending else 0.0
        return out

    def gap_age(self) -> float:
        """How long items have waited for an earlier seq (0 when nothing waits)."""
        return time.monotonic() - self._gap_since if self._pending and self._gap_since else 0.0

    def fill_gaps(self) -> list[tuple[int, bytes]]:
        """Items wait for seqs that no reply brought (a reply lost on the way back): read them from
        our Redis ledger; a seq that is not there any more (its item moved on) is skipped."""
        if not self._pending:
            return []
        missing = [seq for seq in range(self._next, min(self._pending)) if seq not in self._pending]
        values = self._client.hmget(self.key, missing) if missing else []
        found = [(seq, v) for seq, v in zip(missing, values) if v is not None]
        if missing:
            log.warning("%d commands of our ledger came without their reply (%d found in Redis)",
                        len(missing), len(found))
        ready = self.accept([x for pair in found for x in pair])
        while self._pending and self._next not in self._pending:
            self._next = min(self._pending)  # the rest of the gap is gone: skip it
            ready += self._ready()
        return ready

    def adopt_unknown(self) -> list[tuple[int, bytes]]:
        """After a Redis error: the landing list's leftovers go into the ledger, and every entry of
        our Redis ledger this process has not seen (a reply lost after the script ran) is taken. The
        counter first goes up to what we have seen (the error may have been a fail-over to a replica
        that lags behind: ``seq_floor``)."""
        self._raise_seq(keys=[self.seq_key], args=[self._highest_seen()])
        landed = self._intake.register(self._client)(keys=[self.inbox, self.landing, self.key, self.seq_key],
                                                     args=[self.keys.prefix, 0, 0, self.max_items])
        ready = self.accept([] if not landed or self.is_full(landed) else landed)
        known = self._held
        found = [(int(s), None) for s in self._client.hkeys(self.key) if s.isdigit() and int(s) not in known]
        if found:
            values = self._client.hmget(self.key, [seq for seq, _ in found])
            ready += self.accept([x for (seq, _), v in zip(found, values) if v is not None for x in (seq, v)])
            log.warning("adopting %d commands of our ledger whose reply was lost", len(found))
        return ready + (self.fill_gaps() if self._pending else [])

    # ---------------------------------------------------------------------------------- intake
    def intake_commands(self, block: float, most: int, budget: int) -> list[tuple[Any, ...]]:
        """One intake round trip: a blocking BLMOVE of our inbox's head into the landing list, then the
        script that moves it, and what else waits in the inbox, into the ledger (one write: Redis runs
        a blocked client's next command only after the blocking one returned)."""
        return [
            ("BLMOVE", self.inbox, self.landing, "LEFT", "RIGHT", block),
            self._intake.command([self.inbox, self.landing, self.key, self.seq_key],
                                 [self.keys.prefix, max(0, most - 1), budget, self.max_items]),
        ]

    # ----------------------------------------------------------------------------------- acks
    def ack(self, seq: int) -> None:
        """The command ``seq`` was written (or rejected): its HDEL goes with the next outgoing batch."""
        if seq in self._held:
            acks = self._acks
            acks.append(seq)
            if len(acks) == 1:  # the writer was told when the first of them came
                self._first_ack()

    def _first_ack(self) -> None:
        """The first acknowledgement since the last write: due at once, or after ``ack_delay`` (one
        hub timer, no greenlet), so that the acknowledgements of that time go in one HDEL. At a paced
        load every line is confirmed on its own (its own PONG), and a round trip of its own would cost
        more CPU than the rest of the line (BENCHMARKS.md "Hot path, session 7")."""
        delay = self.ack_delay
        if delay <= 0.0 or not self._space.is_set():  # the intake waits for these: now
            self._due()
            return
        # (no timer is armed here: the first acknowledgement comes after ``take_acks`` closed it)
        # a new timer each time: a libev timer started again after it fired fires at once
        # (measured: 0.05 ms after the start, not 5; the IRC session's timers are made anew too)
        timer = self._ack_timer = gevent.get_hub().loop.timer(delay)
        timer.start(self._due)

    def _due(self) -> None:
        self._acks_due = True
        self._wake_writer()

    @property
    def acks_due(self) -> bool:
        """Acknowledgements wait and their delay is over (the writer's loop goes on while this is
        true: acknowledgements that came during its last round trip wait for their own delay)."""
        return self._acks_due and bool(self._acks)

    def take_acks(self) -> list[int]:
        """The acknowledgements to write now (for the outgoing dispatcher's batch: due or not, they
        ride along with whatever it writes)."""
        acks, self._acks = self._acks, []
        self._acks_due = False
        timer = self._ack_timer
        if timer is not None:
            timer.close()  # they go now: no wake-up for them later
            self._ack_timer = None
        return acks

    def apply_settings(self, new: Settings) -> None:
        if new.ack_batch_delay != self.ack_delay:
            self.ack_delay = new.ack_batch_delay
            if self._ack_timer is not None:
                self._ack_timer.close()
                self._ack_timer = None
            if self._acks:
                self._due()

    def give_back_acks(self, seqs: list[int]) -> None:
        """The batch carrying these acknowledgements failed: they go with the next one."""
        self._acks[:0] = seqs
        if seqs:
            self._acks_due = True

    def written(self, seqs: list[int]) -> None:
        """Their HDEL reached Redis: no longer held."""
        held = self._held
        for seq in seqs:
            entry = held.pop(seq, None)
            if entry is not None:
                self._bytes -= entry[0]
        self._written.set()
        if len(held) < self.max_items and (self._bytes < self.max_bytes or not held):
            self._space.set()

    def seq_floor(self) -> list[tuple[Any, ...]]:
        """Sent ahead of the first batch of every new connection of the router and the intake loop
        (``DirectLink(on_connect=...)``): the counter is raised to the highest seq this process has
        seen, so a promoted replica that lacks the last increments never hands a number out twice."""
        return [self._seq_floor.eval_command([self.seq_key], [self._highest_seen()])]

    def _highest_seen(self) -> int:
        return max(self._next - 1, max(self._held, default=0), max(self._pending, default=0))

    def hdel_command(self, seqs: list[int]) -> tuple[Any, ...]:
        return ("HDEL", self.key, *seqs)

    @property
    def pending_acks(self) -> int:
        return len(self._acks)

    def forget_all(self) -> None:
        """Another frontend took our rooms and our ledger over (our lease had expired): what we held
        is theirs now. Start over from the counter."""
        self._held.clear()
        self._bytes = 0
        self._acks.clear()
        self._pending.clear()
        self._suspects.clear()
        self.start()
        self._space.set()

    # ------------------------------------------------------------------------- the safety net
    def requeue_stranded(self, control: str) -> int:
        """Run periodically: an entry of our Redis ledger that this process does not hold, on two scans
        in a row (so not one whose reply is on its way: that takes milliseconds), goes back to the
        head of ``control`` (a gap it leaves in the sequence is skipped by ``fill_gaps``)."""
        unknown = {int(s) for s in self._client.hkeys(self.key)
                   if s.isdigit() and int(s) not in self._held and int(s) not in self._pending}
        stranded, self._suspects = unknown & self._suspects, unknown - self._suspects
        moved = sum(int(self._requeue_entry(keys=[self.key, control], args=[self.keys.prefix, seq]))
                    for seq in sorted(stranded, reverse=True))
        if moved:
            log.warning("re-queued %d commands stranded in our ledger", moved)
            self.requeued += moved
        return moved

    def take_over(self, owner: str, control: str) -> int:
        """Move the ledger (or legacy list) of ``owner``, dead and without a lease (a version before
        several frontends), back to ``control``, under a ``SET NX PX`` lock so only one live frontend
        does it. Returns how many items moved."""
        client = self._client
        lock = self.keys.takeover_lock(owner)
        if not client.set(lock, self.frontend_id, nx=True, px=TAKEOVER_LOCK_MS):
            return 0  # another frontend is taking it over
        try:
            moved = int(self._requeue(
                keys=[self.keys.ledger(owner), self.keys.landing(owner), control,
                      self.keys.ledger_seq(owner), self.keys.inflight(owner)],
                args=[self.keys.prefix, owner]))
        finally:
            client.delete(lock)
        if moved:
            log.warning("took over %d in-flight commands of dead frontend %s", moved, owner)
        self.requeued += moved
        return moved
