"""The in-flight ledger: every command this frontend took from ``control`` and has not yet written.

One class owns it (python-rq's ``IntermediateQueue`` is the model): the Redis hash
``control:ledger:<frontend id>`` (seq -> item) and its mirror here (seq -> size, when taken). A command
enters it atomically with its pop (``intake.lua``, after the BLMOVE into ``control:landing:<id>``) and
leaves it when its room wrote it to the chat server or rejected it: ``ack(seq)`` queues an HDEL, the
outgoing dispatcher writes it with its next batch and calls ``written(seqs)``. One HDEL per command,
whatever the ledger holds (the list and LREM of earlier versions scanned it from the head).

The ledger is bounded (``inflight_max`` items, ``inflight_max_bytes`` bytes): the incoming dispatcher
takes no more than there is room for, so a backlog waits in Redis, not in this process.

Crashes lose nothing: at start our own ledger (an earlier run's leftovers) goes back to the head of
``control`` in the order it was taken (``requeue_ledger.lua``); a reply lost on the way back from the
intake leaves entries in Redis that this process does not know, which ``adopt_unknown`` finds at once;
and a dead frontend's ledger is taken over by a live one (``take_over``, under a lock).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import gevent.event
import redis

from . import scripts
from .keys import Keys

log = logging.getLogger(__name__)

TAKEOVER_LOCK_MS = 30_000


class InflightLedger:
    """The commands this frontend holds, in Redis and here."""

    def __init__(self, client: redis.Redis, keys: Keys, frontend_id: str, *, max_items: int,
                 max_bytes: int, wake_writer: Callable[[], None] = lambda: None) -> None:
        self._client = client
        self.keys = keys
        self.frontend_id = frontend_id
        self.key = keys.ledger(frontend_id)
        self.landing = keys.landing(frontend_id)
        self.seq_key = keys.ledger_seq(frontend_id)
        self.max_items, self.max_bytes = max_items, max_bytes
        self._wake_writer = wake_writer
        self._held: dict[int, tuple[int, float]] = {}  # seq -> (bytes, monotonic time taken)
        self._bytes = 0
        self._acks: list[int] = []  # acknowledged, HDEL not written yet (still held)
        self._space = gevent.event.Event()
        self._space.set()
        self._intake = scripts.load("intake")
        self._intake_call = self._intake.register(client)
        self._requeue = scripts.load("requeue_ledger").register(client)
        self._requeue_entry = scripts.load("requeue_entry").register(client)
        self._suspects: set[int] = set()
        #: commands moved back to ``control`` (our leftovers at start, dead frontends' ledgers)
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
            gevent.wait([self._space, stopping], count=1)
            if stopping.is_set():
                return False
        return True

    def oldest_age(self) -> float:
        """Seconds the oldest held command has been held (0 when none)."""
        if not self._held:
            return 0.0
        return time.monotonic() - min(taken for _, taken in self._held.values())

    # ---------------------------------------------------------------------------------- intake
    def intake_commands(self, source: str, block: float, most: int, budget: int) -> list[tuple[Any, ...]]:
        """The round trip of one intake: a blocking BLMOVE into the landing list, then the script that
        moves the landing list and what else is waiting into the ledger (both in one write: Redis runs
        a blocked client's next command only after the blocking one returned)."""
        return [
            ("BLMOVE", source, self.landing, "LEFT", "RIGHT", block),
            self._intake.command([source, self.landing, self.key, self.seq_key], [max(0, most - 1), budget]),
        ]

    def track(self, reply: list[Any]) -> list[tuple[int, bytes]]:
        """The intake script's reply ``[seq, item, ...]`` as ``(seq, item)`` pairs, now held here."""
        now = time.monotonic()
        out = []
        for i in range(0, len(reply), 2):
            seq, item = int(reply[i]), reply[i + 1]
            if seq not in self._held:
                self._held[seq] = (len(item), now)
                self._bytes += len(item)
            out.append((seq, item))
        return out

    def adopt_unknown(self, source: str) -> list[tuple[int, bytes]]:
        """Entries in our Redis ledger that this process does not hold (a reply lost after the
        intake script ran), and the landing list's leftovers: now held, to be handled."""
        client = self._client
        landed = self._intake_call(keys=[source, self.landing, self.key, self.seq_key], args=[0, 0])
        moved = self.track(landed or [])
        seqs = [int(s) for s in client.hkeys(self.key) if s.isdigit() and int(s) not in self._held]
        if not seqs:
            return moved
        values = client.hmget(self.key, seqs)
        found = [(seq, item) for seq, item in zip(seqs, values) if item is not None]
        if found:
            log.warning("adopting %d commands of our ledger whose pop reply was lost", len(found))
        now = time.monotonic()
        for seq, item in found:
            self._held[seq] = (len(item), now)
            self._bytes += len(item)
        return moved + found

    def requeue_stranded(self, control: str) -> int:
        """The safety net behind ``adopt_unknown``, run periodically: an entry of our Redis ledger
        that this process does not hold on two scans in a row (so not an intake whose reply is on its
        way) goes back to the head of ``control``."""
        unknown = {int(s) for s in self._client.hkeys(self.key) if s.isdigit() and int(s) not in self._held}
        stranded, self._suspects = unknown & self._suspects, unknown - self._suspects
        moved = sum(int(self._requeue_entry(keys=[self.key, control], args=[seq]))
                    for seq in sorted(stranded, reverse=True))
        if moved:
            log.warning("re-queued %d commands stranded in our ledger", moved)
            self.requeued += moved
        return moved

    # ----------------------------------------------------------------------------------- acks
    def ack(self, seq: int) -> None:
        """The command ``seq`` was written (or rejected): its HDEL goes with the next outgoing batch."""
        if seq in self._held:
            self._acks.append(seq)
            self._wake_writer()

    def take_acks(self) -> list[int]:
        """The acknowledgements to write now (for the outgoing dispatcher's batch)."""
        acks, self._acks = self._acks, []
        return acks

    def give_back_acks(self, seqs: list[int]) -> None:
        """The batch carrying these acknowledgements failed: they go with the next one."""
        self._acks[:0] = seqs

    def written(self, seqs: list[int]) -> None:
        """Their HDEL reached Redis: no longer held."""
        held = self._held
        for seq in seqs:
            entry = held.pop(seq, None)
            if entry is not None:
                self._bytes -= entry[0]
        if len(held) < self.max_items and (self._bytes < self.max_bytes or not held):
            self._space.set()

    def hdel_command(self, seqs: list[int]) -> tuple[Any, ...]:
        return ("HDEL", self.key, *seqs)

    @property
    def pending_acks(self) -> int:
        return len(self._acks)

    # ----------------------------------------------------------------------- start and take-over
    def requeue_own(self, control: str) -> int:
        """At start, before anything is taken: our ledger (and a legacy in-flight list) back to the
        head of ``control``, in the order they were taken."""
        moved = int(self._requeue(
            keys=[self.key, self.landing, control, self.seq_key, self.keys.inflight(self.frontend_id)],
            args=["0"]))
        if moved:
            log.warning("re-queued %d in-flight commands left by an earlier run", moved)
        self.requeued += moved
        return moved

    def take_over(self, owner: str, control: str) -> int:
        """Move the ledger (or legacy list) of the dead frontend ``owner`` back to ``control``, under a
        ``SET NX PX`` lock so only one live frontend does it. Returns how many items moved."""
        client = self._client
        lock = self.keys.takeover_lock(owner)
        if not client.set(lock, self.frontend_id, nx=True, px=TAKEOVER_LOCK_MS):
            return 0  # another frontend is taking it over
        try:
            moved = int(self._requeue(
                keys=[self.keys.ledger(owner), self.keys.landing(owner), control,
                      self.keys.ledger_seq(owner), self.keys.inflight(owner)],
                args=["1"]))
        finally:
            client.delete(lock)
        if moved:
            log.warning("took over %d in-flight commands of dead frontend %s", moved, owner)
        self.requeued += moved
        return moved
