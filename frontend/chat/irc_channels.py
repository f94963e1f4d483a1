"""The channels on one IRC connection: which rooms each one serves, who is in it, joins and rejoins, and
the server lines about them turned into room events.

Owned by an ``IrcSession`` (composition): the session parses lines and hands the channel ones here
(``irc.DISPATCH``); this class never touches the socket, it queues lines through the session.

Several rooms may sit on one channel of one connection (two tenants with the same nick and server,
or ``#Chan`` and ``#chan``, one channel under RFC 1459 case mapping): every room on the channel gets
its events, each room has its own send queue, and the bot leaves the channel only when the last of
them goes. A private message goes to the connection's first room only when every room on the
connection is of one tenant (``dm_dropped`` otherwise): a DM never crosses a tenant boundary.

Names are compared as the server does (its ISUPPORT ``CASEMAPPING``: ``session.fold``); when the
server says how after our channels were keyed, ``rekey`` sorts them again. Past the server's channel
limit (a ``405`` to a JOIN) the channel's rooms go to another connection of the identity
(``session.other_connection``, the pool's); where none can be had, or the server refuses a first channel, they fail with a
``join_failed`` that says why, and that channel is not tried again on this connection.

What a server can make us track is bounded: at most ``MAX_MEMBERS`` nicks per channel and
``MAX_MEMBERS_PER_CONNECTION`` per connection (past them nicks are counted in ``members_untracked``
and their QUIT and NICK go unreported); a channel's members are released when its last room goes,
and all of them when the connection drops (the next JOIN's NAMES lists them again).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Protocol

import gevent
from irc import ctcp

from ..logs import Throttle
from ..pacing import Backoff
from .base import RoomLink, Seat
from .irc_format import join_lines, reason_line
from .irc_identity import NO_ACCOUNT
from .irc_limits import rekey, too_many_channels
from ..protocol import encode_fields
from .irc_wire import Message
from .sendqueue import OutLine, report_unsent



class ChannelHost(Protocol):
    """What the channels use of the IRC session that owns them (``irc.IrcSession``)."""

    label: str
    settings: Any
    counters: Any
    queue: Any
    gate: Any
    nick: str
    folded_nick: str
    registered: bool
    identity: Any
    info: Any

    @property
    def connected(self) -> bool: ...
    def fold(self, name: str) -> str: ...
    def is_me(self, nick: Optional[str]) -> bool: ...
    def other_connection(self, room: RoomLink) -> Any: ...
    def send_urgent(self, lines: list[bytes]) -> None: ...
    def last_room_gone(self) -> None: ...
    def saw_own_source(self, source: str, nick: str) -> None: ...

log = logging.getLogger(__name__)
_throttled = Throttle(log, 60.0)

#: nicks tracked per channel and per connection (for QUIT and NICK, which name no channel)
MAX_MEMBERS = 5_000
MAX_MEMBERS_PER_CONNECTION = 20_000
_MEMBER_PREFIXES = "~&@%+"


class Channel:
    """One channel on the connection and the rooms' seats on it (in the order they were attached)."""

    __slots__ = ("name", "seats", "joined", "members", "backoff", "timer", "parting", "failed")

    def __init__(self, name: str) -> None:
        self.name = name  # as the first room spelled it: what JOIN and PART say
        self.seats: tuple[Seat, ...] = ()
        self.joined = False
        #: why the server will never let this connection join it (no JOIN is sent again), or None
        self.failed: Optional[str] = None
        self.members: Optional[set[str]] = None  # folded nicks, made on the first one
        self.backoff: Optional[Backoff] = None  # join refusals, made on the first one
        self.timer: Optional[gevent.Greenlet] = None  # a pending rejoin
        self.parting: Optional[OutLine] = None  # the PART queued behind the last room's lines

    def key(self) -> Optional[str]:
        """The channel key to join with: the first room's that has one."""
        for seat in self.seats:
            key = getattr(seat.room.spec, "key", None)
            if key:
                return key
        return None

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.kill(block=False)
            self.timer = None


