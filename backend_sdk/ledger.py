"""Where a consumer keeps its events and what it holds: ``ConsumerKeys`` (every key it uses, named by
``frontend.keys``) and ``Ledger`` (the events it popped and has not yet acked or given back)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Iterable

from frontend.keys import Keys


def text_of(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value


class ConsumerKeys:
    """The keys one consumer uses, all named by ``frontend.keys`` (PROTOCOL.md)."""

    def __init__(self, prefix: str, events: str, control: str, consumer: str) -> None:
        base = Keys(prefix)
        self._base, self._events = base, base.events(events)
        self.consumer = consumer
        self.events = self._events.list
        self.control = base.key(control)
        self.dead = self._events.dead
        self.processing = self._events.processing(consumer)
        self.alive = self._events.alive(consumer)
        self.consumers = self._events.consumers
        self.recovery_lock = self._events.recovery_lock
        self.processing_pattern = self._events.processing_pattern
        self.rooms = base.rooms
        self.states = base.states

    def processing_of(self, consumer: str) -> str:
        """The list a consumer holds its un-acked events in."""
        return self._events.processing(consumer)

    def alive_of(self, consumer: str) -> str:
        """A consumer's heartbeat key (it expires when the consumer dies)."""
        return self._events.alive(consumer)

    def consumer_of(self, processing_key: bytes | str) -> str:
        """The consumer whose processing list this is."""
        return text_of(processing_key)[len(self.processing_of("")):]

    def once(self, event_id: str) -> str:
        return self._base.once(event_id)


class Ledger:
    """The events this consumer popped and has neither acked nor given back (a multiset: an item
    may repeat). Safe from several threads or greenlets."""

    def __init__(self) -> None:
        self._held: Counter[bytes] = Counter()
        self._lock = threading.Lock()

    def track(self, *raws: bytes) -> None:
        with self._lock:
            self._held.update(raws)

    def untrack(self, raw: bytes) -> None:
        with self._lock:
            self._held[raw] -= 1
            if self._held[raw] <= 0:
                del self._held[raw]

    def adopt(self, held: Iterable[bytes]) -> list[bytes]:
        """Of ``held`` (the processing list), what we do not know about; tracked from now on."""
        with self._lock:
            unknown = Counter(held) - self._held
            self._held.update(unknown)
        return list(unknown.elements())

    def clear(self) -> None:
        with self._lock:
            self._held.clear()

    def __len__(self) -> int:
        return sum(self._held.values())
