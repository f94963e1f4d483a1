"""Incoming XMPP MUC stanzas -> room events, for an ``XmppSession`` (composition: ``MucRooms`` holds
the state, this part reads stanzas and tells the rooms).

Everything here runs on the asyncio loop greenlet (slixmpp event handlers) and never blocks: it only
updates ``Muc`` records and calls ``RoomLink`` methods. A MUC join is, on the wire: other occupants'
presences, then our self-presence (status 110), then history (none: we ask for ``maxstanzas=0``, and
delayed messages are dropped anyway), then the subject. Occupants seen before the self-presence are the
initial list and are not reported as ``user_joined``. Every room on a MUC gets its events; a private
message through a MUC reaches its first room only when all its rooms are of one tenant.

Who an occupant is: where the room shows occupants' real JIDs (non-anonymous rooms, or to a
moderator), their presence carries ``<item jid=...>``; its bare JID is kept per occupant (for the
occupants tracked only, forgotten when they leave) and every ``message``, ``action`` and
``user_joined`` of theirs carries it as ``jid`` (``null`` where the room hides it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from ..logs import Throttle
from .base import RoomLink, single_tenant
from .xmpp_muc import Muc, MucRooms, bare

if TYPE_CHECKING:
    from slixmpp.stanza import Message, Presence


class StanzaHost(Protocol):
    """What the stanza handlers use of the XMPP session (``xmpp.XmppSession``)."""

    label: str
    settings: Any
    counters: Any

log = logging.getLogger("frontend.chat.xmpp")
_throttled = Throttle(log, 60.0)

#: presence error conditions that mean "never try again" (banned) vs. "try another nick"
BANNED = "forbidden"
NICK_CONFLICT = "conflict"


def is_delayed(stanza: Any) -> bool:
    """Carries a XEP-0203 delay: history or offline storage, never a live line."""
    return stanza.get_plugin("delay", check=True) is not None


class StanzaEvents:
    """slixmpp event handlers of one session's MUC stanzas."""

    __slots__ = ("session", "mucs", "_jids")

    def __init__(self, session: StanzaHost, mucs: MucRooms) -> None:
        self.session = session
        self.mucs = mucs
        #: MUC bare JID -> occupant nick -> the occupant's real bare JID, where the room shows it
        self._jids: dict[str, dict[str, str]] = {}

    def _note_jid(self, muc: Muc, nick: str, pr: "Presence") -> str | None:
        """The real bare JID an occupant's presence shows (None: hidden), kept for their lines."""
        jid = _real_jid(pr)
        known = self._jids.get(muc.jid)
        if jid is None:
            if known:
                known.pop(nick, None)
            return None
        if known is None:
            known = self._jids[muc.jid] = {}
        known[nick] = jid
        return jid

    def jid_of(self, muc: Muc, nick: str) -> str | None:
        known = self._jids.get(muc.jid)
        return known.get(nick) if known else None

    def _muc(self, jid: Any) -> Muc | None:
        muc = self.mucs.by_jid.get(bare(jid))
        return muc if muc is not None and muc.seats else None

    # ------------------------------------------------------------------------------- presences
    def on_muc_presence(self, pr: "Presence") -> None:
        if pr["type"] == "error":
            return
        muc = self._muc(pr["from"])
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
                self._note_jid(muc, nick, pr)  # a status change (a new role may show the JID)
                return
            if not self.mucs.track(muc, nick):
                self._forget_jid(muc, nick)
                return  # past the bounds: a join and a status change look alike, neither is told
            jid = self._note_jid(muc, nick, pr)
            if muc.state == "joined" and nick not in muc.renamed:
                for room in muc.rooms:
                    room.emit("user_joined", nick=nick, jid=jid)
            muc.renamed.discard(nick)
            return
        self.mucs.untrack(muc, nick)
        self._forget_jid(muc, nick)
        if 303 in codes:  # a nick change: the new nick's presence follows
            self.mucs.renamed(muc, pr["muc"]["item_nick"])
            return
        if muc.state != "joined":
            return
        item = pr["muc"]["item"]
        kicked = bool(codes & {301, 307, 321, 322})
        reason = (item["reason"] if kicked else pr["status"]) or ""
        for room in muc.rooms:
            room.emit("user_left", nick=nick, reason=reason, how="kick" if kicked else "part")

    def _on_self_presence(self, muc: Muc, pr: "Presence", codes: set[int], gone: bool) -> None:
        if not gone:
            muc.nick = pr["from"].resource or muc.nick
            if muc.state != "joined":
                self.mucs.joined(muc, codes)
            return
        if 303 in codes:  # our nick was changed
            muc.nick = pr["muc"]["item_nick"] or muc.nick
            return
        item = pr["muc"]["item"]
        by = item["actor"]["nick"] or None
        reason = item["reason"] or ""
        self.mucs.lost(muc)
        self._jids.pop(muc.jid, None)
        if 301 in codes:
            detail = f"{muc.jid}: banned" + (f" by {by}" if by else "") + (f": {reason}" if reason else "")
            muc.state = "failed"
            muc.failure = detail
            for room in muc.rooms:
                log.warning("room %s: %s; not rejoining", room.id, detail)
                room.emit("error", code="join_failed", detail=detail)
                room.set_state("failed", error=detail)
            return
        if 307 in codes:
            for room in muc.rooms:
                log.warning("room %s: kicked by %s (%s)", room.id, by, reason)
                room.emit("kicked", by=by, reason=reason)
                room.set_state("backoff", error=f"kicked by {by}: {reason}")
        else:
            why = "the room was destroyed" if pr["muc"].get_plugin("destroy", check=True) else (
                f"removed from the room (status {sorted(codes)})")
            for room in muc.rooms:
                log.warning("room %s: %s; rejoining", room.id, why)
                room.set_state("backoff", error=why)
        self.mucs.schedule_join(muc, self.session.settings.rejoin_delay)

    def on_presence_error(self, pr: "Presence") -> None:
        muc = self._muc(pr["from"])
        if muc is None or muc.state != "joining":
            return
        condition = pr["error"]["condition"]
        text = pr["error"]["text"]
        muc.cancel_timer()
        if condition == NICK_CONFLICT:
            old, muc.nick = muc.nick, next(muc.nicks)
            log.info("room %s: nick %s is taken in %s, trying %s", muc.seats[0].room.id, old, muc.jid, muc.nick)
            self.mucs.send_join(muc)
            return
        detail = f"{muc.jid}: {condition}" + (f" ({text[:300]})" if text else "")
        for room in muc.rooms:
            room.emit("error", code="join_failed", detail=detail)
        if condition == BANNED:
            muc.state = "failed"
            muc.failure = detail
            for room in muc.rooms:
                log.warning("room %s: join refused (%s); not retrying", room.id, detail)
                room.set_state("failed", error=detail)
            return
        delay = muc.backoff.next()
        muc.state = "idle"
        for room in muc.rooms:
            log.warning("room %s: join refused (%s); retrying in %.0fs", room.id, detail, delay)
            room.set_state("backoff", error=detail)
        self.mucs.schedule_join(muc, delay)

    # -------------------------------------------------------------------------------- messages
    def on_groupchat_message(self, msg: "Message") -> None:
        muc = self._muc(msg["from"])
        if muc is None or muc.state != "joined" or is_delayed(msg):
            return
        nick = msg["from"].resource
        if not nick or nick == muc.nick:  # a service announcement, or our own echo
            return
        body = msg["body"]
        jid = self.jid_of(muc, nick)
        for room in muc.rooms:
            _emit_text(room, nick, body, private=False, jid=jid)

    def on_subject(self, msg: "Message") -> None:
        muc = self._muc(msg["from"])
        if muc is None or muc.state != "joined":
            return
        text = msg["subject"]
        if not muc.topic_seen:  # the subject sent at join, like IRC's 332
            muc.topic_seen = True
            if text:
                for room in muc.rooms:
                    room.emit("topic", text=text, by=None)
            return
        by = msg["from"].resource or None
        for room in muc.rooms:
            room.emit("topic", text=text, by=by)

    def on_message(self, msg: "Message") -> None:
        """Private messages through a MUC (type chat/normal from room@service/nick)."""
        if msg["type"] not in ("chat", "normal") or not msg["body"] or is_delayed(msg):
            return
        sender = msg["from"]
        muc = self._muc(sender)
        if muc is None or muc.state != "joined" or not sender.resource or sender.resource == muc.nick:
            return
        if not single_tenant(muc.seats):
            self.session.counters["dm_dropped"] += 1
            _throttled.warning("dm " + self.session.label,
                               "xmpp %s: a private message from %s/%s dropped: the MUC serves rooms of "
                               "several tenants, so no room may read it", self.session.label, muc.jid,
                               sender.resource)
            return
        _emit_text(muc.seats[0].room, sender.resource, msg["body"], private=True,
                   jid=self.jid_of(muc, sender.resource))

    def _forget_jid(self, muc: Muc, nick: str) -> None:
        known = self._jids.get(muc.jid)
        if known:
            known.pop(nick, None)


#: the longest real JID carried in an event (RFC 7622: 1023 bytes for the local part and the domain)
MAX_JID = 2047


def _real_jid(pr: "Presence") -> str | None:
    """The bare JID in a MUC presence's ``<item jid=...>`` (None: none, or not a valid JID)."""
    try:
        jid = pr["muc"]["item"]["jid"]
    except Exception:  # slixmpp raises InvalidJID (and others) for a malformed attribute
        return None
    if not jid:
        return None
    found = jid.bare
    if not found or len(found) > MAX_JID or not found.isprintable():
        return None
    return found


def _emit_text(room: RoomLink, nick: str, body: str, *, private: bool, jid: str | None = None) -> None:
    if body.startswith("/me "):
        room.emit("action", **{"from": nick, "text": body[4:], "private": private, "jid": jid})
    else:
        room.emit("message", **{"from": nick, "text": body, "private": private, "jid": jid})
