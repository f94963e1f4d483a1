"""``AsyncBackend``: the same API as ``Backend`` for asyncio programs, on ``redis.asyncio``.

Handlers are ``async def`` (a plain function returning an awaitable works too) and every method that
talks to Redis is awaited: ``await event.reply(text)``, ``await bot.say(room, text)``,
``await bot.rooms()``, ``await bot.once(event)``. Run it with ``asyncio.run(bot.run())`` or iterate
with ``async for event in bot.events()``. ``stop()`` must be called from the loop's thread.

Like ``backend.py`` this is only a shell: it performs the steps of ``backend_sdk.core`` (awaiting
them), runs the handlers as tasks (a room's events one at a time, ``concurrency`` at once), and keeps
the heartbeat and the recovery pass each in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any, AsyncIterator, Callable, TypeVar

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from frontend import scripts
from frontend.redis_conn import REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP, REDIS_ERRORS, endpoint

from .core import SCRIPTS, BaseBackend, Delivery
from .events import Event
from .steps import Run, Sleep, Step, Steps, adrive, arun_handler, execute, wait_event

log = logging.getLogger(__name__)

T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _retry(retries: int) -> Retry:
    """``frontend.redis_conn.retry_policy`` for redis.asyncio (which needs its own ``Retry`` class)."""
    return Retry(ExponentialWithJitterBackoff(cap=REDIS_BACKOFF_CAP, base=REDIS_BACKOFF_BASE), retries,
                 supported_errors=REDIS_ERRORS)


class AsyncBackend(BaseBackend):
    """An asyncio backend: ``async def`` handlers taking one event. Options as ``Backend``."""

    asynchronous = True

    def __init__(self, redis_url: str, **options: Any) -> None:
        super().__init__(redis_url, **options)
        #: any redis_url form (one server, Sentinel, Cluster: frontend/redis_url.py)
        self._endpoint = endpoint(redis_url, options.get("key_prefix", ""))
        pool = self._endpoint.async_pool(
            max_connections=self.concurrency + 4, timeout=30, socket_timeout=5.0,
            socket_connect_timeout=5.0, socket_keepalive=True, health_check_interval=30, retry=_retry(3))
        #: the shared client for short commands
        self.redis = aredis.Redis(connection_pool=pool)
        self._blocking: aredis.Redis | None = None
        self._stop = asyncio.Event()  # no more pops
        self._quit = asyncio.Event()  # the heartbeat and recovery tasks end (after the last ack)
        self._loops: list[asyncio.Task[None]] = []
        self._scripts = {name: scripts.load(name).register(self.redis) for name in SCRIPTS}
        self._run_steps = self._drive

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self.redis.aclose()

    # ----------------------------------------------------------------------------------------- I/O
    async def _drive(self, steps: Steps[T]) -> T:
        return await adrive(steps, self._perform)

    def _perform(self, step: Step) -> Any:
        """An awaitable for each step."""
        if isinstance(step, Run):
            return arun_handler(step)
        if isinstance(step, Sleep):
            return wait_event(self._stop, step.seconds)
        return execute(step.op, self.redis, self._blocking, self._scripts)

    # ------------------------------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        """Stop popping; ``run()`` finishes the running handlers, acks them and returns."""
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    async def recover(self, consumer: str | None = None) -> int:
        """Re-queue a dead consumer's un-acked events (all expired consumers without a name)."""
        return await self._drive(self.requeue(consumer))

    async def run(self) -> None:
        """Consume until ``stop()`` (or SIGTERM/SIGINT on the main thread); then finish and ack."""
        await self._start()
        restore = self._install_signals()
        limit = asyncio.Semaphore(self.concurrency)
        capacity = asyncio.Semaphore(self.prefetch)
        tails: dict[str, asyncio.Task[None]] = {}
        log.info("consuming %s as %s (asyncio, concurrency %d)", self.keys.events, self.consumer,
                 self.concurrency)
        try:
            while not self._stop.is_set():
                try:
                    if not await _acquire(capacity, self.block_timeout):
                        continue
                    free = 1
                    while free < self.prefetch and not capacity.locked():
                        await capacity.acquire()
                        free += 1
                    raws = await self._drive(self.pop(free))
                    for _ in range(free - len(raws)):
                        capacity.release()
                    for n, raw in enumerate(raws):
                        delivery = self.receive(raw)
                        # adopted events beyond what was asked for hold no slot of the capacity
                        task = asyncio.create_task(self._run_after(tails.get(delivery.key), delivery,
                                                                   limit, capacity if n < free else None))
                        tails[delivery.key] = task
                        task.add_done_callback(lambda done, key=delivery.key:
                                               tails.pop(key) if tails.get(key) is done else None)
                except Exception:  # the loop's one broad catch: log, pause, go on
                    log.exception("consumer %s: unexpected error in the pop loop", self.consumer)
                    await wait_event(self._stop, 1.0)
        finally:
            if tails:
                await asyncio.wait(list(tails.values()))
            await self._finish()
            restore()

    async def events(self) -> AsyncIterator[Event]:
        """``async for event in bot.events()``: each event is acked when the next one is asked for."""
        await self._start()
        current: bytes | None = None
        try:
            while not self._stop.is_set():
                for raw in await self._drive(self.pop(1)):
                    delivery = self.receive(raw)
                    if delivery.event is None:
                        await self._drive(self.refuse(delivery))
                        continue
                    self._observe(delivery.event)
                    current = raw
                    yield delivery.event
                    current = None
                    await self._drive(self.ack(raw))
        finally:
            if current is not None:
                await self._drive(self.give_back(current))
            await self._finish()

    async def _run_after(self, previous: asyncio.Task[None] | None, delivery: Delivery,
                         limit: asyncio.Semaphore, capacity: asyncio.Semaphore | None) -> None:
        """Handle ``delivery`` after the room's previous event, within the concurrency limit."""
        try:
            if previous is not None:
                await asyncio.wait([previous])
            async with limit:
                if self._stop.is_set():
                    return  # not started: stays un-acked, given back by _finish()
                await self._drive(self.handle(delivery))
        except Exception:
            log.exception("handling an event failed")
        finally:
            if capacity is not None:
                capacity.release()

    async def _start(self) -> None:
        await self._drive(self.begin())
        self._blocking = self._endpoint.async_client(
            blocking=False, socket_timeout=self.block_timeout + 5.0, socket_connect_timeout=5.0,
            socket_keepalive=True, retry=_retry(0), single_connection_client=True)
        self._quit.clear()
        self._loops = [asyncio.create_task(self._every(self.heartbeat_interval, self.beat, "heartbeat"))]
        if self.recovery_interval is not None:
            self._loops.append(asyncio.create_task(
                self._every(self.recovery_interval, self.recovery_pass, "recovery")))

    async def _finish(self) -> None:
        self._quit.set()
        if self._loops:
            await asyncio.wait(self._loops, timeout=6.0)
        self._loops = []
        try:
            await self._drive(self.finish())
        finally:
            if self._blocking is not None:
                await self._blocking.aclose()
                self._blocking = None
            self._stop.clear()  # ready to run again

    async def _every(self, seconds: float, steps: Callable[[], Steps[Any]], name: str) -> None:
        """Run ``steps()`` every ``seconds`` until ``_finish``."""
        while not await wait_event(self._quit, seconds):
            try:
                await self._drive(steps())
            except Exception:  # the loop's one broad catch: it must outlive any failure
                log.exception("consumer %s: the %s task failed; again in %.1fs", self.consumer, name,
                              seconds)

    def _install_signals(self) -> Callable[[], Any]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        try:
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self.on_signal, sig)
        except (NotImplementedError, RuntimeError):  # not supported by this loop
            return lambda: None
        return lambda: [loop.remove_signal_handler(sig) for sig in SIGNALS]


async def _acquire(semaphore: asyncio.Semaphore, timeout: float) -> bool:
    try:
        await asyncio.wait_for(semaphore.acquire(), timeout)
    except asyncio.TimeoutError:
        return False
    return True
