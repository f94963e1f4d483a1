"""``Backend``: the gevent-or-threads shell around ``backend_sdk.core``.

This file does I/O and concurrency only: the Redis clients (a shared pool for short commands, one
connection of its own for the blocking pop), the handler pool (``pool.KeyedPool``: a room's events
one at a time and in order, ``concurrency`` at once), the heartbeat and the recovery loop (each in its
own greenlet or thread, on its own timer: a consumer whose workers are all busy still beats), and the
signals. Every decision (what an item is, which handlers, attempts, dead letters, acks, give-backs,
what to recover) is the core's: this file performs its steps (``steps.drive``).
"""

from __future__ import annotations

import inspect
import logging
import signal
import threading
from typing import Any, Callable, Iterator, TypeVar

import redis

from frontend import scripts
from frontend.redis_conn import endpoint, retry_policy

from .core import SCRIPTS, BaseBackend, Delivery
from .errors import BackendError
from .events import Event
from .pool import Capacity, KeyedPool, Runtime, gevent_patched
from .steps import Run, Sleep, Step, Steps, drive, execute, run_handler

log = logging.getLogger(__name__)

T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _refuse_coroutines(func: Callable[..., Any]) -> None:
    if inspect.iscoroutinefunction(func):
        raise TypeError(f"{getattr(func, '__qualname__', func)!s} is 'async def': register it on "
                        "backend_sdk.aio.AsyncBackend, Backend runs plain functions")


