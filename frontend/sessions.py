"""The pool of chat sessions: rooms with the same server and identity share one connection.

Protocol-blind: a session is found by its spec's ``connection_key()`` and made by the factory of its
``protocol`` (``frontend.chat.default_factories()`` unless given); whether it takes one more room is
the session's to say (``ChatSession.accepts``), past it the pool opens the key's next session.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Optional

import gevent
import gevent.lock

from .chat import default_factories
from .chat.base import ChatSession, SessionFactory, SpeakGate
from .config import Settings
from .counters import Counters
from .pacing import TokenBucket
from .protocol import Spec

log = logging.getLogger(__name__)


class SessionPool:
    """Finds or creates the session a room should use, and paces new connections per server.

    Every session gets the pool's ``gate`` (``SpeakGate``: while it is closed no room line goes out
    on any session) and is built as ``factory(spec, settings=, counters=, pace_connect=, index=,
    pace_events=, gate=)``.
    """

    def __init__(self, settings: Settings, factories: Optional[Mapping[str, SessionFactory]] = None, *,
                 counters: Counters, pace_events: Optional[Callable[[], None]] = None,
                 gate: Optional[SpeakGate] = None) -> None:
        self.settings = settings
        self.counters = counters
        self._factories = dict(factories) if factories is not None else default_factories()
        #: readers call it after each chunk read: it blocks while the outgoing buffer is full
        self.pace_events = pace_events
        self.gate = gate if gate is not None else SpeakGate()
        self._sessions: dict[tuple, ChatSession] = {}
        self._pacers: dict[str, tuple[TokenBucket, gevent.lock.Semaphore]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[ChatSession]:
        return list(self._sessions.values())

    def session_for(self, room_id: str, spec: Spec) -> ChatSession:
        """The live session with room to spare for this spec, or a new one."""
        base = spec.connection_key() if spec.share else (spec.protocol, "own", room_id)
        index = 0
        while True:
            key = base + (index,)
            session = self._sessions.get(key)
            if session is not None and session.closing:
                del self._sessions[key]  # it finishes on its own; never hand it a new room
                session = None
            if session is None:
                session = self._factories[spec.protocol](
                    spec, settings=self.settings, counters=self.counters, pace_connect=self.pace_connect,
                    index=index, pace_events=self.pace_events, gate=self.gate)
                self._sessions[key] = session
                return session
            if session.accepts(spec):
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
        self.settings = new
        for session in self.sessions():
            session.apply_settings(new)

    def close_all(self, reason: str, timeout: float) -> None:
        """Close every session in parallel within ``timeout`` seconds."""
        sessions, self._sessions = list(self._sessions.values()), {}
        jobs = [gevent.spawn(s.close, reason, timeout) for s in sessions]
        gevent.joinall(jobs, timeout=timeout + 1.0)
