"""The pool of chat sessions: rooms with the same server and identity share one connection.

Protocol-blind: a session is found by its spec's ``connection_key()`` and made by the factory of its
``protocol`` (``frontend.chat.default_factories()`` unless given); whether it takes one more room is
the session's to say (``ChatSession.accepts``), past it the pool opens the key's next session.

What the pool knows of each server, for every session to it: the flood limits learned from flood
disconnects (``flood_memory.FloodMemory``, kept in Redis, injected by the wiring) and what IRC servers
said in ISUPPORT (``chat.irc_isupport.ServerFacts``: channel limits, case mapping). A session may hand a
room to another session of its key (``other_session``: IRC, past a server's channel limit).

Connects are admitted per server by a ``ConnectLine``: at most ``max_connections`` connections held at
once (``[servers."host"]``; 0: no limit), a new one every ``1/connect_rate`` seconds, and the waiters
served fairly between tenants: the tenant holding the fewest of the server's connections goes next,
tenants holding as many take turns. So one tenant's 5,000 pending joins delay another tenant's one
join by a pacing slot or two, and a tenant cannot take a freed connection while another tenant that
holds fewer waits. A session's tenant is its first room's (a shared connection counts for the tenant
whose room opened it). Every session gets the pool's ``TenantShares`` (``tenant_shares``: the
registered tenants' limits on this frontend, ``chat/tenant_share.py``) for its send queue.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections import deque
from typing import Any, Mapping, Optional

import gevent
import gevent.event
import gevent.lock
import redis

from .chat import default_factories
from .chat.base import ChatSession, EventsBuffer, RoomLink, SessionFactory, SpeakGate
from .chat.irc_isupport import ServerFacts
from .chat.sendqueue import SendQueue
from .chat.tenant_share import TenantShares
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
                 counters: Counters, pace_events: Optional[EventsBuffer] = None,
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
        #: where events wait for Redis: readers stop reading while it is full
        self.pace_events = pace_events
        self.gate = gate if gate is not None else SpeakGate()
        self._sessions: dict[tuple, ChatSession] = {}
        #: server -> its connect line (pacing, the connection budget, fair between tenants)
        self._lines: dict[str, ConnectLine] = {}
        #: the registered tenants' limits on this frontend, consulted by every session's send queue;
        #: the wiring recomputes them (``tenant_shares.refresh``) after every lease renewal
        self.tenant_shares = TenantShares(counters)

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
                ticket = ConnectTicket(spec.tenant)
                session = self._factories[spec.protocol](
                    spec, settings=self.settings, counters=self.counters,
                    pace_connect=functools.partial(self.pace_connect, ticket=ticket),
                    index=index, pace_events=self.pace_events, gate=self.gate)
                ticket.bind(session)
                queue = getattr(session, "queue", None)
                if isinstance(queue, SendQueue):
                    queue.use_shares(self.tenant_shares)
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

    def pace_connect(self, server: str, ticket: Optional["ConnectTicket"] = None) -> None:
        """Block the calling greenlet until a new connection to ``server`` is allowed: within the
        server's ``max_connections`` and ``connect_rate``, waiters served fairly between tenants.

        ``ticket`` is the session's (the pool gives each session one, see ``session_for``): it names
        the session's tenant and holds its place in the server's budget, from the first connect until
        the session ends; each call after the first (a reconnect) gives the place back and queues
        again like everyone else. Without a ticket the caller is paced as a tenant-less one-off.
        """
        rate = self.settings.for_server(server, "connect_rate") or 0
        limit = self.settings.for_server(server, "max_connections") or 0
        line = self._lines.get(server)
        if line is None:
            line = self._lines[server] = ConnectLine(server)
        line.configure(rate, limit)
        line.enter(ticket if ticket is not None else ConnectTicket(None, keep=False))

    def budget(self, server: str) -> dict[str, int]:
        """Connections to ``server`` held now, by tenant (None: rooms without a tenant)."""
        line = self._lines.get(server)
        return dict(line.held) if line is not None else {}

    def apply_settings(self, new: Settings) -> None:
        """A reload: every live session, and the sessions made from now on, use ``new``."""
        self.settings = new
        for session in self.sessions():
            session.apply_settings(new)
        for server, line in self._lines.items():  # a budget that grew admits waiters at once
            line.configure(new.for_server(server, "connect_rate") or 0,
                           new.for_server(server, "max_connections") or 0)

    def close_all(self, reason: str, timeout: float) -> None:
        """Close every session in parallel within ``timeout`` seconds."""
        sessions, self._sessions = list(self._sessions.values()), {}
        jobs = [gevent.spawn(s.close, reason, timeout) for s in sessions]
        gevent.joinall(jobs, timeout=timeout + 1.0)


# ------------------------------------------------------------------------------- connect admission
class ConnectTicket:
    """A session's place in its server's connect line: its tenant, whether it holds one of the
    server's connections (``holds``, from its first connect until the session ends), and whether its
    rooms were told that they wait for one (``told``, once per wait)."""

    __slots__ = ("tenant", "keep", "holds", "linked", "told", "cancelled", "event", "_session")

    def __init__(self, tenant: Optional[str], *, keep: bool = True) -> None:
        self.tenant = tenant
        #: keep the connection's place after the connect (a session's ticket); False: a one-off
        self.keep = keep
        self.holds = False
        self.linked = False
        self.told = False
        self.cancelled = False
        self.event: Optional[gevent.event.Event] = None
        self._session: Any = None

    def bind(self, session: Any) -> None:
        try:
            self._session = weakref.ref(session)
        except TypeError:
            self._session = lambda: session

    @property
    def session(self) -> Any:
        return self._session() if self._session is not None else None


class ConnectLine:
    """The connects to one chat server: at most ``limit`` connections held (0: no limit), a new one
    every ``1/rate`` s after the last (0: unpaced; a burst of one, so connects are spread evenly and
    a stalled hub delays them instead of releasing every slot that fell due meanwhile at once).

    Waiters are admitted one at a time (``active`` paces, then hands over), by tenant: the tenant
    that holds the fewest connections to the server goes next, tenants holding as many in turn
    (``turns``). A waiter that cannot be admitted because the budget is used up waits on its own
    event (no polling, no retry) and its session's rooms hear why once (``connection_wait``).
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.rate = 0.0
        self.limit = 0
        self.bucket: Optional[TokenBucket] = None
        self.in_use = 0
        #: tenant -> connections it holds (None: rooms without a tenant)
        self.held: dict[Optional[str], int] = {}
        self._waiting: dict[Optional[str], deque[ConnectTicket]] = {}
        self._turns: deque[Optional[str]] = deque()
        self._untold: deque[ConnectTicket] = deque()
        self.active: Optional[ConnectTicket] = None

    def __repr__(self) -> str:
        return (f"<ConnectLine {self.server}: {self.in_use}/{self.limit or 'inf'} held, "
                f"{sum(len(q) for q in self._waiting.values())} waiting>")

    @property
    def waiting(self) -> int:
        return sum(1 for q in self._waiting.values() for t in q if not t.cancelled)

    def configure(self, rate: float, limit: int) -> None:
        if rate != self.rate:
            self.rate = rate
            self.bucket = TokenBucket(rate, 1.0) if rate > 0 else None
        if limit != self.limit:
            self.limit = max(0, int(limit))
            self._dispatch()

    def _free(self) -> bool:
        return not self.limit or self.in_use < self.limit

    # ------------------------------------------------------------------------------ a connect
    def enter(self, ticket: ConnectTicket) -> None:
        """Block until this ticket may connect (see the class)."""
        if ticket.holds:  # a reconnect: the connection's place goes back, and it queues like anyone
            self.release(ticket)
        if self.active is None and not self._turns and self._free():
            self.active = ticket
        else:
            self._enqueue(ticket)
            if self.active is None:
                self._dispatch()  # (the waiters ahead may all have gone)
            try:
                assert ticket.event is not None
                ticket.event.wait()
            except BaseException:
                ticket.cancelled = True  # (left where it is: the dispatcher skips it)
                if self.active is ticket:
                    self.active = None
                    self._dispatch()
                raise
        try:
            self._hold(ticket)
            if ticket.told:
                ticket.told = False
                _tell(ticket, None)
            bucket = self.bucket
            if bucket is not None:
                delay = bucket.take()
                while delay > 0:
                    gevent.sleep(delay)
                    delay = bucket.take()
        finally:
            self.active = None
            if not ticket.keep:
                self.release(ticket)
            self._dispatch()

    def _hold(self, ticket: ConnectTicket) -> None:
        self.in_use += 1
        self.held[ticket.tenant] = self.held.get(ticket.tenant, 0) + 1
        ticket.holds = True
        if ticket.keep and not ticket.linked:
            session = ticket.session
            when_finished = getattr(session, "when_finished", None)
            if when_finished is not None:  # the session's end frees its place (not a reconnect's)
                ticket.linked = True
                when_finished(lambda: self.release(ticket))
                return
            current = gevent.getcurrent()
            if isinstance(current, gevent.Greenlet):  # another kind of session: its greenlet's end
                ticket.linked = True
                current.link(lambda _: self.release(ticket))

    def release(self, ticket: ConnectTicket) -> None:
        """The ticket's connection is given up (the session ended, or reconnects)."""
        if not ticket.holds:
            return
        ticket.holds = False
        self.in_use -= 1
        n = self.held.get(ticket.tenant, 0) - 1
        if n > 0:
            self.held[ticket.tenant] = n
        else:
            self.held.pop(ticket.tenant, None)
        self._dispatch()

    # ------------------------------------------------------------------------------ the waiters
    def _enqueue(self, ticket: ConnectTicket) -> None:
        ticket.cancelled = False
        if ticket.event is None:
            ticket.event = gevent.event.Event()
        else:
            ticket.event.clear()
        waiting = self._waiting.get(ticket.tenant)
        if waiting is None:
            waiting = self._waiting[ticket.tenant] = deque()
            self._turns.append(ticket.tenant)
        waiting.append(ticket)
        if self._free():
            self._untold.append(ticket)  # told later, should the budget run out before its turn
        else:
            self._tell_waiting(ticket)

    def _dispatch(self) -> None:
        """Admit the next waiter, if nobody is being admitted and a connection is free."""
        if self.active is not None:
            return
        turns, waiting = self._turns, self._waiting
        while turns:
            if not self._free():
                while self._untold:
                    ticket = self._untold.popleft()
                    if not ticket.cancelled and not ticket.holds and self.active is not ticket:
                        self._tell_waiting(ticket)
                return
            held = self.held
            tenant = min(turns, key=lambda t: held.get(t, 0))  # the first of the fewest, in turn
            queue = waiting[tenant]
            ticket = queue.popleft()
            turns.remove(tenant)
            if queue:
                turns.append(tenant)
            else:
                del waiting[tenant]
            if ticket.cancelled:
                continue
            self.active = ticket
            assert ticket.event is not None
            ticket.event.set()
            return

    def _tell_waiting(self, ticket: ConnectTicket) -> None:
        if ticket.told:
            return
        ticket.told = True
        reason = (f"all {self.limit} connections this frontend may open to {self.server} "
                  "(max_connections) are in use; waiting for one to free up")
        session = ticket.session
        log.warning("%s: a connect of tenant %s waits: %s", self.server, ticket.tenant, reason)
        _tell(ticket, reason, session)


def _tell(ticket: ConnectTicket, reason: Optional[str], session: Any = None) -> None:
    """Tell the ticket's session that its rooms wait for a connection (``reason``), or no longer."""
    session = session if session is not None else ticket.session
    notify = getattr(session, "connection_wait", None)
    if notify is not None:
        try:
            notify(reason)
        except Exception:  # a room's report must never break the line
            log.exception("%s: could not tell a session's rooms about their connection", ticket.tenant)