class Backend(BaseBackend):
    """A synchronous backend: handlers are plain functions taking one event.

    ``runtime`` is ``"gevent"``, ``"threads"`` or ``None`` (gevent when the process is gevent-patched).
    See ``BaseBackend`` (``backend_sdk.core``) for the other options.
    """

    def __init__(self, redis_url: str, *, runtime: str | None = None, **options: Any) -> None:
        super().__init__(redis_url, **options)
        if runtime not in (None, "gevent", "threads"):
            raise ValueError(f"runtime must be 'gevent', 'threads' or None, not {runtime!r}")
        if runtime == "gevent" and not gevent_patched():
            raise BackendError("runtime='gevent' needs a gevent-patched process (gevent.monkey.patch_all())")
        self.runtime = Runtime(None if runtime is None else runtime == "gevent")
        self._stop = self.runtime.Event()  # no more pops
        self._quit = self.runtime.Event()  # the heartbeat and recovery loops end (after the last ack)
        #: any redis_url form (one server, Sentinel, Cluster: frontend/redis_url.py)
        self._endpoint = endpoint(redis_url, options.get("key_prefix", ""))
        pool = self._endpoint.pool(
            max_connections=self.concurrency + 4, timeout=30, socket_timeout=5.0,
            socket_connect_timeout=5.0, socket_keepalive=True, health_check_interval=30,
            retry=retry_policy(),
        )
        #: the shared client for short commands (pushes, acks, ``rooms()``...)
        self.redis = redis.Redis(connection_pool=pool)
        self._blocking: redis.Redis | None = None
        self._loops: list[Any] = []
        self._scripts = {name: scripts.load(name).register(self.redis) for name in SCRIPTS}
        self._run_steps = self._drive
        self._check_handler = _refuse_coroutines

    # ----------------------------------------------------------------------------------------- I/O
    def _drive(self, steps: Steps[T]) -> T:
        return drive(steps, self._perform)

    def _perform(self, step: Step) -> Any:
        if isinstance(step, Run):
            return run_handler(step)
        if isinstance(step, Sleep):
            return self._stop.wait(step.seconds)
        return execute(step.op, self.redis, self._blocking, self._scripts)

    # ------------------------------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        """Stop popping; ``run()`` then finishes the running handlers, acks them and returns.

        Safe from any thread, greenlet, signal handler or handler.
        """
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def recover(self, consumer: str | None = None) -> int:
        """Re-queue a dead consumer's un-acked events (to the head of the events list, in order).

        Without a name: every consumer of this list whose heartbeat expired. Returns how many moved.
        (A running consumer does this by itself every ``recovery_interval``.)
        """
        return self._drive(self.requeue(consumer))

    def run(self) -> None:
        """Consume until ``stop()`` (or SIGTERM/SIGINT when called on the main thread).

        Then: no more pops; events not yet started go back to the head of the list; running handlers
        finish and are acked. A second signal exits the process at once (un-acked events stay in the
        processing list, for the next start or another consumer's recovery).
        """
        self._start()
        restore = self._install_signals()
        pool = KeyedPool(self.concurrency, self.runtime, name=f"backend-{self.consumer}")
        capacity = Capacity(self.prefetch, self.runtime)
        log.info("consuming %s as %s (%d handlers, %s, concurrency %d)", self.keys.events,
                 self.consumer, len(self.handlers), self.runtime.name, self.concurrency)
        try:
            while not self._stop.is_set():
                try:
                    free = capacity.acquire(self.prefetch, self.block_timeout)
                    if not free:
                        continue
                    raws = self._drive(self.pop(free))
                    capacity.release(free - len(raws))
                    for raw in raws:
                        delivery = self.receive(raw)
                        pool.submit(delivery.key, self._task(delivery, capacity.release))
                except Exception:  # the loop's one broad catch: log, pause, go on
                    log.exception("consumer %s: unexpected error in the pop loop", self.consumer)
                    self._stop.wait(1.0)
        finally:
            pool.cancel_pending()
            pool.join()
            self._finish()
            restore()

    def events(self) -> Iterator[Event]:
        """Iterate over events, one at a time: each is acked when the loop asks for the next one.

        Leaving the loop (``break``, an exception) puts the current event back at the head of the
        list; ``bot.stop()`` ends the iteration after the current event. No handlers, no retries.
        """
        self._start()
        current: bytes | None = None
        try:
            while not self._stop.is_set():
                for raw in self._drive(self.pop(1)):
                    delivery = self.receive(raw)
                    if delivery.event is None:
                        self._drive(self.refuse(delivery))
                        continue
                    self._observe(delivery.event)
                    current = raw
                    yield delivery.event
                    current = None
                    self._drive(self.ack(raw))
        finally:
            if current is not None:
                self._drive(self.give_back(current))
            self._finish()

    def _task(self, delivery: Delivery, release: Callable[[], None]) -> Callable[[], None]:
        def task() -> None:
            try:
                self._drive(self.handle(delivery))
            finally:
                release()

        return task

    def _start(self) -> None:
        self._drive(self.begin())
        self._blocking = self._endpoint.client(
            blocking=False, socket_timeout=self.block_timeout + 5.0, socket_connect_timeout=5.0,
            socket_keepalive=True, health_check_interval=0, retry=retry_policy(0),
            single_connection_client=True,
        )
        self._quit.clear()
        self._loops = [self._every(self.heartbeat_interval, self.beat, "heartbeat")]
        if self.recovery_interval is not None:
            self._loops.append(self._every(self.recovery_interval, self.recovery_pass, "recovery"))

    def _finish(self) -> None:
        """After the last ack: stop the heartbeat, give back whatever is left, close."""
        self._quit.set()
        for loop in self._loops:
            loop.join(6.0)
        self._loops = []
        try:
            self._drive(self.finish())
        finally:
            if self._blocking is not None:
                self._blocking.close()
                self._blocking = None
            self._stop.clear()  # ready to run again

    def _every(self, seconds: float, steps: Callable[[], Steps[Any]], name: str) -> Any:
        """A loop of its own that runs ``steps()`` every ``seconds`` until ``_finish``."""
        def loop() -> None:
            while not self._quit.wait(seconds):
                try:
                    self._drive(steps())
                except Exception:  # the loop's one broad catch: it must outlive any failure
                    log.exception("consumer %s: the %s loop failed; again in %.1fs", self.consumer,
                                  name, seconds)

        return self.runtime.spawn(loop, f"{name}-{self.consumer}")

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.signal(sig, lambda signum, frame: self.on_signal(signum))
                    for sig in SIGNALS}

        def restore() -> None:
            for sig, prev in previous.items():
                signal.signal(sig, prev)

        return restore
