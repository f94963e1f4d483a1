"""The Frontend: the room map, start-up from the registry, signals, and the ordered shutdown.

Start: raise the open-file limit -> wait for Redis -> re-queue our in-flight leftovers -> join every
room in ``rooms`` -> start the outgoing and incoming dispatchers.

Stop (SIGTERM/SIGINT; a second signal exits at once), each phase logged:
stop reading ``control`` -> rooms handle what they accepted -> sessions send it and QUIT -> flush
events to Redis -> close Redis. Rooms stay in ``rooms``, so a restart rejoins them.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from collections import Counter
from typing import Any, Callable

import gevent
import gevent.event
import redis

from .chat.irc import IrcConnection
from .config import Settings
from .counters import Counters
from .errors import ProtocolError
from .heartbeat import Heartbeat
from .incoming import IncomingDispatcher
from .keys import Keys
from .metrics import MetricsServer
from .outgoing import Outbox
from .pacing import Backoff
from .protocol import Spec, decode, parse_spec
from .redis_conn import REDIS_ERRORS, DirectLink, shared_client
from .recovery import Recovery
from .room import Room
from .sessions import SessionPool
from .systemd import Watchdog, notify
from .reload import apply_settings, reload_settings

log = logging.getLogger(__name__)


def _xmpp_factory(*args: Any, **kwargs: Any) -> Any:
    from .chat.xmpp import XmppSession  # slixmpp is only imported when an XMPP room exists

    return XmppSession(*args, **kwargs)


def raise_nofile_limit(rooms_hint: int = 0) -> int:
    """Raise the open-file soft limit to the hard limit; warn when it is below what rooms need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    if rooms_hint and soft < rooms_hint + 64:
        log.error("open-file limit %d is below what %d rooms with their own connections need (%d); "
                  "raise it (ulimit -n, LimitNOFILE=)", soft, rooms_hint, rooms_hint + 64)
    return soft


