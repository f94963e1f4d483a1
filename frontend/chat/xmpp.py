"""XMPP adapter: one slixmpp client stream, shared by the MUC rooms of one JID (XEP-0045).

Sides (see ``aio`` for the bridge): slixmpp and our stanza handlers (``xmpp_events``) run on the asyncio
loop greenlet; the session's ``main`` greenlet connects, keeps the stream alive and reconnects with
capped exponential backoff and full jitter; its ``writer`` greenlet sends the rooms' lines from a fair
SendQueue (flood control only with a spec ``flood``) in batches, one ``aio.call`` per batch. A command
is acked once its stanza was handed to slixmpp's stream. Rooms are joined with ``maxstanzas=0``,
rejoined after a lost stream unless XEP-0198 resumed it, and watched with MUC self-ping (XEP-0410).
MUC membership lives in ``xmpp_muc``, stanza -> event translation in ``xmpp_events``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import ssl
import time
from typing import Any, Callable

import gevent
import gevent.event
import slixmpp
from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout

from ..config import Settings
from ..counters import Counters
from ..pacing import Backoff, TokenBucket
from ..protocol import Command, XmppSpec
from ..text import xml_text
from . import aio
from .base import RoomLink
from .sendqueue import OutLine, SendQueue, queue_command, report_drop, report_unsent
from .xmpp_events import Muc, bare
from .xmpp_muc import MucJoins
from .xmpp_selfping import install as install_self_ping_fix

log = logging.getLogger(__name__)
# slixmpp logs stanzas (SASL payloads included) at DEBUG: keep secrets out of the logs whatever our level
logging.getLogger("slixmpp").setLevel(logging.WARNING)

WRITE_BATCH = 256
PLUGINS = ("xep_0030", "xep_0004", "xep_0045", "xep_0199", "xep_0203", "xep_0198", "xep_0410")
install_self_ping_fix()  # slixmpp's XEP-0410 scheduler leaks a task per quiet interval otherwise


class XmppSession(MucJoins):
    """One XMPP client stream and the MUC rooms on it."""

    protocol = "xmpp"

    def __init__(self, spec: XmppSpec, *, settings: Settings, counters: Counters,
                 pace_connect: Callable[[str], None], label: str) -> None:
        self.spec = spec
        self.settings = settings
        self.counters = counters
        self.label = label  # host:port/jid, never a secret
        self.nick = spec.nick  # the nick of the last room joined (rooms may use different nicks)
        self._pace_connect = pace_connect
        self._server = spec.host or JID(spec.jid).domain
        self._mucs: dict[str, Muc] = {}  # bare MUC JID -> Muc
        flood = spec.flood
        bucket = TokenBucket(flood.rate, flood.burst) if flood not in (None, False, True) else None
        self.queue = SendQueue(bucket, settings.room_queue_max, self._dropped)  # type: ignore[arg-type]
        self._online = False
        self._up = gevent.event.Event()
        self._down = gevent.event.Event()
        self._down_reason = ""
        self._login_failed = False
        self._closing = gevent.event.Event()
        self._drained = gevent.event.Event()
        self.connected_at = 0.0
        #: made by the main greenlet: the pool calls this constructor and must not be made to wait,
        #: or another room could create a second session for the same key meanwhile
        self.client: slixmpp.ClientXMPP = None  # type: ignore[assignment]
        self._main = gevent.spawn(self._run)
        self._main.name = f"xmpp {label}"
        self._writer = gevent.spawn(self._write_loop)
        self._writer.name = f"xmpp-writer {label}"

    # ------------------------------------------------------------------ ChatSession (room greenlets)
    @property
    def room_count(self) -> int:
        return len(self._mucs)

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def idle(self) -> bool:
        return not self._mucs

    def attach(self, room: RoomLink) -> None:
        muc = Muc(room, Backoff(self.settings.reconnect_min * 5, self.settings.reconnect_max))
        old = self._mucs.get(muc.jid)
        if old is not None and old.room is not room:
            log.warning("room %s: takes %s over from room %s on %s", room.id, muc.jid, old.room.id, self.label)
            self._forget(old, "replaced")
        self._mucs[muc.jid] = muc
        if self._online:
            room.set_state("joining")
            aio.post(self._send_join, muc)
        else:
            room.set_state("connecting")

    def detach(self, room: RoomLink, reason: str) -> None:
        muc = self._find(room)
        if muc is None:
            return
        if muc.state == "joined" and self._online:
            # leave after the lines the room already submitted
            self.queue.put(muc.jid, OutLine(("part", muc.jid, reason), on_sent=lambda: self._forget(muc, reason)))
        else:
            if muc.state == "joining" and self._online:
                aio.post(self._send_leave, muc.jid, muc.nick, reason)
            self._forget(muc, reason)

    def submit(self, room: RoomLink, command: Command) -> None:
        muc = self._find(room)
        if muc is None:
            return
        text = xml_text(command.text or "")
        lines = [line for line in text.split("\n") if line.strip()]
        if command.type == "topic":
            items = [("subject", muc.jid, " ".join(lines))] if lines else []
        else:
            kind = "chat" if command.to else "groupchat"
            prefix = "/me " if command.type == "action" else ""
            items = [(kind, muc.jid, prefix + line, command.to) for line in lines]
        queue_command(self.queue, muc.jid, room, command, items, self.settings.max_line_age)

    def close(self, reason: str, timeout: float = 2.0) -> None:
        """Send what joined rooms queued (within ``timeout``), close the stream, and stop."""
        deadline = time.monotonic() + timeout
        self._closing.set()
        if self._online:
            while self.queue.has_ready() and time.monotonic() < deadline:
                self._drained.clear()
                self.queue.wake.set()
                self._drained.wait(max(0.0, deadline - time.monotonic()))
        self._writer.kill(block=False)
        left = max(0.1, deadline - time.monotonic())
        try:
            if self._online:  # close the stream politely: the server sends our unavailable presences
                aio.call(self._disconnect, reason, min(left, 1.0), timeout=left)
                self._down.wait(min(left, 1.5))
        except (gevent.Timeout, Exception) as exc:  # closing anyway
            log.debug("xmpp %s: disconnect: %r", self.label, exc)
        self._main.kill(block=True, timeout=1)
        aio.post(self._dispose)

    def nick_for(self, room: RoomLink) -> str:
        """The nick the room has (rooms sharing a stream may have different nicks)."""
        muc = self._find(room)
        return muc.nick if muc is not None else self.nick

    def depth(self, room: RoomLink) -> int:
        muc = self._find(room)
        return self.queue.depth(muc.jid) if muc is not None else 0

    # ------------------------------------------------------------------------------- bookkeeping
    def _find(self, room: RoomLink) -> Muc | None:
        muc = self._mucs.get(bare(room.spec.muc))  # type: ignore[union-attr]
        return muc if muc is not None and muc.room is room else None

    def _forget(self, muc: Muc, reason: str) -> None:
        if self._mucs.get(muc.jid) is not muc:
            return
        del self._mucs[muc.jid]
        muc.cancel_timer()
        if muc.state == "joined":
            aio.post(self._self_ping, muc.jid, muc.nick, False)
        muc.state = "idle"
        room = muc.room
        report_unsent(room, self.queue.remove(muc.jid))
        room.set_state("parted")
        room.emit("parted", reason=reason)
        if not self._mucs and not self._closing.is_set():
            self._closing.set()  # the pool never hands a closing session a new room
            gevent.spawn(self.close, "parted", 2.0)

    def _dropped(self, key: Any, line: OutLine, code: str) -> None:
        self.counters["line_drops:" + code] += 1
        muc = self._mucs.get(key)
        if muc is not None:
            report_drop(muc.room, line, code, self.queue.max_per_room)

    def _rooms_state(self, state: str, error: str | None = None) -> None:
        for muc in list(self._mucs.values()):
            if muc.state != "failed":
                muc.room.set_state(state, error=error)

    # ------------------------------------------------------------------------------- main greenlet
    def _run(self) -> None:
        self.client = aio.call(self._make_client)
        backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max)
        while not self._closing.is_set():
            self._rooms_state("connecting")
            self._pace_connect(self._server)
            if self._closing.is_set():
                break
            reason = self._session_once()
            if self._login_failed:
                for muc in list(self._mucs.values()):
                    muc.room.emit("error", code="join_failed", detail=reason)
            if self._closing.is_set():
                break
            if self.connected_at and time.monotonic() - self.connected_at > self.settings.reconnect_reset_after:
                backoff.reset()
            delay = backoff.next()
            self.counters["chat_reconnects:xmpp"] += 1
            log.warning("xmpp %s: %s; reconnecting in %.1fs", self.label, reason, delay)
            self._rooms_state("backoff", reason)
            self._closing.wait(delay)
        log.info("xmpp %s: closed", self.label)

    def _session_once(self) -> str:
        """Connect, serve until the stream ends; return why it ended."""
        self._up.clear()
        self._down.clear()
        self._down_reason = ""
        self._login_failed = False
        self.connected_at = 0.0
        aio.call(self._connect)
        ready = gevent.wait([self._up, self._down], count=1, timeout=self.settings.connect_timeout)
        if not ready:
            aio.call(self._abort)
            self._down.wait(2.0)
            return "connecting timed out"
        while not self._down.is_set():
            if self._down.wait(self.settings.ping_interval):
                break
            self._keepalive()
        return self._down_reason or "the stream ended"

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
        return JID(self.spec.jid).domain

    # ------------------------------------------------------------------------------ writer greenlet
    def _write_loop(self) -> None:
        queue = self.queue
        while True:
            queue.wake.wait()
            queue.wake.clear()
            while True:
                taken, wait = queue.take(WRITE_BATCH) if self._online else ([], 0.0)
                if taken:
                    try:
                        unsent = aio.call(self._send_lines, taken, timeout=30.0)
                    except (gevent.Timeout, Exception) as exc:
                        log.warning("xmpp %s: sending failed: %r", self.label, exc)
                        unsent = list(range(len(taken)))
                    if unsent:
                        queue.put_front([taken[i] for i in unsent])
                    skip = set(unsent)
                    for i, (key, line) in enumerate(taken):
                        if i in skip:
                            continue
                        muc = self._mucs.get(key)
                        if line.command is not None and muc is not None:
                            muc.room.ack(line.command)
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
            self._drained.set()

    # ====================================================================== on the asyncio loop
    def _make_client(self) -> slixmpp.ClientXMPP:
        spec = self.spec
        client = slixmpp.ClientXMPP(spec.jid, spec.password, ssl_context=_tls_context())
        client.loop = aio.loop()
        if spec.tls:
            direct = spec.port in (5223, 443)
            client.enable_direct_tls, client.enable_starttls = direct, not direct
            client.enable_plaintext = False
        else:
            if spec.host and not _is_local(spec.host):
                log.warning("xmpp %s: tls is off for a server that is not local", self.label)
            client.enable_direct_tls = client.enable_starttls = False
            client.enable_plaintext = True
            mechanisms = client.plugin["feature_mechanisms"]
            mechanisms.unencrypted_plain = True
            mechanisms.unencrypted_scram = True
        for name in PLUGINS:
            client.register_plugin(name)
        client.plugin["xep_0410"].ping_interval = self.settings.ping_interval
        client.plugin["xep_0410"].ping_timeout = self.settings.ping_timeout
        on = client.add_event_handler
        on("session_start", self._on_session_start)
        on("session_resumed", self._on_session_resumed)
        on("disconnected", self._on_disconnected)
        on("connection_failed", self._on_connection_failed)
        on("reconnect_delay", self._on_reconnect_delay)
        on("failed_all_auth", self._on_failed_auth)
        on("stream_error", lambda e: log.warning("xmpp %s: stream error %s", self.label, e["condition"]))
        on("groupchat_presence", self._on_muc_presence)
        on("presence_error", self._on_presence_error)
        on("groupchat_message", self._on_groupchat_message)
        on("groupchat_subject", self._on_subject)
        on("message", self._on_message)
        on("muc_ping_changed", self._on_muc_ping)
        return client

    def _connect(self) -> None:
        self.client.connect(self.spec.host, self.spec.port) if self.spec.host else self.client.connect()

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
        transport = self.client.transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    def _on_session_start(self, _event: Any) -> None:
        if self.spec.tls and not self._encrypted():
            self._login_failed = True
            self._down_reason = "the server did not negotiate TLS (the spec requires it)"
            self._abort()
            return
        log.info("xmpp %s: session started as %s", self.label, self.client.boundjid)
        self._online = True
        self.connected_at = time.monotonic()
        self._up.set()
        for muc in list(self._mucs.values()):
            if muc.state != "failed":
                muc.state = "idle"
                muc.restart_nicks()
                self._send_join(muc)

    def _on_session_resumed(self, _event: Any) -> None:
        log.info("xmpp %s: stream resumed (XEP-0198)", self.label)
        self._online = True
        self.connected_at = time.monotonic()
        self._up.set()
        for muc in list(self._mucs.values()):
            if muc.state == "joined":
                self._muc_joined(muc, set(), resumed=True)
            elif muc.state in ("idle", "joining"):
                self._send_join(muc)

    def _on_disconnected(self, reason: Any) -> None:
        self._online = False
        if not self._down_reason:
            self._down_reason = f"stream closed ({reason})" if reason else "stream closed"
        for muc in self._mucs.values():
            muc.cancel_timer()
            self.queue.disable(muc.jid)
            self._self_ping(muc.jid, muc.nick, False)
            if muc.state == "joining":
                muc.state = "idle"
        self._down.set()

    def _on_connection_failed(self, error: Any) -> None:
        self._down_reason = f"connection failed: {error}"

    def _on_reconnect_delay(self, _delay: Any) -> None:
        """slixmpp tried every address and would retry on its own schedule: we use ours."""
        self.client.cancel_connection_attempt()
        self._down.set()

    def _on_failed_auth(self, _event: Any) -> None:
        self._login_failed = True
        self._down_reason = ("authentication failed" if self.spec.tls or self._encrypted()
                             else "authentication failed (or no mechanism allowed without TLS)")


@functools.lru_cache(maxsize=None)
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every stream: building one costs ~40 ms of CPU (CA loading),
    which slixmpp would otherwise spend per client while every greenlet waits."""
    context = ssl.create_default_context()
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private
