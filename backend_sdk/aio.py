"""``AsyncBackend``: the same API as ``Backend`` for asyncio programs, on ``redis.asyncio``.

Handlers are ``async def`` (a plain function returning an awaitable works too) and every method that
talks to Redis is awaited: ``await event.reply(text)``, ``await bot.say(room, text)``,
``await bot.rooms()``, ``await bot.once(event)``. Run it with ``asyncio.run(bot.run())`` or iterate
with ``async for event in bot.events()``. ``stop()`` must be called from the loop's thread.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import threading
import time
from collections import Counter
from typing import Any, AsyncIterator

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from .backend import _rooms
from .core import DRAIN_LUA, GIVE_BACK_LUA, REDIS_ERRORS, REQUEUE_LUA, BaseBackend
from .errors import BackendError, DecodeError
from .events import Event

log = logging.getLogger(__name__)


def _retry(retries: int) -> Retry:
    return Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries, supported_errors=REDIS_ERRORS)


class AsyncBackend(BaseBackend):
    """An asyncio backend: ``async def`` handlers taking one event. Options as ``Backend``."""

    def __init__(self, redis_url: str, **options: Any) -> None:
        super().__init__(redis_url, **options)
        pool = aredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=self.concurrency + 4, timeout=30, socket_timeout=5.0,
            socket_connect_timeout=5.0, socket_keepalive=True, health_check_interval=30, retry=_retry(3))
        #: the shared client for short commands
        self.redis = aredis.Redis(connection_pool=pool)
        self._blocking: aredis.Redis | None = None
        self._stop = asyncio.Event()
        self._running = False
        self._inflight: Counter[bytes] = Counter()
        self._next_heartbeat = 0.0
        self._requeue = self.redis.register_script(REQUEUE_LUA)
        self._give_back = self.redis.register_script(GIVE_BACK_LUA)
        self._drain = self.redis.register_script(DRAIN_LUA)

    # --------------------------------------------------------------------------------------- replies
    async def _push(self, item: bytes, result: Any) -> Any:  # type: ignore[override]
        await self.redis.rpush(self.keys.control, item)
        return result

    async def rooms(self) -> dict[str, dict[str, Any]]:
        """``{room: {"spec": {...}, "state": {...} or None}}`` from ``rooms`` and ``rooms:state``."""
        return _rooms(await self.redis.hgetall(self.keys.rooms), await self.redis.hgetall(self.keys.states))

    async def once(self, event: Event | str, ttl: int = 86400) -> bool:
        """True the first time for this event (id) within ``ttl`` seconds (Redis SET NX EX)."""
        event_id = event if isinstance(event, str) else event.event_id
        if not event_id:
            raise ValueError("the event has no event_id")
        return bool(await self.redis.set(self.keys.once(event_id), self.consumer, nx=True, ex=ttl))

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self.redis.aclose()

    # ------------------------------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        """Stop popping; ``run()`` finishes the running handlers, acks them and returns."""
        self._stop.set()

    async def recover(self, consumer: str | None = None) -> int:
        """Re-queue a dead consumer's un-acked events (all expired consumers without a name)."""
        if consumer is not None:
            if consumer == self.consumer and self._running:
                raise BackendError("recover() of this running consumer: it still owns that list")
            return await self._requeue_of(consumer)
        moved = 0
        async for key in self.redis.scan_iter(match=self.keys.processing_pattern(), count=500):
            name = key.decode().rsplit(":processing:", 1)[1]
            if name != self.consumer and not await self.redis.exists(self.keys.alive_of(name)):
                moved += await self._requeue_of(name)
        return moved

    async def _requeue_of(self, consumer: str) -> int:
        moved = int(await self._requeue(keys=[self.keys.processing_of(consumer), self.keys.events]))
        if moved:
            self.stats["requeued"] += moved
            log.warning("re-queued %d un-acked event(s) of consumer %s", moved, consumer)
        return moved

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
                    await asyncio.wait_for(capacity.acquire(), self.block_timeout)
                except asyncio.TimeoutError:
                    continue
                free = 1
                while free < self.prefetch and not capacity.locked():
                    await capacity.acquire()
                    free += 1
                raws = await self._pop(free)
                for _ in range(free - len(raws)):
                    capacity.release()
                for raw in raws:
                    room = _room_of(raw)
                    task = asyncio.create_task(self._run_after(tails.get(room), raw, limit, capacity))
                    tails[room] = task
                    task.add_done_callback(
                        lambda done, room=room: tails.pop(room) if tails.get(room) is done else None)
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
                for raw in await self._pop(1):
                    try:
                        event = self._decode(raw)
                    except DecodeError as exc:
                        await self._dead_letter(raw, "backend_sdk.decode", exc)
                        await self._ack(raw)
                        continue
                    self._observe(event)
                    current = raw
                    yield event
                    current = None
                    await self._ack(raw)
        finally:
            if current is not None:
                await self._give_back_one(current)
            await self._finish()

    # ---------------------------------------------------------------------------------- consuming
    async def _start(self) -> None:
        if self._running:
            raise BackendError(f"consumer {self.consumer} is already running")
        self._running = True
        self._blocking = aredis.Redis.from_url(
            self.redis_url, socket_timeout=self.block_timeout + 5.0, socket_connect_timeout=5.0,
            socket_keepalive=True, retry=_retry(0), single_connection_client=True)
        await self._requeue_of(self.consumer)
        await self._heartbeat()

    async def _finish(self) -> None:
        try:
            left = await self._requeue_of(self.consumer)
            await self.redis.delete(self.keys.alive)
            log.info("stopped %s: %d handled, %d dead-lettered, %d given back", self.consumer,
                     self.stats["handled"], self.stats["dead"], left)
        except REDIS_ERRORS as exc:
            log.error("could not give back un-acked events (%r): they wait in %s", exc,
                      self.keys.processing)
        finally:
            self._inflight.clear()
            if self._blocking is not None:
                await self._blocking.aclose()
            self._running = False
            self._stop.clear()  # ready to run again

    async def _pop(self, most: int) -> list[bytes]:
        await self._heartbeat()
        assert self._blocking is not None
        try:
            raw = await self._blocking.blmove(self.keys.events, self.keys.processing,
                                              self.block_timeout, "LEFT", "RIGHT")
            if raw is None:
                return []
            self._inflight[raw] += 1
            raws = [raw]
            if most > 1:
                more = await self._drain(keys=[self.keys.events, self.keys.processing],
                                         args=[most - 1], client=self._blocking)
                self._inflight.update(more)
                raws.extend(more)
            return raws
        except REDIS_ERRORS as exc:
            log.warning("redis error while popping %s: %r; retrying", self.keys.events, exc)
            try:
                await asyncio.wait_for(self._stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            try:  # a lost reply may have stranded events in our processing list: adopt them
                unknown = Counter(await self.redis.lrange(self.keys.processing, 0, -1)) - self._inflight
            except REDIS_ERRORS:
                return []
            self._inflight.update(unknown)
            return list(unknown.elements())

    async def _heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            try:
                await self.redis.set(self.keys.alive, str(os.getpid()), ex=max(1, int(self.heartbeat_ttl)))
                self._next_heartbeat = now + self.heartbeat_ttl / 3
            except REDIS_ERRORS as exc:
                log.warning("redis error: %r", exc)

    # ------------------------------------------------------------------------------------ handling
    async def _run_after(self, previous: asyncio.Task[None] | None, raw: bytes,
                         limit: asyncio.Semaphore, capacity: asyncio.Semaphore) -> None:
        """Handle ``raw`` after the room's previous event, within the concurrency limit."""
        try:
            if previous is not None:
                await asyncio.wait([previous])
            async with limit:
                if self._stop.is_set():
                    return  # not started: stays un-acked, given back by _finish()
                try:
                    event = self._decode(raw)
                except DecodeError as exc:
                    await self._dead_letter(raw, "backend_sdk.decode", exc)
                    await self._ack(raw)
                    return
                if await self._handle(raw, event):
                    await self._ack(raw)
        except Exception:
            log.exception("handling an event failed")
        finally:
            capacity.release()

    async def _handle(self, raw: bytes, event: Event) -> bool:
        self._observe(event)
        for handler, delivered in self.plan(event, self.nicks(event.room)):
            attempts = self._attempts(handler)
            for attempt in range(1, attempts + 1):
                try:
                    result = handler.func(delivered)
                    if inspect.isawaitable(result):
                        await result
                    break
                except Exception as exc:
                    self._log_failure(handler, event, attempt, attempts, exc)
                    if attempt == attempts:
                        await self._dead_letter(raw, handler.name, exc)
                        continue
                    try:
                        await asyncio.wait_for(self._stop.wait(), self._backoff(attempt))
                    except asyncio.TimeoutError:
                        continue
                    await self._give_back_one(raw)  # stopping: the next consumer retries it
                    return False
        self.stats["handled"] += 1
        return True

    async def _dead_letter(self, raw: bytes, handler: str, exc: BaseException) -> None:
        await self.redis.rpush(self.keys.dead, self._dead_entry(raw, handler, exc))

    async def _ack(self, raw: bytes) -> None:
        try:
            await self.redis.lrem(self.keys.processing, 1, raw)
        except REDIS_ERRORS as exc:
            log.error("could not ack an event (%r): it will be delivered again", exc)
        finally:
            self._untrack(raw)

    async def _give_back_one(self, raw: bytes) -> None:
        try:
            await self._give_back(keys=[self.keys.processing, self.keys.events], args=[raw])
            self.stats["requeued"] += 1
        except REDIS_ERRORS as exc:
            log.error("could not give an event back (%r): it waits in %s", exc, self.keys.processing)
        finally:
            self._untrack(raw)

    def _untrack(self, raw: bytes) -> None:
        self._inflight[raw] -= 1
        if self._inflight[raw] <= 0:
            del self._inflight[raw]

    def _install_signals(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()

        def handler(signum: int) -> None:
            if self._stop.is_set():
                log.warning("second signal %d: exiting now", signum)
                os._exit(128 + signum)
            log.info("signal %d: finishing running handlers (again to exit at once)", signum)
            self.stop()

        sigs = (signal.SIGTERM, signal.SIGINT)
        try:
            for sig in sigs:
                loop.add_signal_handler(sig, handler, sig)
        except (NotImplementedError, RuntimeError):  # not supported by this loop
            return lambda: None
        return lambda: [loop.remove_signal_handler(sig) for sig in sigs]


def _room_of(raw: bytes) -> str:
    """The room of a raw event (the per-room ordering key); "" when it cannot be decoded."""
    try:
        return Event.from_json(raw).room
    except DecodeError:
        return ""
