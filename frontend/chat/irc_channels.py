"""The channels on one IRC connection: which room each one is, who is in it, joins and rejoins, and
the server lines about them turned into room events.

Owned by an ``IrcConnection`` (composition): the connection parses lines and hands the channel ones
here; this class never touches the socket, it queues lines through the connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent
from irc import ctcp
from irc.client import NickMask, is_channel

from ..pacing import Backoff
from .base import RoomLink
from .irc_format import fold, join_lines, reason_line
from .sendqueue import OutLine, report_drop, report_unsent

if TYPE_CHECKING:
    from .irc import IrcConnection

log = logging.getLogger(__name__)


class IrcChannels:
    """Rooms by folded channel name, their membership and their join state."""

    def __init__(self, conn: "IrcConnection") -> None:
        self.conn = conn
        self.rooms: dict[str, RoomLink] = {}  # folded channel -> room
        self.joined: set[str] = set()
        self._members: dict[str, set[str]] = {}  # folded channel -> folded nicks
        self._join_backoff: dict[str, Backoff] = {}
        self._timers: dict[str, gevent.Greenlet] = {}
        self._parting: dict[str, OutLine] = {}

    # ------------------------------------------------------------------------ rooms come and go
    def attach(self, room: RoomLink) -> None:
        key = fold(room.spec.channel)  # type: ignore[union-attr]
        self.rooms[key] = room
        self._members[key] = set()
        if self.conn.registered:
            room.set_state("joining")
            self.conn.send_urgent(join_lines([(room.spec.channel, room.spec.key)]))  # type: ignore[union-attr]
        else:
            room.set_state("connecting")

    def detach(self, room: RoomLink, reason: str) -> None:
        """PART after the room's queued lines went out (or at once when not in the channel)."""
        key = fold(room.spec.channel)  # type: ignore[union-attr]
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.kill(block=False)
        if key in self.joined and self.conn.connected:
            line = reason_line(f"PART {room.spec.channel}", reason)  # type: ignore[union-attr]
            part = OutLine(line, on_sent=lambda: self.forget(room, reason, key))
            self._parting[key] = part
            self.conn.queue.put(key, part)
        else:
            self.forget(room, reason, key)

    def forget(self, room: RoomLink, reason: str, key: str) -> None:
        """The room is gone from this connection: unsent lines are reported, ``parted`` emitted."""
        if self.rooms.get(key) is not room:
            return
        del self.rooms[key]
        self.joined.discard(key)
        self._members.pop(key, None)
        self._parting.pop(key, None)
        self._join_backoff.pop(key, None)
        report_unsent(room, self.conn.queue.remove(key))
        room.set_state("parted")
        room.emit("parted", reason=reason)
        if not self.rooms:
            self.conn.last_room_gone()

    def dropped(self, key: Any, line: OutLine, code: str) -> None:
        """The send queue dropped a line (``stale`` or ``flood_dropped``): tell the room."""
        self.conn.counters["line_drops:" + code] += 1
        room = self.rooms.get(key)
        if room is not None:
            report_drop(room, line, code, self.conn.queue.max_per_room)

    def set_states(self, state: str, error: str | None = None) -> None:
        for room in list(self.rooms.values()):
            room.set_state(state, error=error)

    def join_all(self) -> None:
        """After registration: JOIN every channel, several per line."""
        rooms = list(self.rooms.values())
        for room in rooms:
            room.set_state("joining")
        self.conn.send_urgent(join_lines([(r.spec.channel, r.spec.key) for r in rooms]))  # type: ignore[union-attr]

    def disconnected(self) -> None:
        """The connection dropped: nobody is joined; rooms that were parting are done."""
        for key in self.joined:
            self.conn.queue.disable(key)
        self.joined.clear()
        for key, part in list(self._parting.items()):
            if key in self.rooms and part.on_sent:
                part.on_sent()

    def schedule_rejoin(self, key: str, room: RoomLink, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.kill(block=False)

        def rejoin() -> None:
            self._timers.pop(key, None)
            if self.rooms.get(key) is room and self.conn.registered and key not in self.joined:
                room.set_state("joining")
                self.conn.send_urgent(join_lines([(room.spec.channel, room.spec.key)]))  # type: ignore[union-attr]

        self._timers[key] = gevent.spawn_later(delay, rejoin)

    # ---------------------------------------------------------------------------- server lines
    def _room(self, channel: str) -> tuple[str, RoomLink | None]:
        key = fold(channel)
        return key, self.rooms.get(key)

    def on_join(self, source: NickMask | None, args: list[str]) -> None:
        if source is None or not args:
            return
        for channel in args[0].split(","):
            key, room = self._room(channel)
            if room is None:
                continue
            if self.conn.is_me(source):
                self.conn.userhost_len = len(source) - len(source.nick)
                self.joined.add(key)
                self._members[key] = set()
                self._join_backoff.pop(key, None)
                room.set_state("joined")
                room.emit("joined", nick=self.conn.nick, channel=room.spec.channel)  # type: ignore[union-attr]
                self.conn.queue.enable(key)
            else:
                self._members.setdefault(key, set()).add(fold(source.nick))
                room.emit("user_joined", nick=source.nick)

    def on_names(self, source: Any, args: list[str]) -> None:
        if len(args) >= 4:
            members = self._members.get(fold(args[2]))
            if members is not None:
                members.update(fold(n.lstrip("~&@%+")) for n in args[3].split())

    def on_part(self, source: NickMask | None, args: list[str]) -> None:
        if source is None or not args:
            return
        key, room = self._room(args[0])
        if room is None:
            return
        if self.conn.is_me(source):
            if key not in self._parting:  # parted by someone else's doing (e.g. a server admin)
                self.joined.discard(key)
                self.conn.queue.disable(key)
                self.schedule_rejoin(key, room, self.conn.settings.rejoin_delay)
            return
        self._members.get(key, set()).discard(fold(source.nick))
        room.emit("user_left", nick=source.nick, reason=args[1] if len(args) > 1 else "", how="part")

    def on_kick(self, source: NickMask | None, args: list[str]) -> None:
        if len(args) < 2:
            return
        key, room = self._room(args[0])
        if room is None:
            return
        by = source.nick if source else None
        reason = args[2] if len(args) > 2 else ""
        if fold(args[1]) == fold(self.conn.nick):
            self.joined.discard(key)
            self.conn.queue.disable(key)
            log.warning("room %s: kicked by %s (%s)", room.id, by, reason)
            room.emit("kicked", by=by, reason=reason)
            room.set_state("backoff", error=f"kicked by {by}: {reason}")
            self.schedule_rejoin(key, room, self.conn.settings.rejoin_delay)
        else:
            self._members.get(key, set()).discard(fold(args[1]))
            room.emit("user_left", nick=args[1], reason=reason, how="kick")

    def on_quit(self, source: NickMask | None, args: list[str]) -> None:
        if source is None or self.conn.is_me(source):
            return
        nick = fold(source.nick)
        for key, members in self._members.items():
            if nick in members:
                members.discard(nick)
                room = self.rooms.get(key)
                if room is not None:
                    room.emit("user_left", nick=source.nick, reason=args[0] if args else "", how="quit")

    def on_nick(self, source: NickMask | None, args: list[str]) -> None:
        if source is None or not args or self.conn.is_me(source):
            return
        old, new = fold(source.nick), fold(args[0])
        for members in self._members.values():
            if old in members:
                members.discard(old)
                members.add(new)

    def on_topic(self, source: NickMask | None, args: list[str]) -> None:
        if len(args) >= 2:
            _, room = self._room(args[0])
            if room is not None:
                room.emit("topic", text=args[1], by=source.nick if source else None)

    def on_topic_reply(self, source: Any, args: list[str]) -> None:
        if len(args) >= 3:
            _, room = self._room(args[1])
            if room is not None:
                room.emit("topic", text=args[2], by=None)

    def on_join_refused(self, source: Any, args: list[str]) -> None:
        if len(args) < 2:
            return
        key, room = self._room(args[1])
        if room is None:
            return
        detail = f"{args[1]}: {args[-1]}"
        settings = self.conn.settings
        backoff = self._join_backoff.setdefault(
            key, Backoff(settings.reconnect_min * 5, settings.reconnect_max))
        delay = backoff.next()
        log.warning("room %s: join refused (%s); retrying in %.0fs", room.id, detail, delay)
        room.emit("error", code="join_failed", detail=detail)
        room.set_state("backoff", error=detail)
        self.schedule_rejoin(key, room, delay)

    def on_privmsg(self, nick: str, args: list[str]) -> None:
        """A line from ``nick`` (not us) to a channel of ours, or privately to us."""
        target, text = args[0], args[1]
        if is_channel(target):
            room = self.rooms.get(fold(target))
            private = False
        else:
            room = next(iter(self.rooms.values()), None)  # it arrived through this connection
            private = True
        if room is None:
            return
        if "\x01" in text:
            for part in ctcp.dequote(text):
                if isinstance(part, tuple):
                    if part[0] == "ACTION":
                        room.emit("action", **{"from": nick, "text": part[1] if len(part) > 1 else "",
                                               "private": private})
                elif part:
                    room.emit("message", **{"from": nick, "text": part, "private": private})
            return
        room.emit("message", **{"from": nick, "text": text, "private": private})


HANDLERS = {
    "JOIN": IrcChannels.on_join,
    "353": IrcChannels.on_names,
    "PART": IrcChannels.on_part,
    "KICK": IrcChannels.on_kick,
    "QUIT": IrcChannels.on_quit,
    "NICK": IrcChannels.on_nick,
    "TOPIC": IrcChannels.on_topic,
    "332": IrcChannels.on_topic_reply,
    **{code: IrcChannels.on_join_refused
       for code in ("403", "405", "471", "473", "474", "475", "476", "477", "479", "489")},
}
