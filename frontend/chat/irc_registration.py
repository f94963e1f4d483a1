"""IRC registration: from the TCP connection to 001 (welcome): PASS, NICK/USER, IRCv3 CAP, SASL PLAIN,
and nick fallbacks when the nick is taken.

A ``Registration`` exists only while one attempt runs (the session drops it at 001, so a registered
connection carries none of this state). An attempt is bounded: at most ``MAX_NICK_ATTEMPTS`` nicks
(``nick``, ``nick_``, ``nick__``, ``nick1``, ...), then it fails like a refused login (every room
hears ``join_failed``, the connection backs off and tries again later); and the session gives the
whole attempt ``connect_timeout`` seconds (a hub timer, however the server dribbles its replies).
What the server offers in ``CAP LS`` is kept only for the capabilities we use.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Protocol

from .base import LoginFailed
from .irc_format import connection_nick, nick_candidates, sasl_plain_lines, valid_server_nick
from .irc_identity import IDENTITY_CAPS
from .irc_wire import Message



class RegistrationHost(Protocol):
    """What registration uses of the IRC session it registers (``irc.IrcSession``)."""

    label: str
    spec: Any
    nick: str
    delivery: Any
    index: int

    def send_urgent(self, lines: list[bytes]) -> None: ...
    def registered_as(self, nick: str) -> None: ...
    def cap_acked(self, cap: str) -> None: ...

log = logging.getLogger(__name__)

#: nicks tried per registration before it counts as failed
MAX_NICK_ATTEMPTS = 10
#: the capabilities we may request; what else a server lists is not kept
KNOWN_CAPS = frozenset({"echo-message", "sasl", *IDENTITY_CAPS})
#: the longest server text repeated in a room's state or an error event
_MAX_REASON = 300


class Registration:
    """One registration attempt on one connection."""

    __slots__ = ("session", "nicks", "tried", "sasl_pending", "cap_waiting", "cap_ended", "offered")

    def __init__(self, session: RegistrationHost) -> None:
        self.session = session
        self.nicks: Iterator[str] = nick_candidates(connection_nick(session.spec.nick, session.index))
        self.tried = 0
        self.sasl_pending = session.spec.sasl_username is not None
        #: capabilities requested and neither acknowledged nor refused yet
        self.cap_waiting: set[str] = set()
        self.cap_ended = False
        self.offered: set[str] = set()

    def first_lines(self) -> list[bytes]:
        """What the client says first: CAP LS, PASS (a trailing parameter: it may start with ':'),
        NICK and USER."""
        spec = self.session.spec
        nick = self._next_nick()
        lines = [b"CAP LS 302\r\n"]
        if spec.password:
            lines.append(b"PASS :" + spec.password.encode("utf-8") + b"\r\n")
        lines.append(f"NICK {nick}\r\n".encode())
        lines.append(f"USER {spec.nick[:10]} 0 * :greenroom\r\n".encode())
        return lines

    def _next_nick(self) -> str:
        self.tried += 1
        nick = next(self.nicks)
        self.session.nick = nick
        return nick

    # ------------------------------------------------------------------------------ server lines
    def on_cap(self, msg: Message) -> None:
        args = msg.params
        if len(args) < 3:
            return
        sub = args[1].upper()
        caps = args[-1].split()
        session = self.session
        if sub == "LS":
            self.offered.update(c.split("=", 1)[0] for c in caps if c.split("=", 1)[0] in KNOWN_CAPS)
            if len(args) > 3 and args[2] == "*":
                return  # more LS lines follow
            # the identity capabilities in one request (servers count every command against flood
            # limits), echo-message and sasl each in its own (a refusal of one never costs the others)
            self._request([cap for cap in IDENTITY_CAPS if cap in self.offered])
            # echo-message confirms delivery; with irc_ack = "write" nothing waits for it, and every
            # echoed line would be read and parsed for nothing
            if "echo-message" in self.offered and session.delivery.mode == "pong":
                self._request(["echo-message"])
            if self.sasl_pending:
                if "sasl" not in self.offered:
                    self.fail("the server does not offer SASL")
                self._request(["sasl"])
        elif sub == "ACK":
            for cap in caps:
                if cap.startswith("-"):  # CAP 302: disabled (we never ask for that)
                    self.cap_waiting.discard(cap[1:])
                    continue
                cap = cap.lstrip("~=")
                self.cap_waiting.discard(cap)
                if cap == "sasl":
                    session.send_urgent([b"AUTHENTICATE PLAIN\r\n"])
                elif cap == "echo-message":
                    session.delivery.echo = True
                elif cap in IDENTITY_CAPS:
                    session.cap_acked(cap)
        elif sub == "NAK":
            refused = [cap for cap in caps if cap in self.cap_waiting]
            self.cap_waiting.difference_update(refused)
            if len(refused) > 1:  # a request is all or nothing: ask for each on its own
                for cap in refused:
                    self._request([cap])
            elif "sasl" in refused:
                self.fail("the server refused the SASL capability")
        self._maybe_cap_end()

    def _request(self, caps: list[str]) -> None:
        if caps:
            self.cap_waiting.update(caps)
            self.session.send_urgent([("CAP REQ :" + " ".join(caps) + "\r\n").encode()])

    def _maybe_cap_end(self) -> None:
        if not self.cap_waiting and not self.sasl_pending and not self.cap_ended:
            self.cap_ended = True
            self.session.send_urgent([b"CAP END\r\n"])

    def on_authenticate(self, msg: Message) -> None:
        spec = self.session.spec
        if msg.params and msg.params[0] == "+" and spec.sasl_username:
            self.session.send_urgent(sasl_plain_lines(spec.sasl_username, spec.sasl_password or ""))

    def on_sasl_ok(self, msg: Message) -> None:
        self.sasl_pending = False
        self._maybe_cap_end()

    def on_sasl_failed(self, msg: Message) -> None:
        self.fail(f"SASL authentication failed ({_cut(msg.params[-1]) if msg.params else 'no reason'})")

    def on_password_mismatch(self, msg: Message) -> None:
        self.fail("the server refused the password")

    def on_nick_taken(self, msg: Message) -> None:
        taken = self.session.nick
        if self.tried >= MAX_NICK_ATTEMPTS:
            self.fail(f"no free nick: {taken} and {self.tried - 1} other nicks tried are taken or refused")
        nick = self._next_nick()
        log.debug("irc %s: nick %s taken, trying %s", self.session.label, taken, nick)
        self.session.send_urgent([f"NICK {nick}\r\n".encode()])

    def on_unknown_command(self, msg: Message) -> None:
        if len(msg.params) >= 2 and msg.params[1].upper() == "CAP" and self.sasl_pending:
            self.fail("the server does not support capabilities, so no SASL")

    def on_welcome(self, msg: Message) -> None:
        nick = msg.params[0] if msg.params else ""
        self.session.registered_as(nick if valid_server_nick(nick) else self.session.nick)

    def on_error(self, message: str) -> None:
        """ERROR before 001: a wrong server password on ngircd, a ban, a full server."""
        raise LoginFailed(f"the server refused the connection: {_cut(message)}")

    def fail(self, why: str) -> None:
        self.session.send_urgent([b"QUIT :login failed\r\n"])
        raise LoginFailed(why)


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."