class Frontend:
    """One greenroom process: rooms, dispatchers and the Redis connections they share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis: redis.Redis = shared_client(settings)
        #: commands popped and not yet acknowledged in Redis, as raw item -> count
        self.inflight: Counter[bytes] = Counter()
        self.counters = Counters()
        self.stats = self.counters
        self.outbox = Outbox(DirectLink(settings), settings, self.keys, self.counters, on_acked=self._acked)
        self.sessions = SessionPool(settings, {"irc": IrcConnection, "xmpp": _xmpp_factory},
                                    counters=self.counters, pace_events=self.outbox.wait_for_room)
        self.rooms: dict[str, Room] = {}
        self.incoming = IncomingDispatcher(self)
        self.recovery = Recovery(self)
        self.heartbeat = Heartbeat(self)
        self.started_at = 0.0
        self._stopped = gevent.event.Event()
        self._stopping = False
        self._starter: gevent.Greenlet | None = None
        self.metrics = MetricsServer(self)
        self.watchdog = Watchdog()
        #: True once every room of the registry was started (for /readyz and READY=1)
        self.registry_loaded = False
        #: builds fresh Settings from the config file, env and flags (SIGHUP); set by `greenroom run`
        self.config_loader: Callable[[], Settings] | None = None

    # ----------------------------------------------------------------------------------- rooms
    def add_room(self, room_id: str, spec: Spec, spec_json: dict) -> Room:
        room = Room(room_id, spec, spec_json, self)
        self.rooms[room_id] = room
        room.start()
        assert room.greenlet is not None
        room.greenlet.link_exception(lambda g, r=room: self._room_crashed(r, g))
        return room

    def _acked(self, raws: list[bytes]) -> None:
        inflight = self.inflight
        for raw in raws:
            if inflight[raw] <= 1:
                inflight.pop(raw, None)
            else:
                inflight[raw] -= 1

    def forget_room(self, room_id: str) -> None:
        self.rooms.pop(room_id, None)

    def _room_crashed(self, room: Room, greenlet: gevent.Greenlet) -> None:
        log.error("room %s: greenlet died: %r", room.id, greenlet.exception,
                  exc_info=greenlet.exc_info if greenlet.exc_info and greenlet.exc_info[0] else None)
        if self._stopping or self.rooms.get(room.id) is not room:
            return
        room.set_state("failed", error=f"internal error: {greenlet.exception!r}")

        def restart() -> None:
            if not self._stopping and self.rooms.get(room.id) is room:
                log.warning("room %s: restarting after a crash", room.id)
                self.add_room(room.id, room.spec, room.spec_json)

        gevent.spawn_later(self.settings.reconnect_min * 5, restart)

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Connect to Redis (waiting while it is down), restore rooms, start the dispatchers."""
        self.started_at = time.time()
        log.info("frontend %s starting (redis %s)", self.settings.frontend_id,
                 self.settings.redacted_redis_url())
        self.metrics.start(self.settings.metrics_addr)
        specs = self._wait_for_redis(self._load_registry)
        raise_nofile_limit(len(specs))
        self.outbox.start()
        self.heartbeat.start()
        self.recovery.start()
        for room_id, (spec, spec_json) in specs.items():
            self.add_room(room_id, spec, spec_json)
        if specs:
            log.info("restored %d rooms from the registry", len(specs))
        self.registry_loaded = True
        self.incoming.start()
        log.info("frontend %s running", self.settings.frontend_id)
        notify("READY=1")
        self.watchdog.start()

    def _wait_for_redis(self, step: Any) -> Any:
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                return step()
            except REDIS_ERRORS as exc:
                delay = backoff.next()
                log.warning("Redis is not reachable (%s); retrying in %.1fs", exc, delay)
                gevent.sleep(delay)

    def _load_registry(self) -> dict[str, tuple[Spec, dict]]:
        self.recovery.requeue_own()
        self.heartbeat.beat()  # alive before anything is popped, so nobody takes over our list
        self.recovery.scan_once()
        specs: dict[str, tuple[Spec, dict]] = {}
        for key, value in self.redis.hgetall(self.keys.rooms).items():
            room_id = key.decode("utf-8", "replace")
            try:
                spec_json = decode(value)
                specs[room_id] = (parse_spec(spec_json), spec_json)
            except ProtocolError as exc:
                log.error("room %s: the registry holds an invalid spec (%s); not joining it",
                          room_id, exc.detail)
        return specs

    def stop(self, timeout: float | None = None) -> None:
        """Graceful stop within ``timeout`` seconds (default ``shutdown_timeout``). Idempotent."""
        if self._stopping:
            self._stopped.wait()
            return
        self._stopping = True
        notify("STOPPING=1")
        budget = self.settings.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
        if self._starter is not None and not self._starter.dead:
            self._starter.kill()  # still waiting for Redis at start-up
        log.info("stopping: no more commands from %s", self.keys.control)
        self.incoming.stop()
        self.recovery.stop()
        log.info("stopping: %d rooms finish what they accepted", len(self.rooms))
        rooms = [r for r in self.rooms.values() if r.greenlet is not None]
        for room in rooms:
            room.shutdown()
        gevent.joinall([r.greenlet for r in rooms], timeout=min(1.0, left()))
        for room in rooms:
            if room.greenlet and not room.greenlet.dead:
                room.greenlet.kill(block=False)
        log.info("stopping: %d chat sessions send their queues and quit", len(self.sessions))
        self.sessions.close_all("shutting down", timeout=max(0.1, left() - 1.0))
        log.info("stopping: flushing %d items to Redis", self.outbox.pending)
        self.outbox.stop(timeout=left())
        self.heartbeat.stop(remove=True)
        self.metrics.stop()
        self.watchdog.stop()
        self.redis.close()
        log.info("stopped")
        self._stopped.set()

    def reload(self) -> bool:
        """SIGHUP: re-read the configuration and apply it without leaving any room (reload.py)."""
        new = reload_settings(self)
        if new is None:
            return False
        apply_settings(self, new)
        return True

    def run_forever(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop gracefully; return the exit status."""
        signals = {"count": 0}

        def on_signal(signum: int) -> None:
            signals["count"] += 1
            if signals["count"] > 1:
                log.warning("second signal: exiting at once")
                os._exit(1)
            log.info("signal %s: stopping gracefully", signal.Signals(signum).name)
            gevent.spawn(self.stop)

        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, on_signal, signum)
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))
        self._starter = gevent.spawn(self.start)
        self._stopped.wait()
        return 0
