"""A raw-socket IRC client for tests: it records exactly what the server sends, line by line.

A background reader (a real thread, or a greenlet once gevent has monkey-patched ``threading``)
appends every line to ``lines`` and answers PING. Waits use a ``threading.Condition``.

``expect()`` works on a cursor: it scans the lines after the cursor, returns the first match and
moves the cursor just past it, so every line up to the match counts as consumed and is never matched
again (it also checks the order in which things arrived). ``connect()`` and ``join()`` move the cursor
too (past 001 and 366); ``lines`` always keeps everything.

IRCv3: ``caps=("account-tag", "message-tags", ...)`` negotiates capabilities (``CAP LS 302``, then
``CAP REQ`` for those offered, before registration: ``cap_ls`` holds what the server offered with
its values, ``caps`` what it acknowledged) and ``sasl=(account, password)`` logs in with SASL PLAIN
before registration (``sasl_replies``: the 900/903 lines; a refusal raises AssertionError with the
numeric, e.g. 904). Parsed lines carry their message tags in ``IrcLine.tags`` (unescaped).

``Observer`` is the other kind of test user: one that watches what the bot does, in many channels at
once, with each line's arrival time (``IrcLine.t``) for measuring rates and pauses. It has no cursor:
``wait()`` scans from the start (or a given index), ``from_nick()`` and ``privmsgs()`` filter
everything received. It runs on gevent (the fault tests' greenlets).
"""

from __future__ import annotations

import base64
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Pattern, Sequence, Union

import gevent

CONNECT_TIMEOUT = 10.0

#: numerics/commands that end a registration attempt without 001
_REGISTRATION_ERRORS = {"432", "433", "436", "464", "465", "ERROR"}
#: numerics that end a SASL exchange (903: success)
_SASL_ENDS = {"903", "902", "904", "905", "906", "907", "908"}
#: numerics that refuse a JOIN
_JOIN_ERRORS = {"403", "405", "437", "471", "473", "474", "475", "476", "477", "489"}


@dataclass(eq=False)
class IrcLine:
    """One line from the server, parsed (IRCv3 message tags in ``tags``, unescaped; "" for a bare key);
    ``t``: when it arrived (monotonic; set by ``Observer``). Equal only to itself (a line received
    twice is two lines)."""

    raw: str
    prefix: str = ""
    nick: str = ""
    command: str = ""
    params: list[str] = field(default_factory=list)
    text: str = ""  # the last parameter, or ""
    tags: dict[str, str] = field(default_factory=dict)
    t: float = 0.0

    @property
    def cmd(self) -> str:
        return self.command

    @property
    def target(self) -> str:
        """The first parameter (a PRIVMSG's channel or nick), or ""."""
        return self.params[0] if self.params else ""


_TAG_ESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def _unescape_tag(value: str) -> str:
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append(_TAG_ESCAPES.get(nxt, nxt))
        else:
            out.append(char)
    return "".join(out)


def parse_tags(text: str) -> dict[str, str]:
    """``a=1;b;c=x\\sy`` -> ``{"a": "1", "b": "", "c": "x y"}``."""
    tags: dict[str, str] = {}
    for item in text.split(";"):
        if item:
            key, _, value = item.partition("=")
            tags[key] = _unescape_tag(value)
    return tags


def parse_line(raw: str) -> IrcLine:
    """Split ``[@tags] [:prefix] COMMAND params... [:trailing]``."""
    rest = raw
    tags: dict[str, str] = {}
    if rest.startswith("@"):
        tag_text, _, rest = rest.partition(" ")
        tags = parse_tags(tag_text[1:])
    prefix = ""
    if rest.startswith(":"):
        prefix, _, rest = rest[1:].partition(" ")
    rest = rest.lstrip(" ")
    trailing: Optional[str] = None
    if " :" in rest:
        rest, _, trailing = rest.partition(" :")
    elif rest.startswith(":"):
        rest, trailing = "", rest[1:]
    words = rest.split()
    command = words[0].upper() if words else ""
    params = words[1:] + ([trailing] if trailing is not None else [])
    return IrcLine(raw=raw, prefix=prefix, nick=prefix.split("!", 1)[0].split("@", 1)[0] if prefix else "",
                   command=command, params=params, text=params[-1] if params else "", tags=tags)


Matcher = Union[str, Pattern[str], Callable[[IrcLine], bool]]


def _predicate(pattern: Matcher) -> Callable[[IrcLine], bool]:
    if callable(pattern) and not isinstance(pattern, re.Pattern):
        return pattern
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    return lambda line: regex.search(line.raw) is not None


