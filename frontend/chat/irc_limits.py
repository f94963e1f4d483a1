"""What a server's limits do to one IRC connection (``irc.IrcSession``) and its channels
(``irc_channels.IrcChannels``): its ISUPPORT applied, a flood disconnect learned from, the rooms past
its channel limit moved to another connection of their identity.

- ``apply_isupport``: a ``005`` line's ``CHANLIMIT``/``MAXCHANNELS`` and ``CASEMAPPING`` (parsed by
  ``irc_isupport``) become the connection's, and the pool's for every later connection to the server;
  a new case mapping re-keys the channels (``rekey``).
- ``learn_flood``: the server disconnects the connection for flooding (``irc_flood``); the bucket it
  had, the lines it wrote and those the server confirmed become the server's limits
  (``flood_memory.tighten``), for every connection to it.
- ``too_many_channels``: a ``405``. The channel's rooms go to another connection of their identity
  (the pool finds or opens it, ``session.other_connection``), with the lines they had queued; where
  none can be had, or the connection is in no channel (the server refuses the channel as anyone's
  first), they fail once with a ``join_failed`` that says why, and the channel is not tried again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..flood_memory import tighten
from .irc_format import folder
from .irc_wire import Message

log = logging.getLogger("frontend.chat.irc")


def cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def apply_isupport(session: Any, msg: Message) -> None:
    """005 on ``session``: the server's channel limit and case mapping."""
    info = session.info
    casemapping = info.casemapping
    if not info.feed(msg.params):
        return
    if session.facts is not None:
        session.facts.put(session.spec.server, info.copy())
    if info.casemapping != casemapping:
        before = session.fold
        session.fold = folder(info.casemapping)
        if session.fold is not before:
            log.info("irc %s: the server compares names as %s", session.label, info.casemapping)
            session.nick = session.nick  # folded again
            session.channels.rekey()


def learn_flood(session: Any, message: str) -> None:
    """``session`` is disconnected for flooding (the server's ``message``): learn from it."""
    memory = session.flood_memory
    server = session.spec.server
    bucket = session.queue.bucket
    if memory is None:
        log.warning("irc %s: disconnected for flooding (flood_learn is off: nothing learned)", session.label)
        return
    written, confirmed, first = session.written
    if session.delivery.mode == "write":  # irc_ack = "write": "delivered" means written, not accepted
        confirmed = 0
    current = None if bucket is None else (bucket.rate, bucket.burst)
    # pacing: more lines than the burst, over longer than a full burst takes to refill
    paced = bucket is not None and written > bucket.burst and bool(first) and (
        time.monotonic() - first > bucket.burst / bucket.rate)
    settings = session.settings
    learned = tighten(current, confirmed=confirmed, paced=paced, start_rate=settings.flood_learn_rate,
                      min_rate=settings.flood_learn_min_rate, previous=memory.get(server, load=False),
                      why=cut(message), now=time.time())
    # a connection that was slowed down reconnects at once: it makes progress at the new rate
    session.retry_soon = current is None or learned.rate < current[0] or learned.burst < current[1]
    log.warning("irc %s: disconnected for flooding (%s) after %d lines, %d confirmed, %s; every connection "
                "to %s now sends %.2f lines/s after a burst of %d (flood disconnect %d of this server)",
                session.label, cut(message, 120), written, confirmed,
                "without flood control" if bucket is None else f"at {bucket.rate:g} lines/s after {bucket.burst:g}",
                server, learned.rate, learned.burst, learned.kills)
    memory.learned(server, learned)


def too_many_channels(channels: Any, msg: Message) -> None:
    """405 on the connection of ``channels``."""
    params = msg.params
    if len(params) < 2:
        return
    channel = channels.channel(params[1])
    if channel is None or channel.joined:
        return
    session = channels.session
    joined = sum(1 for c in channels.by_name.values() if c.joined)
    known = session.info.limit_for(channel.name)
    limit = f"{known[1]} channels" if known is not None else f"{joined} channels (it said so with 405)"
    detail = f"{channel.name}: the server allows one connection {limit}: {params[-1][:200]}"
    if joined:
        channels.full_at = joined if channels.full_at is None else min(channels.full_at, joined)
        moved = _move_away(channels, channel)
        if moved:
            for room, other in moved:
                log.warning("room %s: %s; moved to the connection %s", room.id, detail, other.label)
            return
    detail += ("; no other connection of this identity could be had" if joined else
               "; this connection is in no other channel, so no connection can join it")
    channel.failed = detail
    channel.cancel_timer()
    for seat in channel.seats:
        room = seat.room
        log.warning("room %s: join refused (%s); not retrying", room.id, detail)
        room.emit("error", code="join_failed", detail=detail)
        room.set_state("failed", error=detail)


def _move_away(channels: Any, channel: Any) -> list[tuple[Any, Any]]:
    """Every room of ``channel`` to another connection of its identity, with its queued lines.
    Empty when no other connection could be had (then nothing moved)."""
    moved: list[tuple[Any, Any]] = []
    session = channels.session
    for seat in list(channel.seats):
        room = seat.room
        other = session.other_connection(room)
        if other is None:
            if moved:  # (the first found one: the pool makes one when none has room)
                continue
            return []
        lines = session.queue.remove(seat)
        channels.give_up(seat)
        other.attach(room)
        room.session = other  # the room's commands go there from now on
        other.adopt(room, lines)
        moved.append((room, other))
    return moved


def rekey(channels: Any, make_channel: Any) -> None:
    """The server named its case mapping after ``channels`` were keyed: key them again. Rooms whose
    channels now differ get channels of their own (``make_channel``, joined at once); channels that
    now are one share it."""
    fold = channels.session.fold
    old, channels.by_name = list(channels.by_name.values()), {}
    for channel in old:
        if channel.members:
            channels.tracked -= len(channel.members)
        channel.members = None  # folded the old way; the next NAMES lists them again
        groups: dict[str, list[Any]] = {}
        for seat in channel.seats:
            groups.setdefault(fold(seat.room.spec.channel), []).append(seat)  # type: ignore[union-attr]
        for i, (key, seats) in enumerate(groups.items()):
            target = channels.by_name.get(key)
            if target is None:
                target = channel if i == 0 else make_channel(seats[0].room.spec.channel)  # type: ignore[union-attr]
                channels.by_name[key] = target
                if target is not channel:
                    target.seats = ()
                    channel.seats = tuple(s for s in channel.seats if s not in seats)
                    for seat in seats:
                        seat.place = target
                    target.seats = tuple(seats)
                    if channels.session.registered:
                        channels.rejoin_now(target)
                continue
            if target is not channel:  # merged into a channel keyed before
                channel.seats = tuple(s for s in channel.seats if s not in seats)
                for seat in seats:
                    seat.place = target
                target.seats += tuple(seats)
        if not channel.seats:
            channel.cancel_timer()
