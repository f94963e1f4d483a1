"""The pool of chat sessions: rooms with the same server and identity share one connection."""

from __future__ import annotations

import logging
from typing import Any, Callable

import gevent
import gevent.lock

from .config import Settings
from .counters import Counters
from .pacing import TokenBucket
from .protocol import Spec

log = logging.getLogger(__name__)

SessionFactory = Callable[..., Any]


class SessionPool:
    """Finds or creates the session a room should use, and paces new connections per server."""

    def __init__(self, settings: Settings, factories: dict[str, SessionFactory], *, counters: Counters,
                 pace_events: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.counters = counters
        self._factories = factories
        #: IRC readers call it after each chunk read: it blocks while the outgoing buffer is full
        self.pace_events = pace_events
        self._sessions: dict[tuple, Any] = {}
        self._pacers: dict[str, tuple[TokenBucket, gevent.lock.Semaphore]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Any]:
        return list(self._sessions.values())

    def session_for(self, room_id: str, spec: Spec) -> Any:
        """The live session with room to spare for this spec, or a new one."""
        base = spec.connection_key() if spec.share else (spec.protocol, "own", room_id)
        limit = getattr(self.settings, "channels_per_connection") if spec.protocol == "irc" else 0
        index = 0
        while True:
            key = base + (index,)
            session = self._sessions.get(key)
            if session is not None and session.closing:
                del self._sessions[key]  # it finishes on its own; never hand it a new room
                session = None
            if session is None:
                extra = {"pace_events": self.pace_events} if spec.protocol == "irc" else {}
                session = self._factories[spec.protocol](
                    spec, settings=self.settings, counters=self.counters, pace_connect=self.pace_connect,
                    label=_label(spec, index), **extra)
                self._sessions[key] = session
                return session
            if not limit or session.room_count < limit:
                return session
            index += 1

    def pace_connect(self, server: str) -> None:
        """Block the calling greenlet until a new connection to ``server`` is allowed."""
        rate = self.settings.for_server(server, "connect_rate")
        if not rate or rate <= 0:
            return
        pacer = self._pacers.get(server)
        if pacer is None:
            # a burst of one: connects are spread evenly, never more than `rate` in any second
            pacer = self._pacers[server] = (TokenBucket(rate, 1.0), gevent.lock.Semaphore())
        bucket, turn = pacer
        # One waiter at a time, each measured from the previous real connect: a stalled hub then
        # delays connects instead of releasing every slot that fell due during the stall at once.
        with turn:
            delay = bucket.take()
            while delay > 0:
                gevent.sleep(delay)
                delay = bucket.take()

    def apply_settings(self, new: Settings) -> None:
        """A reload: every live session, and the sessions made from now on, use ``new``."""
        old, self.settings = self.settings, new
        for session in self.sessions():
            _apply_to_session(session, old, new)

    def close_all(self, reason: str, timeout: float) -> None:
        """Close every session in parallel within ``timeout`` seconds."""
        sessions, self._sessions = list(self._sessions.values()), {}
        jobs = [gevent.spawn(s.close, reason, timeout) for s in sessions]
        gevent.joinall(jobs, timeout=timeout + 1.0)


def _label(spec: Spec, index: int) -> str:
    where = f"{getattr(spec, 'server', None) or getattr(spec, 'host', None) or ''}"
    who = getattr(spec, "jid", None) or spec.nick
    suffix = f"#{index}" if index else ""
    return f"{where}:{getattr(spec, 'port', '')}/{who}{suffix}"


def _apply_to_session(session: Any, old: Settings, new: Settings) -> None:
    """A chat session reads ``self.settings``; its send queue copied two values at creation."""
    if hasattr(session, "settings"):
        session.settings = new
    queue = getattr(session, "queue", None)
    if queue is None or not hasattr(queue, "max_per_room"):
        return
    queue.max_per_room = new.room_queue_max
    spec = getattr(session, "spec", None)
    server = getattr(spec, "server", None)
    if spec is None or server is None or getattr(spec, "flood", None) is not None:
        return  # the spec sets its own flood control (or none): the config does not apply
    rate, burst = new.for_server(server, "flood_rate"), new.for_server(server, "flood_burst")
    if (rate, burst) != (old.for_server(server, "flood_rate"), old.for_server(server, "flood_burst")):
        queue.bucket = TokenBucket(rate, burst) if rate > 0 else None
