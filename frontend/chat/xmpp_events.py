"""Incoming XMPP MUC stanzas -> room events, for ``XmppSession`` (a mixin: the session owns the state).

Everything here runs on the asyncio loop greenlet (slixmpp event handlers) and never blocks: it only
updates ``Muc`` records and calls ``RoomLink`` methods. A MUC join is, on the wire: other occupants'
presences, then our self-presence (status 110), then history (none: we ask for ``maxstanzas=0``, and
delayed messages are dropped anyway), then the subject. Occupants seen before the self-presence are the
initial list and are not reported as ``user_joined``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator

from slixmpp import JID

from ..pacing import Backoff
from .base import RoomLink
from .irc_format import nick_candidates

if TYPE_CHECKING:
    from slixmpp.stanza import Message, Presence

log = logging.getLogger("frontend.chat.xmpp")

#: presence error conditions that mean "never try again" (banned) vs. "try another nick"
BANNED = "forbidden"
NICK_CONFLICT = "conflict"


def bare(jid: Any) -> str:
    """The normalised bare JID (lower-cased by slixmpp's stringprep) as a dictionary key."""
    return JID(jid).bare if isinstance(jid, str) else jid.bare


class Muc:
    """One MUC on a session: the room it belongs to and what we know about it."""

    __slots__ = ("room", "jid", "nick", "state", "occupants", "renamed", "topic_seen", "backoff",
                 "timer", "nicks")

    def __init__(self, room: RoomLink, backoff: Backoff) -> None:
        self.room = room
        self.jid: str = bare(room.spec.muc)  # type: ignore[union-attr]
        self.nicks: Iterator[str] = nick_candidates(room.spec.nick)
        self.nick: str = next(self.nicks)
        #: idle (not in the room), joining (presence sent), joined, failed (banned: no retries)
        self.state = "idle"
        self.occupants: set[str] = set()
        self.renamed: set[str] = set()  # new nicks announced by a 303, not reported as joins
        self.topic_seen = False
        self.backoff = backoff
        self.timer: Any = None  # asyncio TimerHandle of a pending rejoin / join timeout

    def restart_nicks(self) -> None:
        self.nicks = nick_candidates(self.room.spec.nick)
        self.nick = next(self.nicks)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def is_delayed(stanza: Any) -> bool:
    """Carries a XEP-0203 delay: history or offline storage, never a live line."""
    return stanza.get_plugin("delay", check=True) is not None


class MucEvents:
    """Stanza handlers; ``XmppSession`` provides the state and the join/leave actions."""

    _mucs: dict[str, Muc]

    # provided by XmppSession
    def _muc_joined(self, muc: Muc, codes: set[int]) -> None: ...
    def _muc_lost(self, muc: Muc) -> None: ...
    def _send_join(self, muc: Muc) -> None: ...
    def _schedule_join(self, muc: Muc, delay: float) -> None: ...
    settings: Any

    # ------------------------------------------------------------------------------- presences
    def _on_muc_presence(self, pr: "Presence") -> None:
        if pr["type"] == "error":
            return
        muc = self._mucs.get(bare(pr["from"]))
        if muc is None or muc.state in ("idle", "failed"):
            return
        nick = pr["from"].resource
        codes = pr["muc"]["status_codes"]
        gone = pr["type"] == "unavailable"
        if 110 in codes or (gone and muc.state == "joined" and nick == muc.nick):
            self._on_self_presence(muc, pr, codes, gone)
            return
        if not gone:
            if nick in muc.occupants:
                return  # a status change
            muc.occupants.add(nick)
            if muc.state == "joined" and nick not in muc.renamed:
                muc.room.emit("user_joined", nick=nick)
            muc.renamed.discard(nick)
            return
        muc.occupants.discard(nick)
        if 303 in codes:  # a nick change: the new nick's presence follows
            muc.renamed.add(pr["muc"]["item_nick"])
            return
        if muc.state != "joined":
            return
        item = pr["muc"]["item"]
        kicked = bool(codes & {301, 307, 321, 322})
        reason = (item["reason"] if kicked else pr["status"]) or ""
        muc.room.emit("user_left", nick=nick, reason=reason, how="kick" if kicked else "part")

    def _on_self_presence(self, muc: Muc, pr: "Presence", codes: set[int], gone: bool) -> None:
        room = muc.room
        if not gone:
            muc.nick = pr["from"].resource or muc.nick
            if muc.state != "joined":
                self._muc_joined(muc, codes)
            return
        if 303 in codes:  # our nick was changed
            muc.nick = pr["muc"]["item_nick"] or muc.nick
            return
        item = pr["muc"]["item"]
        by = item["actor"]["nick"] or None
        reason = item["reason"] or ""
        self._muc_lost(muc)
        if 301 in codes:
            detail = f"{muc.jid}: banned" + (f" by {by}" if by else "") + (f": {reason}" if reason else "")
            log.warning("room %s: %s; not rejoining", room.id, detail)
            muc.state = "failed"
            room.emit("error", code="join_failed", detail=detail)
            room.set_state("failed", error=detail)
            return
        if 307 in codes:
            log.warning("room %s: kicked by %s (%s)", room.id, by, reason)
            room.emit("kicked", by=by, reason=reason)
            room.set_state("backoff", error=f"kicked by {by}: {reason}")
        else:
            why = "the room was destroyed" if pr["muc"].get_plugin("destroy", check=True) else (
                f"removed from the room (status {sorted(codes)})")
            log.warning("room %s: %s; rejoining", room.id, why)
            room.set_state("backoff", error=why)
        self._schedule_join(muc, self.settings.rejoin_delay)

    def _on_presence_error(self, pr: "Presence") -> None:
        muc = self._mucs.get(bare(pr["from"]))
        if muc is None or muc.state != "joining":
            return
        room = muc.room
        condition = pr["error"]["condition"]
        text = pr["error"]["text"]
        muc.cancel_timer()
        if condition == NICK_CONFLICT:
            old, muc.nick = muc.nick, next(muc.nicks)
            log.info("room %s: nick %s is taken in %s, trying %s", room.id, old, muc.jid, muc.nick)
            self._send_join(muc)
            return
        detail = f"{muc.jid}: {condition}" + (f" ({text})" if text else "")
        room.emit("error", code="join_failed", detail=detail)
        if condition == BANNED:
            log.warning("room %s: join refused (%s); not retrying", room.id, detail)
            muc.state = "failed"
            room.set_state("failed", error=detail)
            return
        delay = muc.backoff.next()
        log.warning("room %s: join refused (%s); retrying in %.0fs", room.id, detail, delay)
        muc.state = "idle"
        room.set_state("backoff", error=detail)
        self._schedule_join(muc, delay)

    # -------------------------------------------------------------------------------- messages
    def _on_groupchat_message(self, msg: "Message") -> None:
        muc = self._mucs.get(bare(msg["from"]))
        if muc is None or muc.state != "joined" or is_delayed(msg):
            return
        nick = msg["from"].resource
        if not nick or nick == muc.nick:  # a service announcement, or our own echo
            return
        _emit_text(muc.room, nick, msg["body"], private=False)

    def _on_subject(self, msg: "Message") -> None:
        muc = self._mucs.get(bare(msg["from"]))
        if muc is None or muc.state != "joined":
            return
        text = msg["subject"]
        if not muc.topic_seen:  # the subject sent at join, like IRC's 332
            muc.topic_seen = True
            if text:
                muc.room.emit("topic", text=text, by=None)
            return
        muc.room.emit("topic", text=text, by=msg["from"].resource or None)

    def _on_message(self, msg: "Message") -> None:
        """Private messages through a MUC (type chat/normal from room@service/nick)."""
        if msg["type"] not in ("chat", "normal") or not msg["body"] or is_delayed(msg):
            return
        sender = msg["from"]
        muc = self._mucs.get(bare(sender))
        if muc is None or muc.state != "joined" or not sender.resource or sender.resource == muc.nick:
            return
        _emit_text(muc.room, sender.resource, msg["body"], private=True)


def _emit_text(room: RoomLink, nick: str, body: str, *, private: bool) -> None:
    if body.startswith("/me "):
        room.emit("action", **{"from": nick, "text": body[4:], "private": private})
    else:
        room.emit("message", **{"from": nick, "text": body, "private": private})
