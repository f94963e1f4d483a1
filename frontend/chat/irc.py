"""IRC adapter: one connection (possibly shared by several rooms) over the ``irc`` package's parser.

Greenlets per connection: ``main`` connects, registers and then blocks reading the socket (no Reactor
polling loop, so an idle connection costs no CPU); ``writer`` sends the rooms' lines from a fair,
flood-controlled SendQueue, several lines per write. The writer lives only while there is something
to write: spawned when a line is queued, it ends once the queue has been empty for ``WRITER_LINGER``
seconds (a parked greenlet costs about 8 KB, and most connections are quiet most of the time).
Registration has a socket timeout; after it the socket blocks without one (a gevent Timeout per
``recv`` costs CPU on busy links) and liveness is one hub timer per connection: a connection silent
for ``ping_interval`` gets a PING, and one still silent ``ping_timeout`` later is shut down, which
ends the blocked ``recv``. A dropped connection reconnects with capped exponential backoff and full
jitter, then rejoins. Registration (CAP, SASL, nick fallbacks) lives here; the channels and their
events in ``irc_channels``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Any, Callable

import gevent
import gevent.event
from gevent import GreenletExit
from irc.client import NickMask, _rfc_1459_command_regexp
from irc.message import Arguments
from jaraco.stream.buffer import DecodingLineBuffer

from ..config import Settings
from ..counters import Counters
from ..pacing import Backoff, TokenBucket
from ..protocol import Command, Flood, IrcSpec
from ..text import assert_safe_line
from .base import RoomLink
from .irc_delivery import DeliveryTracker
from .irc_channels import HANDLERS as CHANNEL_HANDLERS
from .irc_channels import IrcChannels
from .irc_format import (fold, message_lines, nick_candidates, prefix_len, reason_line,
                         sasl_plain_lines, topic_line)
from .sendqueue import OutLine, SendQueue, queue_command

log = logging.getLogger(__name__)

SASL_FAILED = {"902", "904", "905", "906", "908"}
NICK_TAKEN = {"432", "433", "436", "437"}
WRITE_BATCH = 256
#: a writer with nothing to write for this long ends; a busy connection keeps its writer (a spawn costs
#: 15-25 µs of CPU, see ``tests/bench/floor.py``), a quiet one holds no greenlet for it
WRITER_LINGER = 2.0
QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _send_all(sock: socket.socket, data: bytes) -> None:
    """``sendall`` without gevent's per-call chunking (a getsockopt and a Timeout each time):
    a plain ``send`` usually takes everything at once."""
    view = memoryview(data)
    while view:
        view = view[sock.send(view):]


def set_within(event: gevent.event.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``event``; True when it is set.

    Not ``wait()``'s result: when the timeout fires in the same hub iteration as a ``set()`` whose
    wake-up was not delivered yet, ``wait()`` says False although the flag is set. The writer would
    then end while the ``set()`` it missed had started no new writer (one was still alive): a line
    left in the queue with nobody to write it.
    """
    if not event.is_set():
        event.wait(timeout)
    return event.is_set()


def _shut_down(sock: socket.socket) -> None:
    """End the TCP connection under any TLS layer, so that a ``recv`` blocked on it returns.
    (An SSL socket's own ``shutdown`` drops its TLS object first, and the reader then fails with a
    ValueError instead of a socket error.)"""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class ReplacingLineBuffer(DecodingLineBuffer):
    """Invalid UTF-8 from the server is decoded with U+FFFD instead of raising."""

    errors = "replace"


class ConnectionLost(Exception):
    """The connection ended; the message says why (shown in room states, never with secrets)."""


class LoginFailed(ConnectionLost):
    """The server refused our credentials (server password or SASL)."""