class IrcChannels:
    """Channels by folded name, the rooms' seats on them, membership and join state."""

    __slots__ = ("session", "by_name", "seats", "tracked", "full_at", "_leaving")

    def __init__(self, session: ChannelHost) -> None:
        self.session = session
        self.by_name: dict[str, Channel] = {}
        self.seats: dict[RoomLink, Seat] = {}  # each room's current seat
        self.tracked = 0  # member nicks tracked over all channels
        #: the number of channels this connection was in when the server refused one more (405)
        self.full_at: Optional[int] = None
        #: seats whose departure waits for their queued lines: seat -> the PART or barrier line
        self._leaving: Optional[dict[Seat, OutLine]] = None

    # --------------------------------------------------------------------------------- queries
    @property
    def room_total(self) -> int:
        return len(self.seats)

    def rooms(self) -> list[RoomLink]:
        return list(dict.fromkeys(seat.room for channel in self.by_name.values() for seat in channel.seats))

    def seat_of(self, room: RoomLink) -> Optional[Seat]:
        return self.seats.get(room)

    def shared_across_tenants(self) -> bool:
        """True while rooms of more than one tenant (no tenant counts as one) are on the connection.
        Looked at per private message and per line to a service only: no count is kept."""
        first = None
        for i, seat in enumerate(self.seats.values()):
            if i == 0:
                first = seat.tenant
            elif seat.tenant != first:
                return True
        return False

    def __len__(self) -> int:
        return len(self.by_name)

    def count(self, prefixes: str) -> int:
        """Channels here whose name starts with one of ``prefixes`` ("": every channel)."""
        if not prefixes:
            return len(self.by_name)
        return sum(1 for channel in self.by_name.values() if channel.name[:1] in prefixes)

    # ------------------------------------------------------------------------ rooms come and go
    def attach(self, room: RoomLink) -> None:
        session = self.session
        key = session.fold(room.spec.channel)  # type: ignore[union-attr]
        channel = self.by_name.get(key)
        if channel is None:
            channel = self.by_name[key] = Channel(room.spec.channel)  # type: ignore[union-attr]
        else:
            current = self.seats.get(room)
            if current is not None and current.place is channel:
                return
        seat = self.seats[room] = Seat(room, channel)
        channel.seats += (seat,)
        if len(channel.seats) > 1:
            log.info("room %s: shares %s on %s with room %s", room.id, channel.name, session.label,
                     channel.seats[0].room.id)
        if channel.joined and channel.parting is None:  # another room keeps us in the channel
            self._joined(seat)
        elif not session.registered:
            room.set_state("connecting")
        elif len(channel.seats) == 1:
            room.set_state("joining")
            session.send_urgent(join_lines([(channel.name, channel.key())]))
        else:
            room.set_state("joining")  # the channel's JOIN (or the rejoin after its PART) is on its way

    def detach(self, room: RoomLink, reason: str, silent: bool = False) -> None:
        """Leave after the room's queued lines went out (or at once: silent, not joined, gate shut)."""
        seat = self.seats.get(room)
        if seat is None:
            return
        channel: Channel = seat.place
        session = self.session
        del self.seats[room]  # a new attach (a move) gets a new seat; this one finishes leaving
        last = len(channel.seats) == 1
        if last:
            channel.cancel_timer()
        joined = channel.joined and session.connected
        # a JOIN may be on its way (registered, not joined yet): the last room's PART must follow it,
        # or the server's JOIN would leave the bot in a channel no room holds
        part = last and session.registered and session.connected
        if silent:
            session.queue.remove(seat)  # neither sent nor reported: the next holder sends them
            if part:
                session.send_urgent([f"PART {channel.name}\r\n".encode()])
            self._remove(seat)
            return
        if joined and session.gate.open:
            if last:
                line = OutLine(reason_line(f"PART {channel.name}", reason))
                channel.parting = line
            else:
                line = OutLine(None)  # a barrier: the room's lines go first, the channel stays
            line.on_sent = lambda: self.forget(seat, reason)
            if self._leaving is None:
                self._leaving = {}
            self._leaving[seat] = line
            session.queue.put(seat, line)
            return
        if part:  # joining, or the gate holds the room's lines (reported unsent): leave now
            session.send_urgent([reason_line(f"PART {channel.name}", reason)])
        self.forget(seat, reason)

    def forget(self, seat: Seat, reason: str) -> None:
        """The seat is given up: unsent lines are reported, ``parted`` emitted."""
        if not seat.live:
            return
        channel: Channel = seat.place
        parted_line = self._leaving.pop(seat, None) if self._leaving else None
        self._remove(seat)
        room = seat.room
        report_unsent(room, self.session.queue.remove(seat))
        room.set_state("parted")
        room.emit("parted", reason=reason)
        if channel.seats and parted_line is not None and parted_line is channel.parting:
            # a room attached while our PART was queued: the PART went out, join again
            channel.parting = None
            self._rejoin_now(channel)

    def _remove(self, seat: Seat) -> None:
        seat.live = False
        channel: Channel = seat.place
        channel.seats = tuple(s for s in channel.seats if s is not seat)
        if self.seats.get(seat.room) is seat:
            del self.seats[seat.room]
        self.session.queue.disable(seat)
        if not channel.seats:
            self._drop_channel(channel)
        if not self.by_name:  # no channel left with a seat on it
            self.session.last_room_gone()

    def _drop_channel(self, channel: Channel) -> None:
        channel.cancel_timer()
        if channel.members:
            self.tracked -= len(channel.members)
        channel.members = None
        key = self.session.fold(channel.name)
        if self.by_name.get(key) is channel:
            del self.by_name[key]

    def join_all(self) -> None:
        """After registration: JOIN every channel, several per line."""
        pairs = []
        for channel in self.by_name.values():
            if channel.failed:
                continue
            for seat in channel.seats:
                seat.room.set_state("joining")
            pairs.append((channel.name, channel.key()))
        if pairs:
            self.session.send_urgent(join_lines(pairs))

    def disconnected(self) -> None:
        """The connection dropped: nobody is joined, nothing is tracked; departures complete."""
        queue = self.session.queue
        for channel in self.by_name.values():
            channel.joined = False
            channel.parting = None
            channel.members = None
            for seat in channel.seats:
                queue.disable(seat)
        self.tracked = 0
        leaving, self._leaving = self._leaving, None
        if leaving:
            for line in list(leaving.values()):
                if line.on_sent is not None:
                    line.on_sent()

    def schedule_rejoin(self, channel: Channel, delay: float) -> None:
        channel.cancel_timer()

        def rejoin() -> None:
            channel.timer = None
            if channel.seats and not channel.joined and self.by_name.get(self.session.fold(channel.name)) is channel:
                self._rejoin_now(channel)

        channel.timer = gevent.spawn_later(delay, rejoin)

    def rejoin_now(self, channel: Channel) -> None:
        self._rejoin_now(channel)

    def _rejoin_now(self, channel: Channel) -> None:
        session = self.session
        channel.joined = False
        for seat in channel.seats:
            session.queue.disable(seat)
        if session.registered and not channel.failed:
            for seat in channel.seats:
                seat.room.set_state("joining")
            session.send_urgent(join_lines([(channel.name, channel.key())]))

    def _joined(self, seat: Seat) -> None:
        room = seat.room
        room.set_state("joined")
        room.emit("joined", nick=self.session.nick, channel=room.spec.channel)  # type: ignore[union-attr]
        self.session.queue.enable(seat)

    # ------------------------------------------------------------------------ member tracking
    def _track(self, channel: Channel, nick: str) -> None:
        members = channel.members
        if members is None:
            members = channel.members = set()
        elif nick in members:
            return
        if len(members) >= MAX_MEMBERS or self.tracked >= MAX_MEMBERS_PER_CONNECTION:
            self._untracked(channel, 1)
            return
        members.add(nick)
        self.tracked += 1

    def _untrack(self, channel: Channel, nick: str) -> bool:
        members = channel.members
        if members and nick in members:
            members.discard(nick)
            self.tracked -= 1
            return True
        return False

    def _still_tracked(self, folded: str) -> bool:
        """True while ``folded`` is a member of one of our channels."""
        return any(channel.members and folded in channel.members for channel in self.by_name.values())

    def _left_channel(self, folded: str) -> None:
        """``folded`` left one of our channels: gone from all of them, it is no longer known."""
        identity = self.session.identity
        if identity is not None and identity.accounts and not self._still_tracked(folded):
            identity.forget(folded)

    def rekey(self) -> None:
        """The server named its case mapping after the channels were keyed (``irc_limits.rekey``)."""
        rekey(self, Channel)

    def _untracked(self, channel: Channel, n: int) -> None:
        self.session.counters["members_untracked"] += n
        _throttled.warning(
            "members " + self.session.label,
            "room %s: %s on %s has more members than are tracked (%d per channel, %d per connection); "
            "QUIT and NICK of the others are not reported",
            channel.seats[0].room.id if channel.seats else "-", channel.name, self.session.label,
            MAX_MEMBERS, MAX_MEMBERS_PER_CONNECTION)

    # ---------------------------------------------------------------------------- server lines
    def channel(self, name: str) -> Optional[Channel]:
        """The channel of ours called ``name`` (as the server folds names), while a room is on it."""
        return self._channel(name)

    def _channel(self, name: str) -> Optional[Channel]:
        channel = self.by_name.get(self.session.fold(name))
        return channel if channel is not None and channel.seats else None

    def on_join(self, msg: Message) -> None:
        nick = msg.nick
        if nick is None or not msg.params:
            return
        me = self.session.is_me(nick)
        for name in msg.params[0].split(","):
            channel = self._channel(name)
            if channel is None:
                continue
            if me:
                self.session.saw_own_source(msg.source or "", nick)
                channel.joined = True
                if channel.members:
                    self.tracked -= len(channel.members)
                channel.members = None  # NAMES follows
                channel.backoff = None
                for seat in channel.seats:
                    self._joined(seat)
            else:
                folded = self.session.fold(nick)
                self._track(channel, folded)
                identity = self.session.identity
                if identity is None:
                    account = None
                else:
                    account = identity.joined(folded, msg, bool(channel.members) and folded in channel.members)
                for seat in channel.seats:
                    seat.room.emit("user_joined", nick=nick, account=account)

    def on_namreply(self, msg: Message) -> None:
        params = msg.params
        if len(params) < 4:
            return
        channel = self._channel(params[2])
        if channel is None:
            return
        names = params[3].split(" ")
        space = max(0, min(MAX_MEMBERS - len(channel.members or ()), MAX_MEMBERS_PER_CONNECTION - self.tracked))
        if len(names) > space:  # at most what still fits is looked at
            self._untracked(channel, len(names) - space)
            names = names[:space]
        me = self.session.folded_nick
        fold = self.session.fold
        for name in names:
            if name:
                folded = fold(name.lstrip(_MEMBER_PREFIXES))
                if folded != me:  # we are in every channel we track: never a QUIT or NICK to report
                    self._track(channel, folded)

    def on_part(self, msg: Message) -> None:
        nick = msg.nick
        if nick is None or not msg.params:
            return
        channel = self._channel(msg.params[0])
        if channel is None:
            return
        if self.session.is_me(nick):
            if channel.parting is None:  # parted by someone else's doing (e.g. a server admin)
                channel.joined = False
                for seat in channel.seats:
                    self.session.queue.disable(seat)
                self.schedule_rejoin(channel, self.session.settings.rejoin_delay)
            return
        folded = self.session.fold(nick)
        self._untrack(channel, folded)
        self._left_channel(folded)
        reason = msg.params[1] if len(msg.params) > 1 else ""
        for seat in channel.seats:
            seat.room.emit("user_left", nick=nick, reason=reason, how="part")

    def on_kick(self, msg: Message) -> None:
        params = msg.params
        if len(params) < 2:
            return
        channel = self._channel(params[0])
        if channel is None:
            return
        by = msg.nick
        reason = params[2] if len(params) > 2 else ""
        if self.session.is_me(params[1]):
            channel.joined = False
            for seat in channel.seats:
                room = seat.room
                self.session.queue.disable(seat)
                log.warning("room %s: kicked by %s (%s)", room.id, by, reason)
                room.emit("kicked", by=by, reason=reason)
                room.set_state("backoff", error=f"kicked by {by}: {reason}")
            self.schedule_rejoin(channel, self.session.settings.rejoin_delay)
        else:
            folded = self.session.fold(params[1])
            self._untrack(channel, folded)
            self._left_channel(folded)
            for seat in channel.seats:
                seat.room.emit("user_left", nick=params[1], reason=reason, how="kick")

    def on_quit(self, msg: Message) -> None:
        nick = msg.nick
        if nick is None or self.session.is_me(nick):
            return
        folded = self.session.fold(nick)
        identity = self.session.identity
        if identity is not None:
            identity.forget(folded)
        reason = msg.params[0] if msg.params else ""
        for channel in list(self.by_name.values()):
            if self._untrack(channel, folded):
                for seat in channel.seats:
                    seat.room.emit("user_left", nick=nick, reason=reason, how="quit")

    def on_nick(self, msg: Message) -> None:
        """Someone else changed nick (the session handles ours)."""
        nick = msg.nick
        if nick is None or not msg.params:
            return
        fold = self.session.fold
        old, new = fold(nick), fold(msg.params[0])
        for channel in self.by_name.values():
            if self._untrack(channel, old):
                self._track(channel, new)
        identity = self.session.identity
        if identity is not None:
            identity.renamed(old, new)
            if not self._still_tracked(new):
                identity.forget(new)

    def on_account(self, msg: Message) -> None:
        """account-notify: ``:nick!u@h ACCOUNT <account|*>`` (ignored unless it was negotiated)."""
        identity = self.session.identity
        nick = msg.nick
        if identity is None or nick is None:
            return
        folded = self.session.fold(nick)
        identity.on_account(folded, msg, self._still_tracked(folded))

    def on_topic(self, msg: Message) -> None:
        if len(msg.params) >= 2:
            channel = self._channel(msg.params[0])
            if channel is not None:
                for seat in channel.seats:
                    seat.room.emit("topic", text=msg.params[1], by=msg.nick)

    def on_currenttopic(self, msg: Message) -> None:
        if len(msg.params) >= 3:
            channel = self._channel(msg.params[1])
            if channel is not None:
                for seat in channel.seats:
                    seat.room.emit("topic", text=msg.params[2], by=None)

    def on_join_refused(self, msg: Message) -> None:
        params = msg.params
        if len(params) < 2:
            return
        channel = self._channel(params[1])
        if channel is None:
            return
        detail = f"{params[1]}: {params[-1]}"
        settings = self.session.settings
        if channel.backoff is None:
            channel.backoff = Backoff(settings.reconnect_min * 5, settings.reconnect_max)
        delay = channel.backoff.next()
        for seat in channel.seats:
            room = seat.room
            log.warning("room %s: join refused (%s); retrying in %.0fs", room.id, detail, delay)
            room.emit("error", code="join_failed", detail=detail)
            room.set_state("backoff", error=detail)
        self.schedule_rejoin(channel, delay)

    def on_too_many_channels(self, msg: Message) -> None:
        """405: this connection may join no more channels (``irc_limits.too_many_channels``)."""
        too_many_channels(self, msg)

    def give_up(self, seat: Seat) -> None:
        """The seat's room goes on on another connection: it leaves this one without a word."""
        self._remove(seat)

    def on_privmsg(self, nick: str, folded: str, msg: Message) -> None:
        """A line from ``nick`` (folded: ``folded``; not us) to a channel of ours, or privately to us."""
        target, text = msg.params[0], msg.params[1]
        channel = self._channel(target)
        if channel is not None:
            rooms = [seat.room for seat in channel.seats]
            private = False
        elif self.session.is_me(target):
            room = self._dm_room(nick)
            if room is None:
                return
            rooms = [room]
            private = True
        else:  # a channel we are not in, or a STATUSMSG target (@#chan): not for any room
            return
        identity = self.session.identity
        extra = NO_ACCOUNT if identity is None else identity.fields(folded, msg)
        if "\x01" in text:
            for room in rooms:
                _emit_ctcp(room, nick, text, private, extra)
            return
        for room in rooms:
            room.emit("message", **{"from": nick, "text": text, "private": private}, **extra)

    def on_channel_text(self, source: str, nick: str, folded: str, target: str, text: str) -> bool:
        """The hot path of ``on_privmsg`` (a line ``irc_wire.parse_privmsg`` took apart): plain text
        to a channel of ours, its fields encoded once for all the channel's rooms. False, having
        done nothing, for anything else (a DM, CTCP, a channel we are not in): ``on_privmsg`` then."""
        channel = self._channel(target)
        if channel is None or "\x01" in text:
            return False
        identity = self.session.identity
        extra = NO_ACCOUNT if identity is None else identity.fields(
            folded, Message(None, source, "PRIVMSG", [target, text]))
        fields = {"from": nick, "text": text, "private": False, **extra}
        try:
            body = encode_fields(fields)
        except (UnicodeEncodeError, OverflowError, TypeError, ValueError):
            body = None  # each room reports it (``Room.emit``)
        for seat in channel.seats:
            room = seat.room
            emit_body = getattr(room, "emit_body", None)
            if emit_body is None or body is None:
                room.emit("message", **fields)
            else:
                emit_body("message", body)
        return True

    def _dm_room(self, nick: str) -> Optional[RoomLink]:
        """The room a private message goes to: the first room, when every room is of one tenant."""
        if self.shared_across_tenants():
            self.session.counters["dm_dropped"] += 1
            _throttled.warning("dm " + self.session.label,
                               "irc %s: a private message from %s dropped: the connection serves rooms of "
                               "several tenants, so no room may read it", self.session.label, nick)
            return None
        for channel in self.by_name.values():
            if channel.seats:
                return channel.seats[0].room
        return None


def _emit_ctcp(room: RoomLink, nick: str, text: str, private: bool, extra: dict[str, Any]) -> None:
    for part in ctcp.dequote(text):
        if isinstance(part, tuple):
            if part[0] == "ACTION":
                room.emit("action", **{"from": nick, "text": part[1] if len(part) > 1 else "",
                                       "private": private}, **extra)
        elif part:
            room.emit("message", **{"from": nick, "text": part, "private": private}, **extra)
