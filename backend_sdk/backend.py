"""``Backend``: consume events with at-least-once delivery, run handlers, retry, dead-letter, reply.

Flow of one event: BLMOVE ``<events>`` -> ``<events>:processing:<consumer>`` (a dedicated connection),
decode, hand to the pool under its room's key, run the matching handlers (each retried with
exponential backoff; after the last attempt a dead letter goes to ``<events>:dead``), then ack
(LREM from the processing list). Whatever a consumer held when it died stays in its processing list
until the next consumer with the same name starts, or someone calls ``recover()``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterator

import redis
import ujson

from .core import DRAIN_LUA, GIVE_BACK_LUA, REDIS_ERRORS, REQUEUE_LUA, BaseBackend, retry_policy
from .errors import BackendError, DecodeError
from .events import Event
from .pool import Capacity, KeyedPool, Runtime, gevent_patched

log = logging.getLogger(__name__)


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
        self._stop = self.runtime.Event()
        pool = redis.BlockingConnectionPool.from_url(
            redis_url, max_connections=self.concurrency + 4, timeout=30, socket_timeout=5.0,
            socket_connect_timeout=5.0, socket_keepalive=True, health_check_interval=30,
            retry=retry_policy(),
        )
        #: the shared client for short commands (pushes, acks, ``rooms()``...)
        self.redis = redis.Redis(connection_pool=pool)
        self._blocking: redis.Redis | None = None
        self._inflight: Counter[bytes] = Counter()  # popped and not yet acked or given back
        self._inflight_lock = threading.Lock()
        self._running = False
        self._next_heartbeat = 0.0
        self._requeue = self.redis.register_script(REQUEUE_LUA)
        self._give_back = self.redis.register_script(GIVE_BACK_LUA)
        self._drain = self.redis.register_script(DRAIN_LUA)

    # --------------------------------------------------------------------------------------- replies
    def _push(self, item: bytes, result: Any) -> Any:
        self.redis.rpush(self.keys.control, item)
        return result

    def rooms(self) -> dict[str, dict[str, Any]]:
        """The room registry and live state: ``{room: {"spec": {...}, "state": {...} or None}}``."""
        specs, states = self.redis.hgetall(self.keys.rooms), self.redis.hgetall(self.keys.states)
        return _rooms(specs, states)

    def once(self, event: Event | str, ttl: int = 86400) -> bool:
        """True the first time it is called for this event (id) within ``ttl`` seconds, else False.

        Guard side effects that must not repeat when an event is delivered again::

            if bot.once(event): charge(card)
        """
        event_id = event if isinstance(event, str) else event.event_id
        if not event_id:
            raise ValueError("the event has no event_id")
        return bool(self.redis.set(self.keys.once(event_id), self.consumer, nx=True, ex=ttl))

    # ------------------------------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        """Stop popping; ``run()`` then finishes the running handlers, acks them and returns.

        Safe from any thread, greenlet, signal handler or handler.
        """
        self._stop.set()

    def recover(self, consumer: str | None = None) -> int:
        """Re-queue a dead consumer's un-acked events (to the head of the events list, in order).

        Without a name: every consumer of this list whose heartbeat expired. Returns how many moved.
        """
        if consumer is not None:
            if consumer == self.consumer and self._running:
                raise BackendError("recover() of this running consumer: it still owns that list")
            return self._requeue_of(consumer)
        moved = 0
        for key in self.redis.scan_iter(match=self.keys.processing_pattern(), count=500):
            name = key.decode().rsplit(":processing:", 1)[1]
            if name != self.consumer and not self.redis.exists(self.keys.alive_of(name)):
                moved += self._requeue_of(name)
        return moved

    def _requeue_of(self, consumer: str) -> int:
        moved = int(self._requeue(keys=[self.keys.processing_of(consumer), self.keys.events]))
        if moved:
            self.stats["requeued"] += moved
            log.warning("re-queued %d un-acked event(s) of consumer %s to %s", moved, consumer,
                        self.keys.events)
        return moved

    def run(self) -> None:
        """Consume until ``stop()`` (or SIGTERM/SIGINT when called on the main thread).

        Then: no more pops; events not yet started go back to the head of the list; running handlers
        finish and are acked. A second signal exits the process at once (un-acked events stay in the
        processing list for the next start or ``recover()``).
        """
        self._start()
        restore = self._install_signals()
        pool = KeyedPool(self.concurrency, self.runtime, name=f"backend-{self.consumer}")
        capacity = Capacity(self.prefetch, self.runtime)
        log.info("consuming %s as %s (%d handlers, %s, concurrency %d)", self.keys.events,
                 self.consumer, len(self.handlers), self.runtime.name, self.concurrency)
        try:
            while not self._stop.is_set():
                free = capacity.acquire(self.prefetch, self.block_timeout)
                if not free:
                    continue
                raws = self._pop(free)
                capacity.release(free - len(raws))
                for raw in raws:
                    pool.submit(*self._task(raw, capacity.release))
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
                for raw in self._pop(1):
                    try:
                        event = self._decode(raw)
                    except DecodeError as exc:
                        self._dead_letter(raw, "backend_sdk.decode", exc)
                        self._ack(raw)
                        continue
                    self._observe(event)
                    current = raw
                    yield event
                    current = None
                    self._ack(raw)
        finally:
            if current is not None:
                self._give_back_one(current)
            self._finish()

    # ---------------------------------------------------------------------------------- consuming
    def _start(self) -> None:
        if self._running:
            raise BackendError(f"consumer {self.consumer} is already running")
        self._running = True
        self._blocking = redis.Redis.from_url(
            self.redis_url, socket_timeout=self.block_timeout + 5.0, socket_connect_timeout=5.0,
            socket_keepalive=True, health_check_interval=0, retry=retry_policy(0),
            single_connection_client=True,
        )
        self._call(lambda: self._requeue_of(self.consumer))
        self._heartbeat()

    def _finish(self) -> None:
        """After the last ack: give back whatever is left, forget the heartbeat, close."""
        try:
            left = self._requeue_of(self.consumer)
            self.redis.delete(self.keys.alive)
            log.info("stopped %s: %d handled, %d dead-lettered, %d given back", self.consumer,
                     self.stats["handled"], self.stats["dead"], left)
        except REDIS_ERRORS as exc:
            log.error("could not give back %s's un-acked events (%r): they wait in %s for the next "
                      "start or recover()", self.consumer, exc, self.keys.processing)
        finally:
            with self._inflight_lock:
                self._inflight.clear()
            if self._blocking is not None:
                self._blocking.close()
            self._running = False
            self._stop.clear()  # ready to run again

    def _pop(self, most: int) -> list[bytes]:
        """BLMOVE one event (blocking at most ``block_timeout``), then drain up to ``most - 1`` more."""
        self._heartbeat()
        assert self._blocking is not None
        try:
            raw = self._blocking.blmove(self.keys.events, self.keys.processing, self.block_timeout,
                                        "LEFT", "RIGHT")
            if raw is None:
                return []
            self._track(raw)
            raws = [raw]
            if most > 1:
                more = self._drain(keys=[self.keys.events, self.keys.processing], args=[most - 1],
                                   client=self._blocking)
                for item in more:
                    self._track(item)
                raws.extend(more)
            return raws
        except REDIS_ERRORS as exc:
            # A lost reply may have left an event in our processing list: adopt what we do not track.
            log.warning("redis error while popping %s: %r; retrying", self.keys.events, exc)
            self._stop.wait(1.0)
            return self._call(self._adopt_stranded) or []

    def _adopt_stranded(self) -> list[bytes]:
        held = self.redis.lrange(self.keys.processing, 0, -1)
        with self._inflight_lock:
            unknown = Counter(held) - self._inflight
            self._inflight.update(unknown)
        stranded = list(unknown.elements())
        if stranded:
            log.warning("adopting %d event(s) stranded in %s by a lost reply", len(stranded),
                        self.keys.processing)
        return stranded

    def _track(self, raw: bytes) -> None:
        with self._inflight_lock:
            self._inflight[raw] += 1

    def _untrack(self, raw: bytes) -> None:
        with self._inflight_lock:
            self._inflight[raw] -= 1
            if self._inflight[raw] <= 0:
                del self._inflight[raw]

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._call(lambda: self.redis.set(self.keys.alive, str(os.getpid()),
                                              ex=max(1, int(self.heartbeat_ttl))))
            self._next_heartbeat = now + self.heartbeat_ttl / 3

    def _call(self, func: Callable[[], Any]) -> Any:
        """Run a Redis call whose failure must not end the consumer (logged; returns None)."""
        try:
            return func()
        except REDIS_ERRORS as exc:
            log.warning("redis error: %r", exc)
            return None

    # ------------------------------------------------------------------------------------ handling
    def _task(self, raw: bytes, release: Callable[[], None]) -> tuple[str, Callable[[], None]]:
        event: Event | None = None
        decode_error: DecodeError | None = None
        try:
            event = self._decode(raw)
        except DecodeError as exc:
            decode_error = exc

        def task() -> None:
            try:
                if decode_error is not None:
                    self._dead_letter(raw, "backend_sdk.decode", decode_error)
                    self._ack(raw)
                elif event is not None and self._handle(raw, event):
                    self._ack(raw)
            finally:
                release()

        return (event.room if event is not None else ""), task

    def _handle(self, raw: bytes, event: Event) -> bool:
        """Run the handlers of one event; False when it was given back (stop during a backoff)."""
        self._observe(event)
        for handler, delivered in self.plan(event, self.nicks(event.room)):
            attempts = self._attempts(handler)
            for attempt in range(1, attempts + 1):
                try:
                    handler.func(delivered)
                    break
                except Exception as exc:
                    self._log_failure(handler, event, attempt, attempts, exc)
                    if attempt == attempts:
                        self._dead_letter(raw, handler.name, exc)
                    elif self._stop.wait(self._backoff(attempt)):
                        self._give_back_one(raw)  # stopping: the next consumer retries it
                        return False
        self.stats["handled"] += 1
        return True

    def _dead_letter(self, raw: bytes, handler: str, exc: BaseException) -> None:
        self.redis.rpush(self.keys.dead, self._dead_entry(raw, handler, exc))

    def _ack(self, raw: bytes) -> None:
        try:
            self.redis.lrem(self.keys.processing, 1, raw)
        except REDIS_ERRORS as exc:
            log.error("could not ack an event (%r): it will be delivered again", exc)
        finally:
            self._untrack(raw)

    def _give_back_one(self, raw: bytes) -> None:
        try:
            self._give_back(keys=[self.keys.processing, self.keys.events], args=[raw])
            self.stats["requeued"] += 1
        except REDIS_ERRORS as exc:
            log.error("could not give an event back (%r): it waits in %s", exc, self.keys.processing)
        finally:
            self._untrack(raw)

    # ------------------------------------------------------------------------------------- signals
    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            if self._stop.is_set():
                log.warning("second signal %d: exiting now", signum)
                os._exit(128 + signum)
            log.info("signal %d: finishing running handlers (again to exit at once)", signum)
            self.stop()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, prev in previous.items():
                signal.signal(sig, prev)

        return restore


def _rooms(specs: dict[bytes, bytes], states: dict[bytes, bytes]) -> dict[str, dict[str, Any]]:
    def load(value: bytes | None) -> Any:
        try:
            return ujson.loads(value) if value is not None else None
        except ValueError:
            return None

    return {room.decode(): {"spec": load(specs.get(room)), "state": load(states.get(room))}
            for room in sorted(set(specs) | set(states))}
