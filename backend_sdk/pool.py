"""A bounded handler pool that keeps each room's events in order.

``KeyedPool(size)`` runs at most ``size`` tasks at once; tasks submitted with the same key (the room)
run one at a time in submission order, tasks of different keys run in parallel. Workers are gevent
greenlets when the process is gevent-patched (``gevent.monkey.is_module_patched("socket")``), else
threads. ``Capacity`` bounds how many events a consumer holds (running or waiting) at any time.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)

_STOP = object()


class Runtime:
    """The concurrency primitives of one flavour: ``gevent`` greenlets or OS ``threads``."""

    def __init__(self, use_gevent: bool | None = None) -> None:
        if use_gevent is None:
            use_gevent = gevent_patched()
        self.gevent = use_gevent
        if use_gevent:
            import gevent
            import gevent.event
            import gevent.lock
            import gevent.queue

            self.Event: Callable[[], Any] = gevent.event.Event
            self.Lock: Callable[[], Any] = gevent.lock.RLock
            self.Queue: Callable[[], Any] = gevent.queue.Queue
            self._spawn = gevent.spawn
        else:
            self.Event, self.Lock, self.Queue = threading.Event, threading.RLock, queue.SimpleQueue

    @property
    def name(self) -> str:
        return "gevent" if self.gevent else "threads"

    def spawn(self, func: Callable[[], None], name: str) -> Any:
        """Start ``func``; the result has ``join(timeout)``."""
        if self.gevent:
            return self._spawn(func)
        thread = threading.Thread(target=func, name=name, daemon=True)
        thread.start()
        return thread


def gevent_patched() -> bool:
    """True when gevent has monkey-patched ``socket`` in this process."""
    try:
        import gevent.monkey
    except ImportError:
        return False
    return gevent.monkey.is_module_patched("socket")


class Capacity:
    """A counter of free slots that a consumer waits on before it pops more events."""

    def __init__(self, size: int, runtime: Runtime) -> None:
        self._free = size
        self._lock = runtime.Lock()
        self._space = runtime.Event()
        self._space.set()

    def acquire(self, most: int, timeout: float) -> int:
        """Take up to ``most`` free slots, waiting at most ``timeout`` for one; returns how many."""
        if not self._space.wait(timeout):
            return 0
        with self._lock:
            taken = max(0, min(most, self._free))
            self._free -= taken
            if self._free <= 0:
                self._space.clear()
            return taken

    def release(self, count: int = 1) -> None:
        """Give back ``count`` slots (negative: more events arrived than were asked for)."""
        with self._lock:
            self._free += count
            if self._free > 0:
                self._space.set()
            else:
                self._space.clear()


class KeyedPool:
    """``size`` workers; per-key FIFO; ``join()`` waits for everything submitted, then ends them."""

    def __init__(self, size: int, runtime: Runtime, name: str = "backend") -> None:
        if size < 1:
            raise ValueError("the pool needs at least one worker")
        self._runtime = runtime
        self._ready = runtime.Queue()  # keys whose head task may run now
        self._pending: dict[Hashable, deque[Callable[[], None]]] = {}
        self._running: set[Hashable] = set()
        self._lock = runtime.Lock()
        self._idle = runtime.Event()
        self._idle.set()
        self._workers = [runtime.spawn(self._work, f"{name}-worker-{i}") for i in range(size)]

    def submit(self, key: Hashable, task: Callable[[], None]) -> None:
        """Run ``task`` after every task submitted earlier with the same key."""
        with self._lock:
            self._idle.clear()
            tasks = self._pending.get(key)
            if tasks is None:
                self._pending[key] = deque([task])
                self._ready.put(key)
            else:
                tasks.append(task)

    def cancel_pending(self) -> int:
        """Forget the tasks that have not started (the running ones finish); returns how many."""
        with self._lock:
            dropped = 0
            for key in list(self._pending):
                tasks = self._pending[key]
                keep = 1 if key in self._running else 0
                while len(tasks) > keep:
                    tasks.pop()
                    dropped += 1
                if not tasks:
                    del self._pending[key]
            if not self._pending:
                self._idle.set()
            return dropped

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every submitted task ran, then stop the workers. False on timeout."""
        if not self._idle.wait(timeout):
            return False
        for _ in self._workers:
            self._ready.put(_STOP)
        for worker in self._workers:
            worker.join(timeout)
        return True

    def _work(self) -> None:
        while True:
            key = self._ready.get()
            if key is _STOP:
                return
            with self._lock:
                tasks = self._pending.get(key)
                if not tasks or key in self._running:  # cancelled, or a stale duplicate entry
                    continue
                task = tasks[0]
                self._running.add(key)
            try:
                task()
            except Exception:  # a task must not kill its worker
                log.exception("pool task failed")
            finally:
                self._done(key, tasks)

    def _done(self, key: Hashable, tasks: deque[Callable[[], None]]) -> None:
        with self._lock:
            self._running.discard(key)
            tasks.popleft()
            if tasks:
                self._ready.put(key)  # to the back of the line: rooms take turns
            else:
                del self._pending[key]
                if not self._pending:
                    self._idle.set()