class IrcTestClient:
    """A test user on an IRC server: ``connect()``, ``join()``, ``privmsg()``, ``expect()``."""

    def __init__(self, host: str, port: int, nick: str, password: Optional[str] = None,
                 username: Optional[str] = None, realname: str = "greenroom test client",
                 caps: Sequence[str] = (), sasl: Optional[tuple[str, str]] = None) -> None:
        self.host, self.port = host, port
        self.nick = nick
        self.password = password
        self.username = username or nick[:10]
        self.realname = realname
        self.want_caps = tuple(caps)
        self.sasl = sasl
        self.cap_ls: dict[str, str] = {}  # what the server offered (CAP LS 302), with values
        self.caps: set[str] = set()  # what it acknowledged
        self.sasl_replies: list[IrcLine] = []  # 900 (logged in as ...) and 903 (success)
        self.lines: list[str] = []
        self.parsed: list[IrcLine] = []
        self.closed = False  # the connection ended (EOF, error or close())
        self._cursor = 0
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._reader: Optional[threading.Thread] = None

    # -- connection ----------------------------------------------------------------------------------
    def connect(self, timeout: float = CONNECT_TIMEOUT) -> "IrcTestClient":
        """Connect (retrying "connection refused"), register, return after 001."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=max(0.1, deadline - time.monotonic()))
                break
            except (ConnectionRefusedError, ConnectionResetError, socket.timeout):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)  # the listen backlog is full or the server is still starting
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, name=f"irc-reader-{self.nick}", daemon=True)
        self._reader.start()
        try:
            negotiate = bool(self.want_caps or self.sasl)
            if negotiate:
                self.send_raw("CAP LS 302")
            if self.password:
                self.send_raw(f"PASS {self.password}")
            self.send_raw(f"NICK {self.nick}")
            self.send_raw(f"USER {self.username} 0 * :{self.realname}")
            if negotiate:
                self._negotiate(deadline)
            reply = self.expect(lambda ln: ln.command == "001" or ln.command in _REGISTRATION_ERRORS,
                                timeout=max(0.1, deadline - time.monotonic()))
            if reply.command != "001":
                raise AssertionError(f"{self.nick}: registration refused: {reply.raw}")
        except BaseException:
            self.close()
            raise
        return self

    def _negotiate(self, deadline: float) -> None:
        """CAP LS 302 (already sent) -> CAP REQ what is offered -> SASL PLAIN -> CAP END."""
        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        while True:  # CAP * LS * :a b ... (continued) ... CAP * LS :y z (the last line)
            line = self.expect(lambda ln: (ln.command == "CAP" and ln.params[1:2] == ["LS"])
                               or ln.command in _REGISTRATION_ERRORS, timeout=left())
            if line.command != "CAP":
                raise AssertionError(f"{self.nick}: registration refused: {line.raw}")
            for item in line.text.split():
                key, _, value = item.partition("=")
                self.cap_ls[key] = value
            if line.params[2:3] != ["*"]:
                break
        wanted = [cap for cap in self.want_caps if cap in self.cap_ls]
        if self.sasl:
            if "sasl" not in self.cap_ls:
                raise AssertionError(f"{self.nick}: the server offers no sasl (services not linked?): "
                                     f"{sorted(self.cap_ls)}")
            wanted.append("sasl")
        if wanted:
            self.send_raw(f"CAP REQ :{' '.join(dict.fromkeys(wanted))}")
            line = self.expect(lambda ln: ln.command == "CAP" and ln.params[1:2] in (["ACK"], ["NAK"]),
                               timeout=left())
            if line.params[1] == "ACK":
                self.caps.update(cap.lstrip("-=~") for cap in line.text.split())
        if self.sasl:
            account, secret = self.sasl
            self.send_raw("AUTHENTICATE PLAIN")
            line = self.expect(lambda ln: ln.command == "AUTHENTICATE" or ln.command in _SASL_ENDS,
                               timeout=left())
            if line.command == "AUTHENTICATE":
                token = base64.b64encode(f"{account}\0{account}\0{secret}".encode()).decode()
                for start in range(0, len(token), 400):
                    self.send_raw(f"AUTHENTICATE {token[start:start + 400]}")
                if len(token) % 400 == 0:
                    self.send_raw("AUTHENTICATE +")
                line = self.expect(lambda ln: ln.command in _SASL_ENDS, timeout=left())
            self.sasl_replies = [ln for ln in self.parsed if ln.command in ("900", "903")]
            if line.command != "903":
                raise AssertionError(f"{self.nick}: SASL refused: {line.raw}")
        self.send_raw("CAP END")

    def close(self, message: str = "bye") -> None:
        """QUIT and close the socket (idempotent)."""
        sock = self._sock
        if sock is None:
            return
        if not self.closed:
            try:
                self.send_raw(f"QUIT :{message}")
            except OSError:
                pass
            with self._cond:  # the server answers QUIT with ERROR and closes the connection
                self._cond.wait_for(lambda: self.closed, timeout=2.0)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv() (plain threads)
        except OSError:
            pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(2.0)
        sock.close()
        self._sock = None

    def __enter__(self) -> "IrcTestClient":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ------------------------------------------------------------------------------------
    def send_raw(self, line: str) -> None:
        """Send ``line`` + CRLF as UTF-8, unchanged otherwise."""
        if self._sock is None:
            raise AssertionError(f"{self.nick}: not connected")
        with self._send_lock:
            self._sock.sendall(line.encode("utf-8") + b"\r\n")

    def privmsg(self, target: str, text: str) -> None:
        self.send_raw(f"PRIVMSG {target} :{text}")

    def join(self, channel: str, key: Optional[str] = None, timeout: float = 10.0) -> IrcLine:
        """JOIN and return the end of the NAMES list (366); a refusal raises AssertionError."""
        self.send_raw(f"JOIN {channel} {key}" if key else f"JOIN {channel}")
        wanted = channel.lower()

        def done(ln: IrcLine) -> bool:
            if ln.command == "366":
                return len(ln.params) > 1 and ln.params[1].lower() == wanted
            return ln.command in _JOIN_ERRORS and len(ln.params) > 1 and ln.params[1].lower() == wanted

        reply = self.expect(done, timeout=timeout)
        if reply.command != "366":
            raise AssertionError(f"{self.nick}: JOIN {channel} refused: {reply.raw}")
        return reply

    def part(self, channel: str, reason: str = "") -> None:
        self.send_raw(f"PART {channel} :{reason}" if reason else f"PART {channel}")

    # -- waiting ------------------------------------------------------------------------------------
    def expect(self, pattern: Matcher, timeout: float = 5.0) -> IrcLine:
        """The first line after the cursor that matches; the cursor moves past it.

        ``pattern``: a regex (str or compiled) searched in the raw line, or a predicate on ``IrcLine``.
        Raises AssertionError (with the last 20 lines) on timeout or when the connection ended first.
        """
        match = _predicate(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            index = self._cursor
            while True:
                while index < len(self.parsed):
                    line = self.parsed[index]
                    index += 1
                    if match(line):
                        self._cursor = index
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    why = "the connection closed" if self.closed else f"{timeout}s passed"
                    raise AssertionError(f"{self.nick}: no line matching {_describe(pattern)}; {why}. "
                                         f"Last lines:\n{self._last(20)}")
                self._cond.wait(left)

    def wait_for_count(self, pattern: Matcher, n: int, timeout: float = 5.0) -> list[IrcLine]:
        """Once ``n`` lines after the cursor match, all matching lines there; the cursor moves past them."""
        match = _predicate(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            found: list[IrcLine] = []
            index = end = self._cursor
            while True:
                while index < len(self.parsed):
                    index += 1
                    if match(self.parsed[index - 1]):
                        found.append(self.parsed[index - 1])
                        end = index
                if len(found) >= n:
                    self._cursor = end
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    why = "the connection closed" if self.closed else f"{timeout}s passed"
                    raise AssertionError(f"{self.nick}: {len(found)} of {n} lines matching {_describe(pattern)}; "
                                         f"{why}. Last lines:\n{self._last(20)}")
                self._cond.wait(left)

    def _last(self, n: int) -> str:
        return "\n".join(self.lines[-n:]) or "(nothing received)"

    # -- reading ------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buffer = b""
        sock = self._sock
        try:
            while sock is not None:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for data in complete:
                    self._received(data.rstrip(b"\r").decode("utf-8", errors="replace"))
        except OSError:
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def _received(self, raw: str) -> None:
        line = parse_line(raw)
        if line.command == "PING":
            try:
                self.send_raw(f"PONG :{line.text}")
            except OSError:
                pass
        elif line.command == "001" and line.params:  # the nick the server registered us with
            self.nick = line.params[0]
        elif line.command == "NICK" and line.nick.lower() == self.nick.lower() and line.params:
            self.nick = line.params[0]
        with self._cond:
            self.lines.append(raw)
            self.parsed.append(line)
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"<IrcTestClient {self.nick} {self.host}:{self.port} lines={len(self.lines)}>"


def _describe(pattern: Matcher) -> str:
    if isinstance(pattern, re.Pattern):
        return repr(pattern.pattern)
    if isinstance(pattern, str):
        return repr(pattern)
    return getattr(pattern, "__name__", "a predicate")


class Observer:
    """A raw IRC client for watching what the bot does, with arrival times.

    ``lines`` holds every line from the server (``IrcLine``, ``t`` set), in order. The reader greenlet
    answers PING itself. ``from_nick(nick)`` filters lines whose prefix is that nick (case-insensitive).
    """

    def __init__(self, host: str, port: int, nick: str, channels: Iterable[str] = (),
                 timeout: float = 15.0) -> None:
        self.host, self.port, self.nick = host, port, nick
        self.lines: list[IrcLine] = []
        self.closed = False
        self._buf = b""
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.settimeout(None)
        self._reader = gevent.spawn(self._read)
        self.send_raw(f"NICK {nick}")
        self.send_raw(f"USER {nick[:10]} 0 * :observer")
        self.wait(lambda ln: ln.cmd == "001", timeout, what=f"{nick} registered")
        chans = list(channels)
        for start in range(0, len(chans), 20):
            self.join(*chans[start:start + 20], timeout=timeout)

    # ------------------------------------------------------------------------------- sending
    def send_raw(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        self._sock.sendall(data + b"\r\n")

    def send_many(self, lines: list[bytes]) -> None:
        self._sock.sendall(b"".join(line + b"\r\n" for line in lines))

    def privmsg(self, target: str, text: str) -> None:
        self.send_raw(f"PRIVMSG {target} :{text}")

    def join(self, *channels: str, timeout: float = 15.0) -> None:
        self.send_raw("JOIN " + ",".join(channels))
        want = {c.lower() for c in channels}
        done: set[str] = set()

        def joined(ln: IrcLine) -> bool:
            if ln.cmd == "366" and len(ln.params) > 1 and ln.params[1].lower() in want:
                done.add(ln.params[1].lower())
            return done >= want
        self.wait(joined, timeout, what=f"{self.nick} joined {channels}", from_start=True)

    # ------------------------------------------------------------------------------- reading
    def _read(self) -> None:
        sock = self._sock
        while True:
            try:
                data = sock.recv(262144)
            except OSError:
                break
            if not data:
                break
            now = time.monotonic()
            buf = self._buf + data
            *complete, self._buf = buf.split(b"\r\n")
            pongs = []
            for raw in complete:
                if not raw:
                    continue
                line = parse_line(raw.decode("utf-8", "replace"))
                line.t = now
                if line.cmd == "PING":
                    pongs.append(b"PONG :" + (line.params[0].encode() if line.params else b"x"))
                self.lines.append(line)
            if pongs:
                try:
                    self.send_many(pongs)
                except OSError:
                    break
        self.closed = True

    def wait(self, pred: Callable[[IrcLine], bool], timeout: float = 10.0, *, what: str = "a line",
             from_start: bool = False, start: int | None = None) -> IrcLine:
        """The first line (from ``start``, default: any) matching ``pred``, waiting up to ``timeout``."""
        index = 0 if (from_start or start is None) else start
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines
            while index < len(lines):
                if pred(lines[index]):
                    return lines[index]
                index += 1
            if time.monotonic() >= deadline:
                tail = [ln.raw for ln in self.lines[-8:]]
                raise AssertionError(f"{self.nick}: no line for {what} within {timeout}s; last: {tail}")
            if self.closed:
                raise AssertionError(f"{self.nick}: connection closed while waiting for {what}")
            gevent.sleep(0.02)

    def from_nick(self, nick: str) -> list[IrcLine]:
        n = nick.lower()
        return [ln for ln in self.lines if ln.nick.lower() == n]

    def privmsgs(self, channel: str | None = None, sender: str | None = None) -> list[IrcLine]:
        c = channel.lower() if channel else None
        s = sender.lower() if sender else None
        return [ln for ln in self.lines if ln.cmd == "PRIVMSG"
                and (c is None or ln.target.lower() == c) and (s is None or ln.nick.lower() == s)]

    def close(self) -> None:
        if not self.closed:
            try:
                self.send_raw("QUIT :observer done")
            except OSError:
                pass
        self.closed = True
        try:
            self._sock.close()
        except OSError:
            pass
        self._reader.kill(block=True, timeout=2)
