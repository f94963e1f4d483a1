"""IRC adapter: one connection (possibly shared by several rooms), composed of parts that each own a
concept, with the server's lines dispatched to them by name from one table (``DISPATCH``).

    IrcSession         (this file) the socket: connect, read, write, liveness; the table
      Registration     irc_registration.py: PASS/NICK/USER, CAP, SASL, nick fallbacks (until 001)
      IrcChannels      irc_channels.py: channels, the rooms on each, members, joins, channel events
      Identity         irc_identity.py: IRCv3 accounts, server time, msgid (only where negotiated)
      DeliveryTracker  irc_delivery.py: when a written line counts as delivered (echo, PONG, write)
      SendQueue        sendqueue.py: the rooms' lines, fair and flood-controlled
    irc_wire.py        bounded lines out of the byte stream, and the line parser (IRCv3 tags)
    irc_format.py      outgoing lines within 512 bytes, case folding (per the server's CASEMAPPING)
    irc_isupport.py    what the server says of itself in 005: CHANLIMIT, MAXCHANNELS, CASEMAPPING
    irc_flood.py       which disconnects were for flooding (learned from: ``flood_memory``)
    irc_limits.py      what those limits do to the connection: ISUPPORT applied, floods learned,
                       rooms past a channel limit moved, channels re-keyed
    base.SessionBase   the reconnect loop with backoff, drop reporting, close with drain

Greenlets per connection: none while a connection is up. ``main`` connects (the TLS handshake
too) and sends the registration, then ends: from then on a hub callback reads the socket
(``_readable``, an io watcher: about 0.3 KB, where a parked reader greenlet cost about 8 KB), handles
the lines (registration, channels, PONGs) and, when the connection ends, starts ``main`` again to back
off and reconnect (``SessionBase._served_ended``). TLS is read the same way through the TLS layer's
non-blocking read: what it decrypted already but a turn left unread does not show on the descriptor,
so a callback reads it on (``_more_later``), and a read that must write first waits for the socket to
be writable (``_read_when_writable``). The rooms' lines
queued in one turn of the hub's loop are written by one hub callback (``_flush``: one non-blocking
write of everything queued, no greenlet woken); ``writer`` takes over what that cannot finish (a
socket that took only part of the write, a flood-control token to wait for, the speak gate, TLS,
``irc_ack = "write"``), several lines per write. The writer lives only while it is needed: started
then, it ends once it has been idle for ``WRITER_LINGER`` seconds. No polling loop, so an idle
connection costs no CPU, and no timeout per read: deadlines are one hub timer per connection:
registration must finish within ``connect_timeout``, a connection silent for ``ping_interval`` gets a
PING, and one still silent ``ping_timeout`` later is shut down, which the reader sees as the end of
the connection. While the events buffer is full (``EventsBuffer``: Redis slower than the chat
servers) nothing is read: the server holds the rest, and the buffer calls the reader back once it
has room. A dropped connection reconnects with capped exponential backoff and full jitter,
then rejoins.

Servers' limits: past a server's channel limit (ISUPPORT ``CHANLIMIT``/``MAXCHANNELS``, or the
``405`` it answers a JOIN with) a room goes to the next connection of its identity (the pool's
``other_session``: connection ``k`` asks for the nick ``nick<k+1>``, ``irc_format.connection_nick``);
a disconnect for flooding lowers the server's rate and burst for every connection to it
(``flood_memory``), and the lines it had not confirmed go out again at that rate (``irc_limits``).

A server cannot hold the process: a line is at most ``irc_wire.MAX_LINE`` bytes (longer ones are
dropped, counted in ``lines_too_long``, logged once a minute per connection), and the reader gives
the other connections and greenlets their turn after ``TURN_LINES`` lines or ``TURN_BYTES`` bytes,
however fast it sends.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from operator import attrgetter
from typing import Any, Callable, Iterable, Optional

import gevent
import gevent.event

from ..config import Settings
from ..counters import Counters
from ..flood_memory import FloodMemory
from ..logs import Throttle
from ..protocol import Command, IrcSpec, Spec
from ..text import assert_safe_line
from . import tls
from .base import TURN_PAUSE, ConnectionLost, EventsBuffer, LoginFailed, RoomLink, Seat, SessionBase, SpeakGate
from .irc_channels import IrcChannels
from .irc_delivery import DeliveryTracker
from .irc_flood import flood_disconnect
from .irc_format import (fold, folder, message_lines, pong_line, prefix_len, reason_line, topic_line,
                         valid_server_nick)
from .irc_identity import Identity
from .irc_isupport import ServerFacts, ServerInfo
from .irc_limits import apply_isupport, cut, learn_flood
from .irc_registration import Registration
from .irc_wire import MAX_LINE, LineReader, Message, commands_named, parse, parse_privmsg
from .sendqueue import OutLine, queue_command, report_unsent

log = logging.getLogger(__name__)
_throttled = Throttle(log, 60.0)

__all__ = ["IrcSession", "ConnectionLost", "LoginFailed", "DISPATCH", "set_within"]

WRITE_BATCH = 256
#: a writer with nothing to write for this long ends; a busy connection keeps its writer (a spawn costs
#: 15-25 µs of CPU, see ``tests/bench/floor.py``), a quiet one holds no greenlet for it
WRITER_LINGER = 2.0
#: the reader yields to the hub after this many lines or bytes, so one server cannot starve the rest
TURN_LINES = 256
TURN_BYTES = 256 * 1024
QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
#: nicks ``to`` may name only where every room on the connection is of one tenant, or with the
#: spec's ``allow_services``: network services act on the connection's nick, which all its rooms share
SERVICE_NICKS = frozenset(fold(n) for n in (
    "NickServ", "ChanServ", "MemoServ", "OperServ", "HostServ", "BotServ", "HelpServ", "InfoServ",
    "StatServ", "GroupServ", "SaslServ", "Global", "ALIS", "Q", "X", "AuthServ"))


def _ack_now(sock: socket.socket) -> None:
    """After every read: servers that do not set TCP_NODELAY (InspIRCd) hold a small write until we
    ACK, and Linux delays ACKs by up to 40 ms unless asked again after every read."""
    if QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        except OSError:
            pass


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


def _tls_read(tls_layer: "ssl._SSLSocket") -> bytes:  # type: ignore[name-defined]
    """One non-blocking read through a TLS layer (the ``_sslobj`` of gevent's SSL socket, whose own
    ``recv`` would wait): up to one record's bytes; b"" at the end, a close_notify or the TCP
    connection's end without one (what gevent's socket reports with its ``suppress_ragged_eofs``).
    Raises ``ssl.SSLWantReadError`` when it has nothing yet, ``ssl.SSLWantWriteError`` when it must
    write first."""
    try:
        return tls_layer.read(65536)
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        return b""


def _shut_down(sock: socket.socket) -> None:
    """End the TCP connection under any TLS layer: the hub's read of it (``_readable``) then sees the
    end, and the main greenlet backs off and reconnects. (An SSL socket's own ``shutdown`` drops its
    TLS object first, and a read then fails with a ValueError instead of a socket error.)"""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class IrcSession(SessionBase):
    """One IRC connection and the rooms (channels) on it."""

    protocol = "irc"
    flood_by_default = True
    # thousands of these live in one process: no per-instance __dict__
    __slots__ = ("channels", "registration", "delivery", "registered", "_userhost_len", "_prefix", "index", "identity",
                 "info", "fold", "_nick", "_folded_nick", "_pace_events", "_urgent", "_sock", "_writer",
                 "_last_read", "_ping_sent_at", "_liveness", "_lost_reason", "facts", "_rehome",
                 "_written", "_confirmed", "_first_write_at", "_flood_seen", "_flush_cb", "_linger",
                 "_backlog", "_lines", "_reading", "_turn", "_tls")

    def __init__(self, spec: IrcSpec, *, settings: Settings, counters: Counters,
                 pace_connect: Callable[[str], None], index: int = 0, label: Optional[str] = None,
                 pace_events: Optional[EventsBuffer] = None, gate: Optional[SpeakGate] = None,
                 flood_memory: Optional[FloodMemory] = None, facts: Optional[ServerFacts] = None,
                 rehome: Optional[Callable[[RoomLink, "IrcSession"], Optional["IrcSession"]]] = None) -> None:
        suffix = f"#{index}" if index else ""
        super().__init__(spec, settings=settings, counters=counters, pace_connect=pace_connect,
                         label=label or f"{spec.server}:{spec.port}/{spec.nick}{suffix}", gate=gate,
                         on_wake=self._start_writer, flood_memory=flood_memory)
        #: this connection's place among the connections of one identity (0: the first)
        self.index = index
        #: what the pool's connections heard of each server (ISUPPORT)
        self.facts = facts
        #: the pool's: another connection of a room's identity (past a server's channel limit)
        self._rehome = rehome
        known = facts.get(spec.server) if facts is not None else None
        #: what the server said of itself (ISUPPORT); until it does, what another connection heard
        self.info = known.copy() if known is not None else ServerInfo()
        #: how this server compares nicks and channel names (its CASEMAPPING; RFC 1459 by default)
        self.fold = folder(self.info.casemapping)
        #: IRCv3 accounts, server time and msgid: made only where the server acknowledged them
        self.identity: Optional[Identity] = None
        self._written = 0    # room lines written on this connection
        self._confirmed = 0  # ... and confirmed by the server
        self._first_write_at = 0.0  # when the first of them was written (monotonic; 0.0: none yet)
        self._flood_seen = False  # this connection was disconnected for flooding (learned from once)
        self._pace_events = pace_events
        self.channels = IrcChannels(self)
        self.registration: Optional[Registration] = None  # only while registering
        self.delivery = DeliveryTracker(settings.irc_ack, self._delivered)
        self.registered = False
        self._prefix = 0  # prefix_len of our nick and userhost_len (0: to be worked out again)
        #: len("!user@host") as the server shows us, once our own JOIN told us (for line budgets)
        self.userhost_len = None
        self.nick = spec.nick
        self._urgent: list[bytes] = []
        self._sock: Optional[socket.socket] = None
        self._writer: Optional[gevent.Greenlet] = None
        #: the hub callback that writes what was queued in this loop turn (None: none is scheduled)
        self._flush_cb: Any = None
        #: what an idle writer waits on (None: there is no idle writer)
        self._linger: Optional[gevent.event.Event] = None
        #: the tail of a write from the hub that the socket did not take: the writer sends it first
        self._backlog = b""
        self._last_read = 0.0
        self._ping_sent_at = 0.0  # 0.0: no PING outstanding
        self._liveness: Any = None  # the hub timer of the current connection
        self._lost_reason: Optional[str] = None
        #: a plain connection is read by a hub callback, not a greenlet (one parked greenlet costs
        #: about 8 KB, a watcher 0.3): the lines it has not completed, its io watcher, and the timer
        #: that goes on with a long read's lines after the other connections had their turn
        self._lines: Optional[LineReader] = None
        self._reading: Any = None
        self._turn: Any = None
        #: the TLS layer of the connection read from the hub (gevent's SSL socket's ``_sslobj``), or None
        self._tls: Any = None
        self._start()

    # ------------------------------------------------------------------ ChatSession (room greenlets)
    @property
    def room_count(self) -> int:
        return self.channels.room_total

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def accepts(self, spec: Spec) -> bool:
        """A room on a channel already here, or a new channel within ``channels_per_connection`` and
        the server's channel limit (its ISUPPORT ``CHANLIMIT``/``MAXCHANNELS``; where it said none,
        the number of channels it had let us join when it refused one with ``405``)."""
        channels = self.channels
        name = spec.channel  # type: ignore[union-attr]
        if self.fold(name) in channels.by_name:
            return True
        limit = self.settings.channels_per_connection
        if limit and len(channels) >= limit:
            return False
        if channels.full_at is not None and len(channels) >= channels.full_at:
            return False
        known = self.info.limit_for(name)
        return known is None or channels.count(known[0]) < known[1]

    def attach(self, room: RoomLink) -> None:
        self.channels.attach(room)

    def detach(self, room: RoomLink, reason: str, *, silent: bool = False) -> None:
        self.channels.detach(room, reason, silent)

    def submit(self, room: RoomLink, command: Command) -> None:
        spec: IrcSpec = room.spec  # type: ignore[assignment]
        refused = self._refusal(room, command)
        if refused is None:
            prefix = self._prefix or self._prefix_len()
            try:
                if command.type == "topic":
                    line = topic_line(spec.channel, command.text or "", prefix=prefix)
                    lines = [line] if line else []
                else:
                    lines = message_lines("PRIVMSG", command.to or spec.channel, command.text or "",
                                          prefix=prefix, action=command.type == "action")
            except ValueError:  # split_utf8: the budget left no room for one character
                refused = "the channel name and nick leave no room for text in a 512-byte line"
        seat = self.channels.seat_of(room)
        if seat is None:
            refused = "the room is not attached to this connection"
        if refused is not None:
            room.emit("error", code="bad_command", detail=refused, cmd_id=command.cmd_id)
            room.ack(command)
            return
        queue_command(self.queue, seat, room, command, lines, self.settings.max_line_age)

    def _refusal(self, room: RoomLink, command: Command) -> Optional[str]:
        """Why the command may not go out on this connection (None: it may)."""
        to = command.to
        if to is None or fold(to) not in SERVICE_NICKS:
            return None
        if room.spec.allow_services or not self.channels.shared_across_tenants():  # type: ignore[union-attr]
            return None
        return (f"{to} is a network service and this connection is shared with rooms of other tenants "
                "(services act on the nick they all use): set allow_services in the spec, or give the "
                "room a connection of its own (share: false)")

    def nick_for(self, room: RoomLink) -> str:
        """The nick the room's channel sees (one per connection on IRC)."""
        return self.nick

    # --------------------------------------------------------------------------- for the parts
    @property
    def nick(self) -> str:
        return self._nick

    @nick.setter
    def nick(self, value: str) -> None:
        self._nick, self._folded_nick = value, self.fold(value)
        self._prefix = 0

    @property
    def userhost_len(self) -> Optional[int]:
        """len("!user@host") as the server shows us, once our own JOIN told us (for line budgets)."""
        return self._userhost_len

    @userhost_len.setter
    def userhost_len(self, value: Optional[int]) -> None:
        self._userhost_len = value
        self._prefix = 0

    def _prefix_len(self) -> int:
        """How long the server's prefix of our lines is (``prefix_len``), kept until the nick or
        ``userhost_len`` changes: every line's budget needs it."""
        self._prefix = prefix_len(self._nick, self._userhost_len)
        return self._prefix

    @property
    def folded_nick(self) -> str:
        return self._folded_nick

    def is_me(self, nick: Optional[str]) -> bool:
        return nick is not None and self.fold(nick) == self._folded_nick

    def saw_own_source(self, source: str, nick: str) -> None:
        """Our own JOIN showed ``nick!user@host``: remember how long the server's prefix is."""
        self.userhost_len = len(source) - len(nick)

    def registered_as(self, nick: str) -> None:
        """001 arrived: registration is over; join the channels, watch the connection."""
        self.registration = None
        self.registered = True
        self.connected_at = time.monotonic()
        self.nick = nick
        self._last_read = self.connected_at
        self._ping_sent_at = 0.0
        self._schedule_liveness(self.settings.ping_interval)
        log.info("irc %s: registered as %s", self.label, self.nick)
        self.channels.join_all()
        if self.queue.has_ready():
            self._wake_writer()

    def last_room_gone(self) -> None:
        """No room is left: say goodbye and let the main greenlet end."""
        self._closing.set()
        self.send_urgent([b"QUIT :parted\r\n"])

    def send_urgent(self, lines: list[bytes]) -> None:
        """Queue protocol lines ahead of the rooms' lines, outside flood control and the speak gate."""
        self._urgent.extend(lines)
        self._wake_writer()

    def cap_acked(self, cap: str) -> None:
        """Registration: the server acknowledged an identity capability (``irc_identity``)."""
        if self.identity is None:
            self.identity = Identity()
        self.identity.enable(cap)

    def other_connection(self, room: RoomLink) -> Optional["IrcSession"]:
        """Another connection of ``room``'s identity that takes its channel (the pool finds or opens
        it); None when there is none to be had."""
        if self._rehome is None:
            return None
        return self._rehome(room, self)

    @property
    def written(self) -> tuple[int, int, float]:
        """Room lines written on this connection, those the server confirmed, when the first went."""
        return self._written, self._confirmed, self._first_write_at

    @property
    def retry_soon(self) -> bool:
        return self._retry_soon

    @retry_soon.setter
    def retry_soon(self, value: bool) -> None:
        """The connection that ends made progress although the server dropped it: reconnect soon."""
        self._retry_soon = value

    def adopt(self, room: RoomLink, lines: list[OutLine]) -> None:
        """Lines a room had queued on another connection, in order, ahead of what it sends from now."""
        seat = self.channels.seat_of(room)
        if seat is None:
            report_unsent(room, lines)
            return
        if lines:
            self.queue.put_front([(seat, line) for line in lines])

    # ------------------------------------------------------------------------- SessionBase hooks
    def _rooms(self) -> Iterable[RoomLink]:
        return self.channels.rooms()

    def _seat(self, room: RoomLink) -> Optional[Seat]:
        return self.channels.seat_of(room)

    def _can_drain(self) -> bool:
        return self._sock is not None and self.registered

    def _wake_writer(self) -> None:
        """Lines are waiting: have them written (``_start_writer``)."""
        self.queue.wake.set()
        self._start_writer()

    def _start_writer(self) -> None:
        """Lines are waiting (the SendQueue has set ``wake``): a writer at work takes them itself;
        otherwise one hub callback writes what was queued in this loop turn (``_flush``), so the
        rooms' lines of one turn go out in one write without waking a writer greenlet."""
        if self._flush_cb is not None or self._sock is None:
            return
        if self._writer is not None and self._linger is None:
            return  # at work: it takes what was queued when its write returns
        self._flush_cb = gevent.get_hub().loop.run_callback(self._flush)

    def _start_writer_greenlet(self) -> None:
        """Wake the idle writer, or start one if none is alive (and we are connected)."""
        if self._writer is None:
            if self._sock is not None:
                self._writer = gevent.spawn(self._write_loop, self._sock)
        elif self._linger is not None:
            self._linger.set()

    def _goodbye(self, reason: str, deadline: float) -> None:
        if self._sock is None or not self.registered:
            return
        # until the server confirmed what was written (a PONG or the echoes): nothing acked unread
        self.delivery.settled.wait(max(0.0, deadline - time.monotonic()))
        self._urgent.append(reason_line("QUIT", reason))
        self.queue.wake.set()
        self._start_writer_greenlet()  # the QUIT goes out before the join below returns
        if self._writer is not None:
            self._writer.join(max(0.0, min(0.5, deadline - time.monotonic())))

    def _lost_reason_for(self, exc: BaseException) -> str:
        return self._lost_reason or str(exc) or type(exc).__name__

    # ------------------------------------------------------------------------------- main greenlet
    def _session_once(self) -> bool:
        self._connect()
        self._read_from_hub()
        return True

    def _connect(self) -> None:
        spec: IrcSpec = self.spec  # type: ignore[assignment]
        memory = self.flood_memory
        if memory is not None:  # what every connection to the server learned: a fresh bucket of it
            self._rebuild_bucket(load=True, fresh=True)
            memory.watch(spec.server, self)
        self._written = self._confirmed = 0
        self._first_write_at = 0.0
        self._flood_seen = False
        # shared and cached per (tls_ca, tls_verify); TlsSetupFailed says why a tls_ca cannot be used
        context = tls.client_context(spec.tls_ca, spec.tls_verify) if spec.tls else None
        timeout = self.settings.connect_timeout
        raw: Optional[socket.socket] = None
        try:
            sock = raw = socket.create_connection((spec.server, spec.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # our writes are batched already
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=spec.server)
        except OSError as exc:  # the reason in words (certificate, DNS, refused, ...): join_failed says it
            if raw is not None:
                raw.close()
            self._lost_reason = None  # what ended the previous connection is not this attempt's reason
            reason, permanent = tls.explain_connect(exc, spec.server, spec.port, timeout, ca=spec.tls_ca,
                                                    handshake=raw is not None)
            raise ConnectionLost(reason, permanent=permanent) from None
        sock.settimeout(None)  # the registration deadline is the liveness timer's
        self._sock = sock
        self.registered = False
        self._lost_reason = None
        self._urgent = []
        self._last_read = time.monotonic()
        self._ping_sent_at = 0.0
        self._schedule_liveness(self.settings.connect_timeout)
        self.registration = Registration(self)
        self.send_urgent(self.registration.first_lines())
        log.debug("irc %s: connected, registering", self.label)

    def _disconnected(self) -> None:
        self._stop_reading()  # before the socket closes: no watcher on a closed descriptor
        sock, self._sock = self._sock, None
        self.registered = False
        self.registration = None
        self.identity = None
        self._stop_liveness()
        self._backlog = b""  # its lines are in the delivery tracker's: sent again below
        unconfirmed = self.delivery.reset()
        if unconfirmed:  # written but never confirmed: send again after reconnecting
            self._requeue(unconfirmed)
        if self._writer is not None:
            self._writer.kill(block=False)
            self._writer = None
        self._linger = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self.channels.disconnected()

    def _requeue(self, lines: list[tuple[Seat, OutLine]]) -> None:
        """Lines written but not confirmed go back to their seats' queues, in order; a room that left
        meanwhile has them reported instead (the server may or may not have had them)."""
        keep = [(seat, line) for seat, line in lines if seat.live]
        if keep:
            self.queue.put_front(keep)
        for seat, line in lines:
            if not seat.live and line.command is not None:
                report_unsent(seat.room, [line])

    # ----------------------------------------------------------------------- reading from the hub
    def _read_from_hub(self) -> None:
        """From now on hub callbacks read the connection (``_readable``); it ends by
        ``_served_ended``, which starts the main greenlet again."""
        sock = self._sock
        assert sock is not None
        self._lines = LineReader()
        self._tls = getattr(sock, "_sslobj", None)
        self._reading = gevent.get_hub().loop.io(sock.fileno(), 1)
        self._reading.start(self._readable, sock)

    def _stop_reading(self) -> None:
        reading, turn = self._reading, self._turn
        self._reading = self._turn = self._lines = self._tls = None
        if reading is not None:
            reading.close()
        if turn is not None:
            turn.close()

    def _closed(self) -> None:
        if self._sock is not None:  # served from the hub: no main greenlet ended it
            self._disconnected()

    def _readable(self, sock: socket.socket) -> None:
        """Runs in the hub, when the socket has data: must not block. Reads until the socket has no
        more (as a reader greenlet would, without a trip through the loop per read) or
        ``TURN_BYTES`` were read; a read's lines are handled up to ``TURN_LINES`` at a time
        (``_handle_lines`` goes on with the rest after the other connections had their turn).
        While the outgoing buffer is full nothing is read. TLS is read the same way, through the
        TLS layer's non-blocking read (``_tls_read``)."""
        buffer = self._pace_events
        bytes_left = TURN_BYTES
        tls_layer = self._tls
        while sock is self._sock:
            if buffer is not None and buffer.full():
                self._hold_reading(buffer)  # leave the rest with the server
                return
            try:
                if tls_layer is not None:
                    data = _tls_read(tls_layer)
                else:
                    # gevent's socket would wait (switch) when there is nothing to read: the
                    # non-blocking socket under it says so instead
                    data = sock._sock.recv(65536)  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except ssl.SSLWantWriteError:
                self._read_when_writable(sock)
                return
            except OSError as exc:  # ssl.SSLError among them: a TLS failure ends the connection
                self._end_served(exc)
                return
            _ack_now(sock._sock)  # type: ignore[attr-defined]  # (no gevent wrapper call)
            if not data:
                self._end_served(ConnectionLost(self._lost_reason or "the server closed the connection"))
                return
            assert self._lines is not None
            lines = self._read_lines(self._lines, data)
            if lines and not self._handle_lines(sock, lines, 0):
                return  # the turn is over (or the connection ended)
            bytes_left -= len(data)
            if bytes_left <= 0:
                self._more_later(sock)  # the turn is over
                return
            if len(data) < 65536 and tls_layer is None:
                return  # the socket likely has no more: the loop calls again if it has
            # (a TLS read returns one record, at most 16 KB: read on until the layer wants more)

    def _read_on(self, sock: socket.socket) -> None:
        """Reading was paused (a turn's lines, a full buffer): the watcher again, and what the TLS
        layer may hold already (``_more_later``)."""
        self._reading.start(self._readable, sock)
        self._more_later(sock)

    def _more_later(self, sock: socket.socket) -> None:
        """Reading stopped for a turn while the TLS layer may hold what it decrypted already, which
        the descriptor's watcher does not see: a callback reads on after the others had their
        turn. (Plain sockets: what is left is in the kernel, and the watcher calls again.)"""
        tls_layer = self._tls
        if tls_layer is not None and tls_layer.pending():
            gevent.get_hub().loop.run_callback(self._read_pending, sock)

    def _read_pending(self, sock: socket.socket) -> None:
        reading = self._reading
        if sock is self._sock and reading is not None and reading.active:
            self._readable(sock)

    def _read_when_writable(self, sock: socket.socket) -> None:
        """The TLS layer must write before it reads on (the answer to a key update, say) and the
        socket takes no more now: reading waits for the socket to be writable (one io watcher),
        not for it to be readable, which could call back at once, again and again."""
        self._reading.stop()
        wait = self._turn = gevent.get_hub().loop.io(sock.fileno(), 2)
        wait.start(self._writable_again, sock)

    def _writable_again(self, sock: socket.socket) -> None:
        wait, self._turn = self._turn, None
        if wait is not None:
            wait.close()
        reading = self._reading
        if sock is self._sock and reading is not None:
            reading.start(self._readable, sock)
            self._readable(sock)

    def _handle_lines(self, sock: socket.socket, lines: list[str], start: int) -> bool:
        """Handle ``lines[start:]`` in the hub, ``TURN_LINES`` at a time: past them the reading
        pauses and a timer goes on after the other connections and greenlets had their turn.
        True when all were handled and reading goes on."""
        self._turn = None
        handle = self._handle_line
        end = min(len(lines), start + TURN_LINES)
        for i in range(start, end):
            try:
                handle(lines[i])
            except ConnectionLost as exc:
                self._end_served(exc)
                return False
            except Exception:  # one odd line must never take the connection down
                log.exception("irc %s: could not handle the line %r", self.label, lines[i][:200])
            if sock is not self._sock or self._reading is None:
                return False  # the connection ended meanwhile
        reading = self._reading
        if end < len(lines):
            reading.stop()
            turn = self._turn = gevent.get_hub().loop.timer(TURN_PAUSE)
            turn.start(self._handle_lines, sock, lines, end)
            return False
        if not reading.active:
            self._read_on(sock)
        return True

    def _hold_reading(self, buffer: EventsBuffer) -> None:
        """The outgoing buffer is full: stop reading until it has room (no greenlet waits for that:
        the buffer calls ``_resume_reading`` back)."""
        self._reading.stop()
        buffer.when_room(self._resume_reading)

    def _resume_reading(self) -> None:
        reading = self._reading
        if reading is not None and self._turn is None and not reading.active:
            self._read_on(self._sock)

    def _end_served(self, exc: BaseException) -> None:
        """The connection read from the hub ended: no more reading; the main greenlet cleans up,
        backs off and reconnects (``SessionBase._served_ended``)."""
        if self._reading is None:
            return  # told already
        self._stop_reading()
        self._served_ended(exc)

    def _read_lines(self, reader: LineReader, data: bytes) -> list[str]:
        """The lines one read completed (longer ones than ``MAX_LINE`` counted and dropped)."""
        self._last_read = time.monotonic()
        too_long = reader.too_long
        lines = reader.feed(data)
        if reader.too_long != too_long:
            self._too_long(reader.too_long - too_long)
        if lines and log.isEnabledFor(logging.DEBUG):  # once per read, not per line
            for line in lines:
                log.debug("irc %s: FROM SERVER: %r", self.label, line)
        return lines

    def _too_long(self, n: int) -> None:
        self.counters["lines_too_long"] += n
        _throttled.warning("too long " + self.label, "irc %s: the server sent a line over %d bytes; "
                           "dropped up to its end", self.label, MAX_LINE)

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
        settings = self.settings
        if not self.registered:
            self._lost_reason = f"registration did not finish within {settings.connect_timeout:g}s"
            self._liveness = None
            _shut_down(sock)  # the read from the hub sees the end: the main greenlet backs off
            return
        now = time.monotonic()
        if self._ping_sent_at:
            if self._last_read >= self._ping_sent_at:
                self._ping_sent_at = 0.0
            elif now - self._ping_sent_at >= settings.ping_timeout:
                self._lost_reason = f"no answer to PING within {settings.ping_timeout:g}s"
                self._liveness = None
                _shut_down(sock)  # the read from the hub sees the end: the main greenlet reconnects
                return
            else:
                self._schedule_liveness(self._ping_sent_at + settings.ping_timeout - now)
                return
        silent = now - self._last_read
        if silent >= settings.ping_interval:
            self.send_urgent([b"PING :greenroom\r\n"])
            self._ping_sent_at = now
            self._schedule_liveness(settings.ping_timeout)
        else:
            self._schedule_liveness(settings.ping_interval - silent)

    # ------------------------------------------------------------------------------ writer greenlet
    def _write_loop(self, sock: socket.socket) -> None:
        try:
            self._write_until_drained(sock)
        finally:
            if self._writer is gevent.getcurrent():
                self._writer = None

    def _batch(self) -> tuple[list[bytes], list[tuple[Seat, OutLine]], float, bool]:
        """What to write now: an unsent tail, the urgent lines, a take of the rooms' lines (and the
        PING that confirms them); the lines taken, the seconds until the next token, and whether
        they are confirmed later (recorded as written here, before the write) or by the write."""
        queue, delivery = self.queue, self.delivery
        data: list[bytes] = []
        if self._backlog:
            data.append(self._backlog)
            self._backlog = b""
        if self._urgent:
            data += self._urgent
            self._urgent = []
        taken, wait = queue.take(WRITE_BATCH) if self.registered and self.gate.open else ([], 0.0)
        if taken:
            if not self._written:
                self._first_write_at = time.monotonic()
            self._written += len(taken)
        for _, line in taken:
            if line.data is not None:  # None: a barrier, nothing to write
                data.append(assert_safe_line(line.data))
        # Lines awaiting a confirmation are recorded before the write, so the PING that
        # confirms them rides in the same write; if the write fails, the reconnect gets
        # them back from delivery.reset(). Lines confirmed by the write itself: after it.
        confirm_later = delivery.mode == "pong" or delivery.echo
        if confirm_later:
            delivery.written_all(taken)
        ping = delivery.ping_line()
        if ping is not None:
            data.append(ping)
        return data, taken, wait, confirm_later

    def _flush(self) -> None:
        """Runs in the hub (``_start_writer``): must not block. One non-blocking write of what is
        waiting; the writer greenlet is woken only for what this cannot finish: lines confirmed by
        the write itself (``irc_ack = "write"``), TLS, a closed speak gate, a token to wait for,
        more than a batch, or a socket that took only part of it (the writer sends the rest first)."""
        self._flush_cb = None
        sock = self._sock
        if sock is None or (self._writer is not None and self._linger is None):
            return  # gone, or a writer got to work meanwhile: it takes the lines
        delivery = self.delivery
        if (self.spec.tls or self._backlog or not (delivery.mode == "pong" or delivery.echo)  # type: ignore[union-attr]
                or not self.gate.open):
            self._start_writer_greenlet()
            return
        try:
            data, taken, wait, _ = self._batch()
            if data:
                buf = b"".join(data)
                try:
                    sent = sock.send(buf, 0, 0.0)  # a timeout of 0: never waits
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    log.info("irc %s: write failed: %s", self.label, exc)
                    _shut_down(sock)  # the connection starts over (and sends them again)
                    return
                if sent < len(buf):
                    self._backlog = buf[sent:]
        except Exception:  # never in the hub: the connection starts over, unconfirmed lines kept
            log.exception("irc %s: writing from the hub failed", self.label)
            _shut_down(sock)
            return
        if self._backlog or wait > 0 or len(taken) >= WRITE_BATCH or self._urgent:
            self._start_writer_greenlet()
        else:
            self._drained.set()

    def _write_until_drained(self, sock: socket.socket) -> None:
        queue, gate = self.queue, self.gate
        delivery = self.delivery
        while True:
            queue.wake.clear()
            while True:
                data, taken, wait, confirm_later = self._batch()
                if data:
                    try:
                        _send_all(sock, b"".join(data))
                    except OSError as exc:
                        if not confirm_later:
                            queue.put_front(taken)
                        log.info("irc %s: write failed: %s", self.label, exc)
                        _shut_down(sock)  # the connection starts over
                        return
                if not confirm_later:
                    delivery.written_all(taken)
                if wait > 0:  # the bucket is empty: wait for its next token (or an urgent line)
                    queue.wake.wait(wait)
                    queue.wake.clear()
                    continue
                if not data and not taken:
                    break
            if self.registered and not gate.open and queue.has_ready():
                # the speak gate holds the rooms' lines: wait for it to open (or for urgent lines)
                gevent.wait([queue.wake, gate.opened], count=1)
                continue
            self._drained.set()
            # idle: what is queued meanwhile is written from the hub (``_flush``), which wakes this
            # writer only for what it cannot finish
            linger = self._linger = gevent.event.Event()
            try:
                woke = set_within(linger, WRITER_LINGER)
            finally:
                if self._linger is linger:
                    self._linger = None
            if not woke:
                return  # quiet for a while: the next line starts a new writer

    def _delivered(self, seat: Seat, line: OutLine) -> None:
        """The server has the line: the command it ends leaves the in-flight list (also when the
        room has left meanwhile: it was sent)."""
        self._confirmed += 1
        if line.command is not None:
            seat.room.ack(line.command)
        if line.on_sent is not None:
            line.on_sent()

    # ------------------------------------------------------------------------------------- parsing
    def _handle_line(self, line: str) -> None:
        fast = parse_privmsg(line)
        if fast is not None:  # text to a channel, the commonest line: no Message, one encode
            source, nick, target, text = fast
            folded = self.fold(nick)
            if folded != self._folded_nick and self.channels.on_channel_text(source, nick, folded, target, text):
                return
        msg = parse(line)
        if msg is None:
            return
        entry = _BY_COMMAND.get(msg.command)
        if entry is None:
            return
        part, handler = entry
        target = self if part is None else part(self)
        if target is not None:
            handler(target, msg)

    def on_ping(self, msg: Message) -> None:
        self.send_urgent([pong_line(msg.params[0] if msg.params else "")])

    def on_pong(self, msg: Message) -> None:
        if msg.params and self.delivery.on_pong(msg.params[-1]):
            self._wake_writer()  # lines written meanwhile are owed their own PING

    def on_privmsg(self, msg: Message) -> None:
        nick = msg.nick
        if nick is None or len(msg.params) < 2:
            return
        folded = self.fold(nick)
        if folded == self._folded_nick:
            if self.delivery.echo:  # echo-message: the server confirms our line
                self.delivery.on_echo()
            return
        self.channels.on_privmsg(nick, folded, msg)

    def on_nick(self, msg: Message) -> None:
        if msg.params and self.is_me(msg.nick):
            if valid_server_nick(msg.params[0]):
                self.nick = msg.params[0]
        else:
            self.channels.on_nick(msg)

    def on_error(self, msg: Message) -> None:
        message = msg.params[-1] if msg.params else ""
        log.warning("irc %s: server said ERROR %s", self.label, message[:300])
        if self.registration is not None and not self._closing.is_set():
            self.registration.on_error(message)
        if self._lost_reason is None:
            self._lost_reason = "the server closed the link: " + cut(message)
        if self.registered and not self._flood_seen and flood_disconnect(message):
            self._flood_seen = True  # once per connection, however many ERROR lines a server sends
            learn_flood(self, message)

    def on_cap(self, msg: Message) -> None:
        """CAP during registration is the registration's; after it, a ``CAP DEL`` (servers send it to
        clients of ``CAP LS 302``) turns an identity capability off."""
        if self.registration is not None:
            self.registration.on_cap(msg)
        elif len(msg.params) >= 3 and msg.params[1].upper() == "DEL" and self.identity is not None:
            for cap in msg.params[-1].split():
                self.identity.enable(cap, False)

    def on_isupport(self, msg: Message) -> None:
        """005: the server's channel limit and case mapping (``irc_limits.apply_isupport``)."""
        apply_isupport(self, msg)


_registration = attrgetter("registration")
_channels = attrgetter("channels")

#: every server line we act on, by its ``irc.events`` name: (the part that handles it, or None for
#: the session itself; the handler). A part that is gone (``registration`` after 001) ignores its lines.
DISPATCH: dict[str, tuple[Optional[Callable[[IrcSession], Any]], Callable[[Any, Message], None]]] = {
    # the connection
    "ping": (None, IrcSession.on_ping),
    "pong": (None, IrcSession.on_pong),
    "privmsg": (None, IrcSession.on_privmsg),
    "nick": (None, IrcSession.on_nick),
    "error": (None, IrcSession.on_error),
    "cap": (None, IrcSession.on_cap),
    "featurelist": (None, IrcSession.on_isupport),
    # registration
    "authenticate": (_registration, Registration.on_authenticate),
    "welcome": (_registration, Registration.on_welcome),
    "saslsuccess": (_registration, Registration.on_sasl_ok),
    "saslalready": (_registration, Registration.on_sasl_ok),
    "nicklocked": (_registration, Registration.on_sasl_failed),
    "saslfail": (_registration, Registration.on_sasl_failed),
    "sasltoolong": (_registration, Registration.on_sasl_failed),
    "saslaborted": (_registration, Registration.on_sasl_failed),
    "saslmechs": (_registration, Registration.on_sasl_failed),
    "passwdmismatch": (_registration, Registration.on_password_mismatch),
    "erroneusnickname": (_registration, Registration.on_nick_taken),
    "nicknameinuse": (_registration, Registration.on_nick_taken),
    "nickcollision": (_registration, Registration.on_nick_taken),
    "unavailresource": (_registration, Registration.on_nick_taken),
    "unknowncommand": (_registration, Registration.on_unknown_command),
    # channels
    "join": (_channels, IrcChannels.on_join),
    "namreply": (_channels, IrcChannels.on_namreply),
    "part": (_channels, IrcChannels.on_part),
    "kick": (_channels, IrcChannels.on_kick),
    "quit": (_channels, IrcChannels.on_quit),
    "topic": (_channels, IrcChannels.on_topic),
    "currenttopic": (_channels, IrcChannels.on_currenttopic),
    "account": (_channels, IrcChannels.on_account),
    "toomanychannels": (_channels, IrcChannels.on_too_many_channels),
    **{name: (_channels, IrcChannels.on_join_refused) for name in (
        "nosuchchannel", "channelisfull", "inviteonlychan", "bannedfromchan",
        "badchannelkey", "badchanmask", "nochanmodes", "badchanname", "secureonlychan")},
}


def _by_command(table: dict) -> dict:
    """The table keyed by the command as it arrives (``"433"``, ``"PRIVMSG"``): one lookup per line."""
    return {command: entry for name, entry in table.items() for command in commands_named(name)}


_BY_COMMAND = _by_command(DISPATCH)
