"""A room's command queue: FIFO, many producers, one consumer (the room's greenlet).

What ``gevent.queue.Queue`` does for a room, at a fraction of its size: a Queue holds three deques
(items, getters, putters) from the start, 2.7 KB per room, while most rooms are idle most of the
time. This one holds nothing while empty (56 bytes): the deque of items exists only while there are
items, and the waiter only while the room's greenlet waits. A ``put`` never blocks (unbounded, like
the room's Queue was); it wakes a waiting ``get`` through one hub callback, as the Queue does, so
commands put in one turn of the hub's loop are handled in one wake-up of the room.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

from gevent.hub import Waiter, get_hub
from gevent.queue import Empty

__all__ = ["CommandQueue", "Empty"]


class CommandQueue:
    """Unbounded FIFO for one consumer greenlet."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: Optional[deque[Any]] = None
        self._waiter: Optional[Waiter] = None

    def qsize(self) -> int:
        items = self._items
        return len(items) if items else 0

    def put(self, item: Any) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        waiter = self._waiter
        if waiter is not None:  # the consumer waits: wake it from the hub (never from here)
            self._waiter = None
            get_hub().loop.run_callback(waiter.switch, None)

    def get(self) -> Any:
        """The oldest item; waits while there is none."""
        while not self._items:
            waiter = self._waiter = Waiter()
            try:
                waiter.get()
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._take()

    def get_nowait(self) -> Any:
        if not self._items:
            raise Empty
        return self._take()

    def _take(self) -> Any:
        items = self._items
        assert items
        item = items.popleft()
        if not items:
            self._items = None  # an empty deque is 0.8 KB: an idle room holds none
        return item
