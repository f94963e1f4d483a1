"""MUC membership on one XMPP stream (XEP-0045): which rooms each MUC serves, joins, rejoins, leaving,
self-ping (XEP-0410), and turning queued lines into stanzas.

Owned by an ``XmppSession`` (composition). ``attach``/``detach`` run in room greenlets and reach the
stream only through ``asyncio_bridge.post``; everything else runs on the asyncio loop greenlet
(slixmpp handlers, timers) and never blocks.

Several rooms may sit on one MUC of one stream (two tenants with the same JID): one occupant (the
first room's nick), every room gets the MUC's events, each has its own send queue, and the bot leaves
only when the last room goes. Occupants are tracked up to ``MAX_OCCUPANTS`` per MUC and
``MAX_OCCUPANTS_PER_SESSION`` per stream (``members_untracked`` past them: their joins and status
changes are not reported, their departures still are); all of it is released when the MUC's last room
goes and when the stream drops.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Protocol

from slixmpp import JID

from ..logs import Throttle
from ..pacing import Backoff
from . import asyncio_bridge as aio
from .base import RoomLink, Seat
from .irc_format import nick_candidates
from .sendqueue import OutLine, report_unsent



class MucHost(Protocol):
    """What the MUC rooms use of the XMPP session that owns them (``xmpp.XmppSession``)."""

    label: str
    settings: Any
    counters: Any
    queue: Any
    gate: Any
    client: Any
    nick: str
    online: bool

    def last_room_gone(self) -> None: ...

log = logging.getLogger("frontend.chat.xmpp")
_throttled = Throttle(log, 60.0)

MAX_OCCUPANTS = 5_000
MAX_OCCUPANTS_PER_SESSION = 20_000
#: nick changes (status 303) announced and not yet followed by the new nick's presence
MAX_RENAMED = 64


def bare(jid: Any) -> str:
    """The normalised bare JID (lower-cased by slixmpp's stringprep) as a dictionary key."""
    return JID(jid).bare if isinstance(jid, str) else jid.bare


class Muc:
    """One MUC on a session: the rooms it serves and what we know about it."""

    __slots__ = ("jid", "seats", "nick", "nicks", "state", "occupants", "renamed", "topic_seen",
                 "backoff", "timer", "failure", "parting")

    def __init__(self, jid: str, first_nick: str, backoff: Backoff) -> None:
        self.jid = jid
        self.seats: tuple[Seat, ...] = ()
        self.nicks: Iterator[str] = nick_candidates(first_nick)
        self.nick: str = next(self.nicks)
        #: idle (not in the room), joining (presence sent), joined, failed (banned: no retries)
        self.state = "idle"
        self.occupants: set[str] = set()
        self.renamed: set[str] = set()  # new nicks announced by a 303, not reported as joins
        self.topic_seen = False
        self.backoff = backoff
        self.timer: Any = None  # asyncio TimerHandle of a pending rejoin / join timeout
        self.failure: Optional[str] = None  # why the state is failed
        self.parting: Optional[OutLine] = None  # the unavailable presence queued behind the last room

    @property
    def rooms(self) -> list[RoomLink]:
        return [seat.room for seat in self.seats]

    @property
    def password(self) -> Optional[str]:
        for seat in self.seats:
            password = getattr(seat.room.spec, "room_password", None)
            if password:
                return password
        return None

    def restart_nicks(self) -> None:
        if self.seats:
            self.nicks = nick_candidates(self.seats[0].room.spec.nick)
            self.nick = next(self.nicks)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class MucRooms:
    """The MUCs of one stream, by bare JID, and each room's seat on one."""

    __slots__ = ("session", "by_jid", "seats", "tracked")

    def __init__(self, session: MucHost) -> None:
        self.session = session
        self.by_jid: dict[str, Muc] = {}
        self.seats: dict[RoomLink, Seat] = {}
        self.tracked = 0  # occupants tracked over all MUCs

    # ------------------------------------------------------------------------------ queries
    def rooms(self) -> list[RoomLink]:
        return list(dict.fromkeys(seat.room for muc in self.by_jid.values() for seat in muc.seats))

    def seat_of(self, room: RoomLink) -> Optional[Seat]:
        return self.seats.get(room)

    def of(self, room: RoomLink) -> Optional[Muc]:
        seat = self.seats.get(room)
        return seat.place if seat is not None else None

    def __len__(self) -> int:
        return len(self.by_jid)

    # ------------------------------------------------------------- room greenlets: come and go
    def attach(self, room: RoomLink) -> None:
        session = self.session
        jid = bare(room.spec.muc)  # type: ignore[union-attr]
        muc = self.by_jid.get(jid)
        current = self.seats.get(room)
        if muc is not None and current is not None and current.place is muc:
            return
        new = muc is None
        if new:
            muc = self.by_jid[jid] = Muc(jid, room.spec.nick, Backoff(session.settings.reconnect_min * 5,
                                                                      session.settings.reconnect_max))
        seat = self.seats[room] = Seat(room, muc)
        muc.seats += (seat,)
        if new:
            if session.online:
                room.set_state("joining")
                aio.post(self.send_join, muc)
            else:
                room.set_state("connecting")
            return
        log.info("room %s: shares %s on %s with room %s", room.id, jid, session.label, muc.seats[0].room.id)
        if muc.state == "failed":
            room.emit("error", code="join_failed", detail=muc.failure or f"{jid}: refused")
            room.set_state("failed", error=muc.failure)
        elif muc.state == "joined" and muc.parting is None:
            self._announce_one(muc, seat)
        else:
            room.set_state("joining" if session.online else "connecting")

    def detach(self, room: RoomLink, reason: str, silent: bool = False) -> None:
        seat = self.seats.pop(room, None)
        if seat is None:
            return
        muc: Muc = seat.place
        session = self.session
        last = len(muc.seats) == 1
        present = muc.state in ("joined", "joining") and session.online
        if silent:
            session.queue.remove(seat)  # neither sent nor reported: the next holder sends them
            if last and present:
                aio.post(self._send_leave, muc.jid, muc.nick, "")
            self._remove(seat)
            return
        if muc.state == "joined" and session.online and session.gate.open:
            if last:
                line = OutLine(("part", muc.jid, reason))
                muc.parting = line
            else:
                line = OutLine(None)  # a barrier: the room's lines go first, the MUC stays
            line.on_sent = lambda: self.forget(seat, reason)
            session.queue.put(seat, line)
            return
        if last and present:
            aio.post(self._send_leave, muc.jid, muc.nick, reason)
        self.forget(seat, reason)

    def forget(self, seat: Seat, reason: str) -> None:
        """The seat is given up: unsent lines are reported, ``parted`` emitted."""
        if not seat.live:
            return
        muc: Muc = seat.place
        parting = muc.parting
        self._remove(seat)
        room = seat.room
        report_unsent(room, self.session.queue.remove(seat))
        room.set_state("parted")
        room.emit("parted", reason=reason)
        if muc.seats and parting is not None:  # a room attached while we were leaving: join again
            muc.parting = None
            muc.state = "idle"
            aio.post(self.send_join, muc)

    def _remove(self, seat: Seat) -> None:
        seat.live = False
        muc: Muc = seat.place
        muc.seats = tuple(s for s in muc.seats if s is not seat)
        if self.seats.get(seat.room) is seat:
            del self.seats[seat.room]
        self.session.queue.disable(seat)
        if not muc.seats:
            muc.cancel_timer()
            if muc.state == "joined":
                aio.post(self.self_ping, muc.jid, muc.nick, False)
            muc.state = "idle"
            self.tracked -= len(muc.occupants)
            muc.occupants = set()
            if self.by_jid.get(muc.jid) is muc:
                del self.by_jid[muc.jid]
        if not self.by_jid:
            self.session.last_room_gone()

    # -------------------------------------------------------------------- occupants (bounded)
    def track(self, muc: Muc, nick: str) -> bool:
        """Remember an occupant; False when the bounds are reached (it is not tracked)."""
        if len(muc.occupants) >= MAX_OCCUPANTS or self.tracked >= MAX_OCCUPANTS_PER_SESSION:
            self.session.counters["members_untracked"] += 1
            _throttled.warning("occupants " + self.session.label,
                               "room %s: %s has more occupants than are tracked (%d per MUC, %d per stream); "
                               "the others' joins are not reported", muc.seats[0].room.id if muc.seats else "-",
                               muc.jid, MAX_OCCUPANTS, MAX_OCCUPANTS_PER_SESSION)
            return False
        muc.occupants.add(nick)
        self.tracked += 1
        return True

    def untrack(self, muc: Muc, nick: str) -> None:
        if nick in muc.occupants:
            muc.occupants.discard(nick)
            self.tracked -= 1

    def renamed(self, muc: Muc, nick: str) -> None:
        if len(muc.renamed) >= MAX_RENAMED:
            muc.renamed.clear()
        muc.renamed.add(nick)

    def clear_occupants(self, muc: Muc) -> None:
        self.tracked -= len(muc.occupants)
        muc.occupants = set()
        muc.renamed = set()

    # ====================================================================== on the asyncio loop
    def send_join(self, muc: Muc) -> None:
        session = self.session
        if not session.online or self.by_jid.get(muc.jid) is not muc or muc.state == "failed" or not muc.seats:
            return
        muc.cancel_timer()
        muc.state = "joining"
        self.clear_occupants(muc)
        muc.topic_seen = False
        for room in muc.rooms:
            room.set_state("joining")
        client = session.client
        stanza = client.plugin["xep_0045"].make_join_stanza(
            JID(muc.jid), muc.nick, password=muc.password, maxstanzas=0)
        stanza.send()
        muc.timer = client.loop.call_later(session.settings.connect_timeout, self._join_timed_out, muc)

    def _join_timed_out(self, muc: Muc) -> None:
        muc.timer = None
        if muc.state == "joining" and self.by_jid.get(muc.jid) is muc:
            delay = muc.backoff.next()
            detail = f"{muc.jid}: no answer to the join within {self.session.settings.connect_timeout:g}s"
            muc.state = "idle"
            for room in muc.rooms:
                log.warning("room %s: %s; retrying in %.0fs", room.id, detail, delay)
                room.set_state("backoff", error=detail)
            self.schedule_join(muc, delay)

    def schedule_join(self, muc: Muc, delay: float) -> None:
        muc.cancel_timer()
        muc.timer = self.session.client.loop.call_later(delay, self.send_join, muc)

    def _send_leave(self, jid: str, nick: str, reason: str) -> None:
        if self.session.online:
            self.session.client.send_presence(pto=f"{jid}/{nick}", ptype="unavailable", pstatus=reason or None)

    def joined(self, muc: Muc, codes: set[int], resumed: bool = False) -> None:
        muc.cancel_timer()
        muc.state = "joined"
        muc.backoff.reset()
        session = self.session
        session.nick = muc.nick
        self.self_ping(muc.jid, muc.nick, True)
        if 201 not in codes:
            self.announce(muc, resumed)
            return
        # We created the room. Servers keep a new room locked (closed to others) until its owner
        # configures it: accept the defaults ("instant room"), then say we are in.
        client = session.client
        form = client.plugin["xep_0004"].make_form(ftype="submit")
        task = client.loop.create_task(client.plugin["xep_0045"].set_room_config(
            muc.jid, form, timeout=session.settings.connect_timeout))

        def configured(done: Any) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.warning("room %s: configuring the new room failed: %r",
                            muc.seats[0].room.id if muc.seats else "-", done.exception())
            self.announce(muc, resumed)

        task.add_done_callback(configured)

    def announce(self, muc: Muc, resumed: bool) -> None:
        """Tell the rooms they are in, and let their queued lines go."""
        if muc.state != "joined" or self.by_jid.get(muc.jid) is not muc:
            return
        for seat in muc.seats:
            if not resumed:
                log.info("room %s: joined %s as %s", seat.room.id, muc.jid, muc.nick)
            self._announce_one(muc, seat)

    def _announce_one(self, muc: Muc, seat: Seat) -> None:
        room = seat.room
        room.set_state("joined")
        room.emit("joined", nick=muc.nick, channel=room.spec.muc)  # type: ignore[union-attr]
        self.session.queue.enable(seat)

    def lost(self, muc: Muc) -> None:
        """We are out of the MUC (kicked, banned, removed, or the self-ping says so)."""
        muc.state = "idle"
        for seat in muc.seats:
            self.session.queue.disable(seat)
        self.self_ping(muc.jid, muc.nick, False)

    def disconnected(self) -> None:
        """The stream is gone: no MUC is joined, nothing is tracked."""
        queue = self.session.queue
        for muc in self.by_jid.values():
            muc.cancel_timer()
            for seat in muc.seats:
                queue.disable(seat)
            self.self_ping(muc.jid, muc.nick, False)
            if muc.state == "joining":
                muc.state = "idle"
            self.clear_occupants(muc)
        self.tracked = 0

    def self_ping(self, jid: str, nick: str, enable: bool) -> None:
        plugin = self.session.client.plugin["xep_0410"]
        target = JID(f"{jid}/{nick}")
        if enable:
            settings = self.session.settings
            plugin.enable_self_ping(target, interval=settings.ping_interval, timeout=settings.ping_timeout)
        else:
            plugin.disable_self_ping(target)

    def on_muc_ping(self, change: dict) -> None:
        from slixmpp.plugins.xep_0410 import PingStatus

        target = change["key"][0]
        muc = self.by_jid.get(target.bare)
        if change["result"] != PingStatus.DISCONNECTED or muc is None or muc.state != "joined":
            return
        if target.resource != muc.nick:
            return
        self.lost(muc)
        for room in muc.rooms:
            log.warning("room %s: self-ping says we are no longer in %s; rejoining", room.id, muc.jid)
            room.set_state("backoff", error="dropped from the room (self-ping)")
        self.send_join(muc)

    # ------------------------------------------------------------------------------ sending lines
    def send_lines(self, taken: list[tuple[Any, OutLine]]) -> list[int]:
        """Hand the taken lines' stanzas to the stream; return the indexes that could not be sent."""
        unsent: list[int] = []
        session = self.session
        client = session.client
        for i, (seat, line) in enumerate(taken):
            data = line.data
            if data is None:
                continue  # a barrier: nothing to send
            muc: Muc = seat.place
            if not session.online or not seat.live or muc.state != "joined":
                if seat.live:
                    unsent.append(i)  # a forgotten room's line is simply dropped
                continue
            kind, jid = data[0], data[1]
            if kind == "groupchat":
                client.send_message(mto=JID(jid), mbody=data[2], mtype="groupchat")
            elif kind == "chat":
                msg = client.make_message(mto=JID(f"{jid}/{data[3]}"), mbody=data[2], mtype="chat")
                msg.enable("muc")  # XEP-0045 7.5: <x xmlns='...muc#user'/> marks a MUC private message
                msg.send()
            elif kind == "subject":
                client.make_message(mto=JID(jid), msubject=data[2], mtype="groupchat").send()
            elif kind == "part":
                client.send_presence(pto=f"{jid}/{muc.nick}", ptype="unavailable", pstatus=data[2] or None)
        return unsent
