"""MUC membership on an XMPP stream, for ``XmppSession`` (a mixin: the session owns the state).

Runs on the asyncio loop greenlet: joining (``maxstanzas=0``: no history), nick fallbacks, rejoin
timers (asyncio ``call_later``), the "instant room" configuration of rooms we create, MUC self-ping
(XEP-0410) watching for rooms that silently dropped us, and turning queued lines into stanzas.
"""

from __future__ import annotations

import logging
from typing import Any

from slixmpp import JID

from .sendqueue import OutLine
from .xmpp_events import Muc, MucEvents

log = logging.getLogger("frontend.chat.xmpp")


class MucJoins(MucEvents):
    """Join, leave, watch and write to MUC rooms."""

    client: Any
    queue: Any
    nick: str
    _online: bool

    def _send_join(self, muc: Muc) -> None:
        if not self._online or self._mucs.get(muc.jid) is not muc or muc.state == "failed":
            return
        muc.cancel_timer()
        muc.state = "joining"
        muc.occupants.clear()
        muc.renamed.clear()
        muc.topic_seen = False
        muc.room.set_state("joining")
        stanza = self.client.plugin["xep_0045"].make_join_stanza(
            JID(muc.jid), muc.nick, password=muc.room.spec.room_password, maxstanzas=0)  # type: ignore[union-attr]
        stanza.send()
        muc.timer = self.client.loop.call_later(self.settings.connect_timeout, self._join_timed_out, muc)

    def _join_timed_out(self, muc: Muc) -> None:
        muc.timer = None
        if muc.state == "joining" and self._mucs.get(muc.jid) is muc:
            delay = muc.backoff.next()
            detail = f"{muc.jid}: no answer to the join within {self.settings.connect_timeout:g}s"
            log.warning("room %s: %s; retrying in %.0fs", muc.room.id, detail, delay)
            muc.state = "idle"
            muc.room.set_state("backoff", error=detail)
            self._schedule_join(muc, delay)

    def _schedule_join(self, muc: Muc, delay: float) -> None:
        muc.cancel_timer()
        muc.timer = self.client.loop.call_later(delay, self._send_join, muc)

    def _send_leave(self, jid: str, nick: str, reason: str) -> None:
        if self._online:
            self.client.send_presence(pto=f"{jid}/{nick}", ptype="unavailable", pstatus=reason or None)

    def _muc_joined(self, muc: Muc, codes: set[int], resumed: bool = False) -> None:
        muc.cancel_timer()
        muc.state = "joined"
        muc.backoff.reset()
        self.nick = muc.nick
        self._self_ping(muc.jid, muc.nick, True)
        if 201 not in codes:
            self._announce(muc, resumed)
            return
        # We created the room. Servers keep a new room locked (closed to others) until its owner
        # configures it: accept the defaults ("instant room"), then say we are in.
        form = self.client.plugin["xep_0004"].make_form(ftype="submit")
        task = self.client.loop.create_task(self.client.plugin["xep_0045"].set_room_config(
            muc.jid, form, timeout=self.settings.connect_timeout))

        def configured(done: Any) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.warning("room %s: configuring the new room failed: %r", muc.room.id, done.exception())
            self._announce(muc, resumed)

        task.add_done_callback(configured)

    def _announce(self, muc: Muc, resumed: bool) -> None:
        """Tell the room it is in, and let its queued lines go."""
        if muc.state != "joined" or self._mucs.get(muc.jid) is not muc:
            return
        room = muc.room
        if not resumed:
            log.info("room %s: joined %s as %s", room.id, muc.jid, muc.nick)
        room.set_state("joined")
        room.emit("joined", nick=muc.nick, channel=room.spec.muc)  # type: ignore[union-attr]
        self.queue.enable(muc.jid)

    def _muc_lost(self, muc: Muc) -> None:
        """We are out of the MUC (kicked, banned, removed, or the self-ping says so)."""
        muc.state = "idle"
        self.queue.disable(muc.jid)
        self._self_ping(muc.jid, muc.nick, False)

    def _self_ping(self, jid: str, nick: str, enable: bool) -> None:
        plugin = self.client.plugin["xep_0410"]
        target = JID(f"{jid}/{nick}")
        if enable:
            plugin.enable_self_ping(target, interval=self.settings.ping_interval,
                                    timeout=self.settings.ping_timeout)
        else:
            plugin.disable_self_ping(target)

    def _on_muc_ping(self, change: dict) -> None:
        from slixmpp.plugins.xep_0410 import PingStatus

        target = change["key"][0]
        muc = self._mucs.get(target.bare)
        if change["result"] != PingStatus.DISCONNECTED or muc is None or muc.state != "joined":
            return
        if target.resource != muc.nick:
            return
        log.warning("room %s: self-ping says we are no longer in %s; rejoining", muc.room.id, muc.jid)
        self._muc_lost(muc)
        muc.room.set_state("backoff", error="dropped from the room (self-ping)")
        self._send_join(muc)

    # ------------------------------------------------------------------------------ sending lines
    def _send_lines(self, taken: list[tuple[Any, OutLine]]) -> list[int]:
        """Hand the taken lines' stanzas to the stream; return the indexes that could not be sent."""
        unsent: list[int] = []
        client = self.client
        for i, (key, line) in enumerate(taken):
            muc = self._mucs.get(key)
            if not self._online or muc is None or muc.state != "joined":
                if muc is not None:
                    unsent.append(i)  # a forgotten room's line is simply dropped
                continue
            kind, jid = line.data[0], line.data[1]
            if kind == "groupchat":
                client.send_message(mto=JID(jid), mbody=line.data[2], mtype="groupchat")
            elif kind == "chat":
                msg = client.make_message(mto=JID(f"{jid}/{line.data[3]}"), mbody=line.data[2], mtype="chat")
                msg.enable("muc")  # XEP-0045 7.5: <x xmlns='...muc#user'/> marks a MUC private message
                msg.send()
            elif kind == "subject":
                client.make_message(mto=JID(jid), msubject=line.data[2], mtype="groupchat").send()
            elif kind == "part":
                client.send_presence(pto=f"{jid}/{muc.nick}", ptype="unavailable", pstatus=line.data[2] or None)
        return unsent
