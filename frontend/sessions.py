"""The pool of chat sessions: rooms with the same server and identity share one connection.

Protocol-blind: a session is found by its spec's ``connection_key()`` and made by the factory of its
``protocol`` (``frontend.chat.default_factories()`` unless given); whether it takes one more room is
the session's to say (``ChatSession.accepts``), past it the pool opens the key's next session.

What the pool knows of each server, for every session to it: the flood limits learned from flood
disconnects (``flood_memory.FloodMemory``, kept in Redis, injected by the wiring) and what IRC servers
said in ISUPPORT (``chat.irc_isupport.ServerFacts``: channel limits, case mapping). A session may hand a
room to another session of its key (``other_session``: IRC, past a server's channel limit).
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Optional

import gevent
import gevent.lock
import redis

from .chat import default_factories
from .chat.base import ChatSession, RoomLink, SessionFactory, SpeakGate
from .chat.irc_isupport import ServerFacts
from .config import Settings
from .counters import Counters
from .flood_memory import FloodMemory
from .keys import Keys
from .pacing import TokenBucket
from .protocol import Spec

log = logging.getLogger(__name__)


class SessionPool:
    """Finds or creates the session a room should use, and paces new connections per server.

    Every session gets the pool's ``gate`` (``SpeakGate``: while it is closed no room line goes out
    on any session) and is built as ``factory(spec, settings=, counters=, pace_connect=, index=,
    pace_events=, gate=)``; the default IRC factory also gets ``flood_memory=``, ``facts=`` and
    ``rehome=`` (``other_session``). ``flood_memory`` holds the flood limits learned of each server;
    without one the pool makes its own, kept in Redis through ``redis_client`` (None: in this process
    only).
    """

    def __init__(self, settings: Settings, factories: Optional[Mapping[str, SessionFactory]] = None, *,
                 counters: Counters, pace_events: Optional[Callable[[], None]] = None,
                 gate: Optional[SpeakGate] = None, flood_memory: Optional[FloodMemory] = None,
                 redis_client: Optional[redis.Redis] = None) -> None:
        self.settings = settings
        self.counters = counters
        #: the flood limits learned of each server (kept in Redis through ``redis_client``, when
        #: given), and what IRC servers said of themselves
        self.flood_memory = flood_memory if flood_memory is not None else FloodMemory(
            redis_client, Keys(settings.key_prefix), counters=counters,
            probe_after=lambda: self.settings.flood_probe_after)
        self.facts = ServerFacts()
        self._factories = dict(factories) if factories is not None else default_factories(
            irc={"flood_memory": self.flood_memory, "facts": self.facts, "rehome": self.other_session})
        #: readers call it after each chunk read: it blocks while the outgoing buffer is full
        self.pace_events = pace_events
        self.gate = gate if gate is not None else SpeakGate()
        self._sessions: dict[tuple, ChatSession] = {}
        self._pacers: dict[str, tuple[TokenBucket, gevent.lock.Semaphore]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[ChatSession]:
        return list(self._sessions.values())

    def session_for(self, room_id: str, spec: Spec, *, avoid: Optional[ChatSession] = None) -> ChatSession:
        """The live session with room to spare for this spec (never ``avoid``), or a new one."""
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
            if session is not avoid and session.accepts(spec):
                return session
            index += 1

    def other_session(self, room: RoomLink, avoid: ChatSession) -> Optional[ChatSession]:
        """Another session for ``room`` than ``avoid`` (which cannot keep it: a server's channel
        limit), found or opened like ``session_for``; not attached yet."""
        try:
            return self.session_for(room.id, room.spec, avoid=avoid)
        except Exception:  # the factory failed: the room fails where it is, saying why
            log.exception("room %s: no other connection could be opened", room.id)
            return None

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
