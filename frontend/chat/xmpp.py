"""XMPP adapter: one slixmpp client stream, shared by the MUC rooms of one JID (XEP-0045), composed
the same way as the IRC adapter:

    XmppSession    (this file) the stream's lifecycle: connect, keepalive, writer; slixmpp's events
      MucRooms     xmpp_muc.py: the MUCs, the rooms on each, occupants, joins, self-ping, sending
      StanzaEvents xmpp_stanzas.py: presences and messages -> room events
      BoundedClient xmpp_client.py: slixmpp's ClientXMPP, stanza size bounded, no roster
    base.SessionBase  the reconnect loop with backoff, drop reporting, close with drain

Sides (see ``asyncio_bridge``): slixmpp and the stanza handlers run on the asyncio loop greenlet; the
session's ``main`` greenlet connects, keeps the stream alive and reconnects with capped exponential
backoff and full jitter; its ``writer`` greenlet sends the rooms' lines from a fair SendQueue (flood
control only with a spec ``flood``) in batches, one ``asyncio_bridge.call`` per batch. A command is
acked once its stanza was handed to slixmpp's stream. Rooms are joined with ``maxstanzas=0``,
rejoined after a lost stream unless XEP-0198 resumed it, and watched with MUC self-ping (XEP-0410).

A stream that never becomes a session says why, in the reason its rooms hear (``join_failed``) and
see in their state: the certificate (``tls.explain``: self-signed, unknown issuer, expired, wrong
name), STARTTLS required but ``tls`` false or missing while true, authentication, DNS, a refused
connection, a stream error, or how far it got before ``connect_timeout``. Certificates, TLS policy
and credentials are permanent failures (a longer backoff). The TLS context is the spec's
(``tls_ca``, ``tls_verify``), set before each connect.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any, Callable, Iterable, Optional

import gevent
import gevent.event
from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout

from ..config import Settings
from ..counters import Counters
from ..protocol import Command, Spec, XmppSpec
from ..text import xml_text
from . import asyncio_bridge as aio
from . import tls
from .base import ConnectionLost, EventsBuffer, RoomLink, Seat, SessionBase, SpeakGate
from .sendqueue import queue_command
from .xmpp_client import BoundedClient, make_client
from .xmpp_muc import MucRooms
from .xmpp_selfping import install as install_self_ping_fix
from .xmpp_stanzas import StanzaEvents

log = logging.getLogger(__name__)
# slixmpp logs stanzas (SASL payloads included) at DEBUG: keep secrets out of the logs whatever our level
logging.getLogger("slixmpp").setLevel(logging.WARNING)

WRITE_BATCH = 256
#: stream errors that no retry soon can mend (the server does not serve the JID's domain, ...)
PERMANENT_STREAM_ERRORS = frozenset({"host-unknown", "host-gone", "improper-addressing", "not-authorized",
                                     "unsupported-version", "invalid-namespace"})
install_self_ping_fix()  # slixmpp's XEP-0410 scheduler leaks a task per quiet interval otherwise


class XmppSession(SessionBase):
    """One XMPP client stream and the MUC rooms on it."""

    protocol = "xmpp"
    flood_by_default = False
    __slots__ = ("nick", "client", "mucs", "stanzas", "online", "_host", "_up", "_down", "_down_reason",
                 "_permanent", "_auth_condition", "_writer")

    def __init__(self, spec: XmppSpec, *, settings: Settings, counters: Counters,
                 pace_connect: Callable[[str], None], index: int = 0, label: Optional[str] = None,
                 pace_events: Optional[EventsBuffer] = None, gate: Optional[SpeakGate] = None) -> None:
        # pace_events is for readers that may block; slixmpp reads on the shared asyncio loop, which
        # must never block, so an XMPP session does not take it
        self._host = spec.host or JID(spec.jid).domain
        super().__init__(spec, settings=settings, counters=counters, pace_connect=pace_connect,
                         label=label or f"{spec.host or ''}:{spec.port}/{spec.jid}", gate=gate)
        self.nick = spec.nick  # the nick of the last room joined (rooms may use different nicks)
        self.mucs = MucRooms(self)
        self.stanzas = StanzaEvents(self, self.mucs)
        self.online = False
        self._up = gevent.event.Event()
        self._down = gevent.event.Event()
        self._down_reason = ""
        self._permanent = False  # the reason is one a retry soon cannot mend
        self._auth_condition = ""  # the SASL failure's condition, for the reason
        #: made by the main greenlet: the pool calls this constructor and must not be made to wait,
        #: or another room could create a second session for the same key meanwhile
        self.client: BoundedClient = None  # type: ignore[assignment]
        self._start()
        self._writer = gevent.spawn(self._write_loop)
        self._writer.name = f"xmpp-writer {self.label}"

    # ------------------------------------------------------------------ ChatSession (room greenlets)
    @property
    def room_count(self) -> int:
        return len(self.mucs.seats)

    def accepts(self, spec: Spec) -> bool:
        return True  # a stream can be in any number of MUCs

    def attach(self, room: RoomLink) -> None:
        self.mucs.attach(room)
        self._tell_attached(room)  # the stream's attempts fail: why, at once

    def detach(self, room: RoomLink, reason: str, *, silent: bool = False) -> None:
        self.mucs.detach(room, reason, silent)

    def submit(self, room: RoomLink, command: Command) -> None:
        seat = self.mucs.seat_of(room)
        if seat is None:
            room.emit("error", code="bad_command", detail="the room is not attached to this stream",
                      cmd_id=command.cmd_id)
            room.ack(command)
            return
        muc = seat.place
        text = xml_text(command.text or "")
        lines = [line for line in text.split("\n") if line.strip()]
        if command.type == "topic":
            items = [("subject", muc.jid, " ".join(lines))] if lines else []
        else:
            kind = "chat" if command.to else "groupchat"
            prefix = "/me " if command.type == "action" else ""
            items = [(kind, muc.jid, prefix + line, command.to) for line in lines]
        queue_command(self.queue, seat, room, command, items, self.settings.max_line_age)

    def nick_for(self, room: RoomLink) -> str:
        """The nick the room has (rooms sharing a stream may have different nicks)."""
        muc = self.mucs.of(room)
        return muc.nick if muc is not None else self.nick

    def last_room_gone(self) -> None:
        if not self._closing.is_set():
            self._closing.set()  # the pool never hands a closing session a new room
            gevent.spawn(self.close, "parted", 2.0)

    # ------------------------------------------------------------------------- SessionBase hooks
    def _rooms(self) -> Iterable[RoomLink]:
        return self.mucs.rooms()

    def _seat(self, room: RoomLink) -> Optional[Seat]:
        return self.mucs.seat_of(room)

    def _room_state(self, room: RoomLink, state: str, error: Optional[str]) -> None:
        muc = self.mucs.of(room)
        if muc is None or muc.state != "failed":
            room.set_state(state, error=error)

    def _server(self) -> str:
        return self._host

    def _can_drain(self) -> bool:
        return self.online

    def _goodbye(self, reason: str, deadline: float) -> None:
        self._writer.kill(block=False)
        left = max(0.1, deadline - time.monotonic())
        try:
            if self.online:  # close the stream politely: the server sends our unavailable presences
                aio.call(self._disconnect, reason, min(left, 1.0), timeout=left)
                self._down.wait(min(left, 1.5))
        except (gevent.Timeout, Exception) as exc:  # closing anyway
            log.debug("xmpp %s: disconnect: %r", self.label, exc)

    def _closed(self) -> None:
        aio.post(self._dispose)

    def _prepare(self) -> None:
        self.client = aio.call(self._make_client)

    # ------------------------------------------------------------------------------- main greenlet
    def _session_once(self) -> bool:
        """Connect, serve until the stream ends; raise to say why it ended (never returns)."""
        spec: XmppSpec = self.spec  # type: ignore[assignment]
        # here, not on the loop: it may read the tls_ca file, and raises TlsSetupFailed with the reason
        context = tls.client_context(spec.tls_ca, spec.tls_verify) if spec.tls else None
        self._up.clear()
        self._down.clear()
        self._down_reason = ""
        self._permanent = False
        self._auth_condition = ""
        aio.call(self._connect, context)
        timeout = self.settings.connect_timeout
        ready = gevent.wait([self._up, self._down], count=1, timeout=timeout)
        if not ready:
            reason = self._down_reason or self._timeout_reason(timeout)
            aio.call(self._abort)
            self._down.wait(2.0)
            raise ConnectionLost(reason)
        while not self._down.is_set():
            if self._down.wait(self.settings.ping_interval):
                break
            self._keepalive()
        raise ConnectionLost(self._down_reason or "the stream ended", permanent=self._permanent)

    def _timeout_reason(self, timeout: float) -> str:
        """Why ``connect_timeout`` passed without a session, by how far the stream got."""
        stage = self.client.gr_stage
        where = f"{self.spec.host}:{self.spec.port}" if self.spec.host else self._host  # type: ignore[union-attr]
        if stage in ("", "tcp"):
            return (f"the server did not answer the connection within {timeout:g}s "
                    f"({where}: {'no TCP connection' if not stage else 'connected, but no XMPP stream'})")
        if stage == "login":
            return f"the server did not start the session within {timeout:g}s (logged in, no resource bound)"
        return f"the server did not complete the login within {timeout:g}s ({where}: stuck after {stage})"

    def _keepalive(self) -> None:
        """Ping the server; a stream that does not answer within ``ping_timeout`` is dropped."""
        timeout = self.settings.ping_timeout
        try:
            aio.run(lambda: self.client.plugin["xep_0199"].send_ping(self._ping_target(), timeout=timeout),
                    timeout=timeout + 5)
        except IqError:
            pass  # an error reply is a reply
        except (IqTimeout, gevent.Timeout):
            log.warning("xmpp %s: no answer to a ping within %gs; dropping the stream", self.label, timeout)
            self._down_reason = f"no answer to a ping within {timeout:g}s"
            aio.call(self._abort)
            self._down.wait(5.0)
            self._down.set()
        except Exception as exc:  # NotConnectedError and friends: the stream is going down
            log.info("xmpp %s: ping failed: %r", self.label, exc)

    def _ping_target(self) -> str:
        return JID(self.spec.jid).domain  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------ writer greenlet
    def _write_loop(self) -> None:
        queue, gate = self.queue, self.gate
        while True:
            queue.wake.wait()
            queue.wake.clear()
            while True:
                taken, wait = queue.take(WRITE_BATCH) if self.online and gate.open else ([], 0.0)
                if taken:
                    try:
                        unsent = aio.call(self.mucs.send_lines, taken, timeout=30.0)
                    except (gevent.Timeout, Exception) as exc:
                        log.warning("xmpp %s: sending failed: %r", self.label, exc)
                        unsent = list(range(len(taken)))
                    if unsent:
                        queue.put_front([taken[i] for i in unsent])
                    skip = set(unsent)
                    for i, (seat, line) in enumerate(taken):
                        if i in skip:
                            continue
                        if line.command is not None:
                            seat.room.ack(line.command)
                        if line.on_sent is not None:
                            line.on_sent()
                    if unsent:
                        break  # the rooms were disabled meanwhile; wait for a rejoin
                if wait > 0:
                    queue.wake.wait(wait)
                    queue.wake.clear()
                    continue
                if not taken:
                    break
            if self.online and not gate.open and queue.has_ready():
                gevent.wait([queue.wake, gate.opened], count=1)  # the speak gate holds the lines
                queue.wake.set()
                continue
            self._drained.set()

    # ====================================================================== on the asyncio loop
    def _make_client(self) -> BoundedClient:
        client = make_client(self.spec, label=self.label, counters=self.counters,  # type: ignore[arg-type]
                             settings=self.settings, on_too_big=self._on_too_big, on_refused=self._on_refused)
        on = client.add_event_handler
        stanzas, mucs = self.stanzas, self.mucs
        on("session_start", self._on_session_start)
        on("session_resumed", self._on_session_resumed)
        on("disconnected", self._on_disconnected)
        on("connection_failed", self._on_connection_failed)
        on("reconnect_delay", self._on_reconnect_delay)
        on("failed_auth", self._on_auth_refused)
        on("failed_all_auth", self._on_failed_auth)
        on("no_auth", self._on_no_auth)
        on("ssl_invalid_chain", self._on_tls_failed)
        on("stream_error", self._on_stream_error)
        on("groupchat_presence", stanzas.on_muc_presence)
        on("presence_error", stanzas.on_presence_error)
        on("groupchat_message", stanzas.on_groupchat_message)
        on("groupchat_subject", stanzas.on_subject)
        on("message", stanzas.on_message)
        on("muc_ping_changed", mucs.on_muc_ping)
        return client

    def _connect(self, context: Optional[ssl.SSLContext]) -> None:
        spec: XmppSpec = self.spec  # type: ignore[assignment]
        if context is not None:
            self.client.ssl_context = context
        self.client.gr_stage = ""
        self.client.connect(spec.host, spec.port) if spec.host else self.client.connect()

    def _abort(self) -> None:
        self.client.cancel_connection_attempt()
        self.client.abort()

    def _dispose(self) -> None:
        """For good: drop the stream and the client's background task."""
        if self.client is None:
            return
        self._abort()
        sender = getattr(self.client, "_run_out_filters", None)
        if sender is not None:
            sender.cancel()

    def _disconnect(self, reason: str, wait: float) -> None:
        self.client.cancel_connection_attempt()
        if self.client.transport is not None:
            self.client.disconnect(wait=wait, reason=reason)

    def _encrypted(self) -> bool:
        return self.client.gr_encrypted()

    def _fail(self, reason: str, permanent: bool) -> None:
        """The attempt cannot succeed: say why (the first reason stands) and drop the stream (its
        ``disconnected`` ends the attempt; failing that, ``connect_timeout`` does, with this reason)."""
        if not self._down_reason:
            self._down_reason, self._permanent = reason, permanent
        log.info("xmpp %s: %s", self.label, reason)
        self._abort()

    def _on_too_big(self, why: str) -> None:
        self._down_reason = why

    def _on_refused(self, why: str) -> None:
        """The stream features cannot satisfy the spec's TLS policy (``BoundedClient.gr_tls_problem``)."""
        if not self._down_reason:
            self._down_reason, self._permanent = why, True
        log.info("xmpp %s: %s", self.label, why)

    def _on_tls_failed(self, error: Any) -> None:
        """The STARTTLS handshake failed (slixmpp leaves the stream to us once this has a handler)."""
        spec: XmppSpec = self.spec  # type: ignore[assignment]
        if isinstance(error, ssl.SSLError):
            reason, permanent = tls.explain(error, self._tls_name(), ca=spec.tls_ca)
        else:
            reason, permanent = f"the TLS handshake failed ({type(error).__name__})", False
        self._fail(reason, permanent)

    def _tls_name(self) -> str:
        return JID(self.spec.jid).domain  # type: ignore[union-attr]  (slixmpp verifies the JID's domain)

    def _on_session_start(self, _event: Any) -> None:
        if self.spec.tls and not self._encrypted():
            self._fail("the server did not negotiate TLS (the spec requires it)", True)
            return
        log.info("xmpp %s: session started as %s", self.label, self.client.boundjid)
        self.online = True
        self.connected_at = time.monotonic()
        self._up.set()
        for muc in list(self.mucs.by_jid.values()):
            if muc.state != "failed":
                muc.state = "idle"
                muc.restart_nicks()
                self.mucs.send_join(muc)

    def _on_session_resumed(self, _event: Any) -> None:
        log.info("xmpp %s: stream resumed (XEP-0198)", self.label)
        self.online = True
        self.connected_at = time.monotonic()
        self._up.set()
        for muc in list(self.mucs.by_jid.values()):
            if muc.state == "joined":
                self.mucs.joined(muc, set(), resumed=True)
            elif muc.state in ("idle", "joining"):
                self.mucs.send_join(muc)

    def _on_disconnected(self, reason: Any) -> None:
        was_online, self.online = self.online, False
        if not self._down_reason:
            if isinstance(reason, ssl.SSLError) and not was_online:  # a failed STARTTLS handshake ends here first
                self._down_reason, self._permanent = tls.explain(reason, self._tls_name(), ca=self.spec.tls_ca)
            else:
                self._down_reason = f"stream closed ({reason})" if reason else "stream closed"
        self.mucs.disconnected()
        self._down.set()

    def _on_connection_failed(self, error: Any) -> None:
        """One address failed (slixmpp tries each; the last reason stands, ``reconnect_delay`` ends it)."""
        spec: XmppSpec = self.spec  # type: ignore[assignment]
        if isinstance(error, ssl.SSLError):  # direct TLS: the handshake is part of the connect
            reason, permanent = tls.explain(error, self._tls_name(), ca=spec.tls_ca)
        elif isinstance(error, OSError):
            reason, permanent = tls.explain_connect(error, self._host, spec.port, self.settings.connect_timeout)
        else:  # slixmpp's "No DNS record available for <domain>"
            reason, permanent = f"cannot resolve {self._host} (DNS: no address)", False
        self._down_reason, self._permanent = reason, permanent

    def _on_reconnect_delay(self, _delay: Any) -> None:
        """slixmpp tried every address and would retry on its own schedule: we use ours."""
        self.client.cancel_connection_attempt()
        self._down.set()

    def _on_auth_refused(self, failure: Any) -> None:
        """One SASL mechanism was refused; slixmpp tries the next (``failed_all_auth`` when none is left)."""
        try:
            condition = failure["condition"]
        except Exception:  # a malformed failure stanza: no condition to tell
            condition = ""
        if isinstance(condition, str) and condition.replace("-", "").isalpha() and len(condition) <= 64:
            self._auth_condition = condition

    def _on_failed_auth(self, _event: Any) -> None:
        condition = self._auth_condition
        self._down_reason = "authentication failed" + (f" ({condition})" if condition else "")
        self._permanent = True

    def _on_no_auth(self, _event: Any) -> None:
        """No mechanism was even tried: none the server offered is one slixmpp may use here."""
        offered = sorted(str(m)[:40] for m in list(self.client.plugin["feature_mechanisms"].mech_list)[:10])
        self._down_reason = ("authentication failed: the server offers no login mechanism greenroom can use "
                             f"(offered: {', '.join(offered) or 'none'})")
        self._permanent = True

    def _on_stream_error(self, error: Any) -> None:
        condition = str(error["condition"] or "")[:64]
        text = " ".join(str(error["text"] or "").split())[:200]
        log.warning("xmpp %s: stream error %s", self.label, condition)
        if not self._down_reason:
            self._down_reason = f"the server ended the stream: {condition}" + (f" ({text})" if text else "")
            self._permanent = condition in PERMANENT_STREAM_ERRORS