class IrcConnection:
    """One IRC connection and the rooms (channels) on it."""

    protocol = "irc"
    capacity_key = "channels_per_connection"
    # thousands of these live in one process: no per-instance __dict__
    __slots__ = ("spec", "settings", "counters", "label", "_pace_connect", "_pace_events", "channels",
                 "_urgent", "delivery", "queue", "_nick", "_folded_nick", "userhost_len", "_sock", "registered",
                 "_closing", "_drained", "_main", "_writer", "connected_at", "_last_read",
                 "_ping_sent_at", "_liveness", "_lost_reason", "_nicks", "_sasl_pending",
                 "_cap_waiting", "_cap_ended", "_cap_ls", "__weakref__")

    def __init__(self, spec: IrcSpec, *, settings: Settings, counters: Counters, pace_connect: Any,
                 label: str, pace_events: Callable[[], None] | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.counters = counters
        self.label = label  # for logs: server:port/nick, never a secret
        self._pace_connect = pace_connect
        self._pace_events = pace_events
        self.channels = IrcChannels(self)
        self._urgent: list[bytes] = []
        self.delivery = DeliveryTracker(settings.irc_ack, self._delivered)
        self.queue = SendQueue(self._make_bucket(spec.flood), settings.room_queue_max,
                               self.channels.dropped, on_wake=self._start_writer)
        self.nick = spec.nick
        #: len("!user@host") as the server shows us, once our own JOIN told us (for line budgets)
        self.userhost_len: int | None = None
        self._sock: socket.socket | None = None
        self.registered = False
        self._closing = gevent.event.Event()
        self._drained = gevent.event.Event()
        self._main = gevent.spawn(self._run)
        self._main.name = f"irc {label}"
        self._writer: gevent.Greenlet | None = None
        self.connected_at = 0.0
        self._last_read = 0.0
        self._ping_sent_at = 0.0  # 0.0: no PING outstanding
        self._liveness: Any = None  # the hub timer of the current connection
        self._lost_reason: str | None = None
        self._nicks: Any = iter(())
        self._sasl_pending = False
        self._cap_waiting = 0
        self._cap_ended = False
        self._cap_ls: list[str] = []

    # ------------------------------------------------------------------ ChatSession (room greenlets)
    @property
    def room_count(self) -> int:
        return len(self.channels.rooms)

    def idle(self) -> bool:
        return not self.channels.rooms

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def attach(self, room: RoomLink) -> None:
        self.channels.attach(room)

    def detach(self, room: RoomLink, reason: str) -> None:
        self.channels.detach(room, reason)

    def submit(self, room: RoomLink, command: Command) -> None:
        spec: IrcSpec = room.spec  # type: ignore[assignment]
        key = fold(spec.channel)
        prefix = prefix_len(self.nick, self.userhost_len)
        if command.type == "topic":
            line = topic_line(spec.channel, command.text or "", prefix=prefix)
            lines = [line] if line else []
        else:
            target = command.to or spec.channel
            lines = message_lines("PRIVMSG", target, command.text or "", prefix=prefix,
                                  action=command.type == "action")
        queue_command(self.queue, key, room, command, lines, self.settings.max_line_age)

    def close(self, reason: str, timeout: float = 2.0) -> None:
        """Send what is queued for joined rooms (within ``timeout``), QUIT, and stop."""
        deadline = time.monotonic() + timeout
        self._closing.set()
        if self._sock is not None and self.registered:
            while self.queue.has_ready() and self._sock is not None and time.monotonic() < deadline:
                self._drained.clear()  # let the writer send what the rooms already accepted
                self._wake_writer()
                self._drained.wait(max(0.0, deadline - time.monotonic()))
            # and until the server confirmed it (a PONG or the echoes), so nothing is acked unread
            self.delivery.settled.wait(max(0.0, deadline - time.monotonic()))
            self.send_urgent([reason_line("QUIT", reason)])
            if self._writer is not None:
                self._writer.join(max(0.0, min(0.5, deadline - time.monotonic())))
        self._main.kill(block=True, timeout=1)

    def nick_for(self, room: RoomLink) -> str:
        """The nick the room's channel sees (one per connection on IRC)."""
        return self.nick

    def depth(self, room: RoomLink) -> int:
        queue = self.queue
        return queue.depth(fold(room.spec.channel)) if queue.has_lines() else 0  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------------ internals
    def _make_bucket(self, flood: Flood | bool | None) -> TokenBucket | None:
        if flood is False:
            return None
        if isinstance(flood, Flood):
            return TokenBucket(flood.rate, flood.burst)
        rate = self.settings.for_server(self.spec.server, "flood_rate")
        burst = self.settings.for_server(self.spec.server, "flood_burst")
        return TokenBucket(rate, burst) if rate > 0 else None

    def last_room_gone(self) -> None:
        """No room is left: say goodbye and let the main greenlet end."""
        self._closing.set()
        self.send_urgent([b"QUIT :parted\r\n"])

    def send_urgent(self, lines: list[bytes]) -> None:
        """Queue protocol lines ahead of the rooms' lines and outside flood control."""
        self._urgent.extend(lines)
        self._wake_writer()

    def _wake_writer(self) -> None:
        """Lines are waiting: wake the writer, or start one if none is alive (and we are connected)."""
        self.queue.wake.set()
        self._start_writer()

    def _start_writer(self) -> None:
        """Start a writer if none is alive and we are connected (the SendQueue has set ``wake``)."""
        if self._writer is None and self._sock is not None:
            self._writer = gevent.spawn(self._write_loop, self._sock)

    # ------------------------------------------------------------------------------- main greenlet
    def _run(self) -> None:
        backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max)
        while not self._closing.is_set():
            self.channels.set_states("connecting")
            reason = "connection closed"
            self.connected_at = 0.0
            try:
                self._pace_connect(self.spec.server)
                self._connect()
                self._read_loop()
            except LoginFailed as exc:
                reason = str(exc)
                for room in list(self.channels.rooms.values()):
                    room.emit("error", code="join_failed", detail=reason)
            except (OSError, ConnectionLost) as exc:
                reason = self._lost_reason or str(exc) or type(exc).__name__
            except Exception as exc:  # the top of the greenlet: log, then reconnect like any failure
                log.exception("irc %s: unexpected error", self.label)
                reason = f"internal error: {exc!r}"
            finally:
                self._disconnected()
            if self._closing.is_set():
                break
            if self.connected_at and time.monotonic() - self.connected_at > self.settings.reconnect_reset_after:
                backoff.reset()
            delay = backoff.next()
            self.counters["chat_reconnects:irc"] += 1
            log.warning("irc %s: %s; reconnecting in %.1fs", self.label, reason, delay)
            self.channels.set_states("backoff", reason)
            self._closing.wait(delay)
        log.info("irc %s: closed", self.label)

    def _connect(self) -> None:
        spec = self.spec
        sock = socket.create_connection((spec.server, spec.port), timeout=self.settings.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # our writes are batched already
        if spec.tls:
            context = ssl.create_default_context()
            if not spec.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=spec.server)
        sock.settimeout(self.settings.connect_timeout)  # registration deadline
        self._sock = sock
        self.registered = False
        self._lost_reason = None
        self._urgent = []
        self._nicks = nick_candidates(spec.nick)
        self.nick = next(self._nicks)
        self._sasl_pending = spec.sasl_username is not None
        self._cap_waiting = 0
        self._cap_ended = False
        self._cap_ls = []
        lines = [b"CAP LS 302\r\n"]
        if spec.password:
            lines.append(f"PASS {spec.password}\r\n".encode())
        lines.append(f"NICK {self.nick}\r\n".encode())
        lines.append(f"USER {spec.nick[:10]} 0 * :greenroom\r\n".encode())
        self.send_urgent(lines)
        log.debug("irc %s: connected, registering", self.label)

    def _disconnected(self) -> None:
        sock, self._sock = self._sock, None
        self.registered = False
        self._stop_liveness()
        unconfirmed = self.delivery.reset()
        if unconfirmed:  # written but never confirmed: send again after reconnecting
            self.queue.put_front(unconfirmed)
        if self._writer is not None:
            self._writer.kill(block=False)
            self._writer = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self.channels.disconnected()

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        buffer = ReplacingLineBuffer()
        while True:
            try:
                data = sock.recv(65536)
                if QUICKACK is not None:
                    # servers that do not set TCP_NODELAY (InspIRCd) hold a small write until we ACK;
                    # Linux delays ACKs by up to 40 ms unless asked again after every read
                    sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
            except socket.timeout:  # only during registration: afterwards the socket has no timeout
                raise ConnectionLost("registration timed out") from None
            if not data:
                raise ConnectionLost(self._lost_reason or "the server closed the connection")
            self._last_read = time.monotonic()
            if self._pace_events is not None:
                self._pace_events()  # the outgoing buffer is full: leave the rest with the server
            buffer.feed(data)
            for line in buffer:
                if line:
                    try:
                        self._handle_line(line)
                    except (ConnectionLost, GreenletExit):
                        raise
                    except Exception:  # one odd line must never take the connection down
                        log.exception("irc %s: could not handle the line %r", self.label, line[:200])

    # ------------------------------------------------------------------------------------ liveness
    def _schedule_liveness(self, delay: float) -> None:
        self._stop_liveness()
        self._liveness = gevent.get_hub().loop.timer(max(delay, 0.001))
        self._liveness.start(self._check_liveness)

    def _stop_liveness(self) -> None:
        if self._liveness is not None:
            self._liveness.close()
            self._liveness = None

    def _check_liveness(self) -> None:
        """Runs in the hub: must not block. Any data read since the PING counts as an answer."""
        sock = self._sock
        if sock is None:
            return
        now = time.monotonic()
        if self._ping_sent_at:
            if self._last_read >= self._ping_sent_at:
                self._ping_sent_at = 0.0
            elif now - self._ping_sent_at >= self.settings.ping_timeout:
                self._lost_reason = f"no answer to PING within {self.settings.ping_timeout:g}s"
                self._liveness = None
                _shut_down(sock)  # the blocked recv returns and the reader reconnects
                return
            else:
                self._schedule_liveness(self._ping_sent_at + self.settings.ping_timeout - now)
                return
        silent = now - self._last_read
        if silent >= self.settings.ping_interval:
            self.send_urgent([b"PING :greenroom\r\n"])
            self._ping_sent_at = now
            self._schedule_liveness(self.settings.ping_timeout)
        else:
            self._schedule_liveness(self.settings.ping_interval - silent)

    # ------------------------------------------------------------------------------ writer greenlet
    def _write_loop(self, sock: socket.socket) -> None:
        try:
            self._write_until_drained(sock)
        finally:
            if self._writer is gevent.getcurrent():
                self._writer = None

    def _write_until_drained(self, sock: socket.socket) -> None:
        queue = self.queue
        while True:
            queue.wake.clear()
            while True:
                data: list[bytes] = []
                if self._urgent:
                    data, self._urgent = self._urgent, []
                taken, wait = queue.take(WRITE_BATCH) if self.registered else ([], 0.0)
                data.extend(assert_safe_line(line.data) for _, line in taken)
                # Lines awaiting a confirmation are recorded before the write, so the PING that
                # confirms them rides in the same write; if the write fails, the reconnect gets
                # them back from delivery.reset(). Lines confirmed by the write itself: after it.
                confirm_later = self.delivery.mode == "pong" or self.delivery.echo
                if confirm_later:
                    for key, line in taken:
                        self.delivery.written(key, line)
                ping = self.delivery.ping_line()
                if ping is not None:
                    data.append(ping)
                if data:
                    try:
                        _send_all(sock, b"".join(data))
                    except OSError as exc:
                        if not confirm_later:
                            queue.put_front(taken)
                        log.info("irc %s: write failed: %s", self.label, exc)
                        _shut_down(sock)  # wakes the reader, which reconnects
                        return
                    if not confirm_later:
                        for key, line in taken:
                            self.delivery.written(key, line)
                if wait > 0:  # the bucket is empty: wait for its next token (or an urgent line)
                    queue.wake.wait(wait)
                    queue.wake.clear()
                    continue
                if not data:
                    break
            self._drained.set()
            if not set_within(queue.wake, WRITER_LINGER):
                return  # quiet for a while: the next line starts a new writer

    # ------------------------------------------------------------------------------------- parsing
    def _handle_line(self, line: str) -> None:
        log.debug("irc %s: FROM SERVER: %s", self.label, line)
        match = _rfc_1459_command_regexp.match(line)
        if match is None:
            return
        group = match.group
        command = group("command").upper()
        args = Arguments.from_group(group("argument"))
        prefix = group("prefix")
        source = NickMask(prefix) if prefix else None
        handler = _HANDLERS.get(command)
        if handler is not None:
            handler(self, source, args)
            return
        channel_handler = CHANNEL_HANDLERS.get(command)
        if channel_handler is not None:
            channel_handler(self.channels, source, args)

    @property
    def nick(self) -> str:
        return self._nick

    @nick.setter
    def nick(self, value: str) -> None:
        self._nick, self._folded_nick = value, fold(value)

    def is_me(self, source: NickMask | None) -> bool:
        return source is not None and fold(source.nick) == self._folded_nick

    def _on_ping(self, source: Any, args: list[str]) -> None:
        self.send_urgent([f"PONG :{args[0] if args else ''}\r\n".encode()])

    def _on_cap(self, source: Any, args: list[str]) -> None:
        if len(args) < 3:
            return
        sub = args[1].upper()
        caps = args[-1].split()
        if sub == "LS":
            self._cap_ls.extend(caps)
            if len(args) > 3 and args[2] == "*":
                return  # more LS lines follow
            offered = {c.split("=", 1)[0] for c in self._cap_ls}
            # echo-message confirms delivery; with irc_ack = "write" nothing waits for it, and every
            # echoed line would be read and parsed for nothing
            wanted = ["echo-message"] if "echo-message" in offered and self.delivery.mode == "pong" else []
            if self._sasl_pending:
                if "sasl" not in offered:
                    self._fail_login("the server does not offer SASL")
                wanted.append("sasl")
            self._cap_waiting = len(wanted)
            self.send_urgent([f"CAP REQ :{cap}\r\n".encode() for cap in wanted])
        elif sub in ("ACK", "NAK"):
            for cap in caps:
                self._cap_waiting -= 1
                if cap == "sasl":
                    if sub == "NAK":
                        self._fail_login("the server refused the SASL capability")
                    self.send_urgent([b"AUTHENTICATE PLAIN\r\n"])
                elif cap == "echo-message" and sub == "ACK":
                    self.delivery.echo = True
        self._maybe_cap_end()

    def _maybe_cap_end(self) -> None:
        if self._cap_waiting <= 0 and not self._sasl_pending and not self._cap_ended:
            self._cap_ended = True
            self.send_urgent([b"CAP END\r\n"])

    def _on_authenticate(self, source: Any, args: list[str]) -> None:
        if args and args[0] == "+" and self.spec.sasl_username:
            self.send_urgent(sasl_plain_lines(self.spec.sasl_username, self.spec.sasl_password or ""))

    def _on_sasl_ok(self, source: Any, args: list[str]) -> None:
        self._sasl_pending = False
        self._maybe_cap_end()

    def _on_sasl_failed(self, source: Any, args: list[str]) -> None:
        self._fail_login(f"SASL authentication failed ({args[-1] if args else 'no reason'})")

    def _on_password_mismatch(self, source: Any, args: list[str]) -> None:
        self._fail_login("the server refused the password")

    def _fail_login(self, why: str) -> None:
        self.send_urgent([b"QUIT :login failed\r\n"])
        raise LoginFailed(why)

    def _on_nick_taken(self, source: Any, args: list[str]) -> None:
        if self.registered:
            return
        self.nick = next(self._nicks)
        log.info("irc %s: nick taken, trying %s", self.label, self.nick)
        self.send_urgent([f"NICK {self.nick}\r\n".encode()])

    def _on_welcome(self, source: Any, args: list[str]) -> None:
        self.registered = True
        self.connected_at = time.monotonic()
        if args:
            self.nick = args[0]
        assert self._sock is not None
        self._sock.settimeout(None)
        self._last_read = self.connected_at
        self._ping_sent_at = 0.0
        self._schedule_liveness(self.settings.ping_interval)
        log.info("irc %s: registered as %s", self.label, self.nick)
        self.channels.join_all()

    def _on_privmsg(self, source: NickMask | None, args: list[str]) -> None:
        if source is None or len(args) < 2:
            return
        nick = source.nick  # parsed from the prefix on each access: once
        if fold(nick) == self._folded_nick:
            if self.delivery.echo:  # echo-message: the server confirms our line
                self.delivery.on_echo()
            return
        self.channels.on_privmsg(nick, args)

    def _on_pong(self, source: Any, args: list[str]) -> None:
        if args and self.delivery.on_pong(args[-1]):
            self._wake_writer()  # lines written meanwhile are owed their own PING

    def _delivered(self, key: Any, line: OutLine) -> None:
        """The server has the line: the command it ends leaves the in-flight list."""
        if line.command is not None:
            room = self.channels.rooms.get(key)
            if room is not None:
                room.ack(line.command)
        if line.on_sent is not None:
            line.on_sent()

    def _on_nick(self, source: NickMask | None, args: list[str]) -> None:
        if source is not None and args and self.is_me(source):
            self.nick = args[0]
        else:
            self.channels.on_nick(source, args)

    def _on_unknown_command(self, source: Any, args: list[str]) -> None:
        if len(args) >= 2 and args[1].upper() == "CAP" and self._sasl_pending:
            self._fail_login("the server does not support capabilities, so no SASL")

    def _on_error(self, source: Any, args: list[str]) -> None:
        message = args[-1] if args else ""
        log.warning("irc %s: server said ERROR %s", self.label, message)
        if not self.registered and not self._closing.is_set():
            # refused before registration: a wrong server password on ngircd, a ban, a full server
            raise LoginFailed(f"the server refused the connection: {message}")


_HANDLERS = {
    "PING": IrcConnection._on_ping,
    "PONG": IrcConnection._on_pong,
    "CAP": IrcConnection._on_cap,
    "AUTHENTICATE": IrcConnection._on_authenticate,
    "903": IrcConnection._on_sasl_ok,
    "907": IrcConnection._on_sasl_ok,
    "464": IrcConnection._on_password_mismatch,
    "001": IrcConnection._on_welcome,
    "NICK": IrcConnection._on_nick,
    "PRIVMSG": IrcConnection._on_privmsg,
    "ERROR": IrcConnection._on_error,
    "421": IrcConnection._on_unknown_command,
    **{code: IrcConnection._on_sasl_failed for code in SASL_FAILED},
    **{code: IrcConnection._on_nick_taken for code in NICK_TAKEN},
}
