"""SASL PLAIN and IRCv3 capability negotiation over a real socket.

No Debian IRC server authenticates SASL without a services package, so the server side here is a
scripted peer: a gevent StreamServer on loopback that speaks the exact IRCv3 exchange and records
every line the frontend sends. It checks our bytes, not a mock of our code.
"""

import base64

import gevent
import pytest
from gevent.server import StreamServer

from tests.support.events import EventLog
from tests.support.frontend import held, push, running_frontend

pytestmark = pytest.mark.e2e


class SaslIrcd:
    """Accepts one registration at a time; SASL succeeds for (user, password) only."""

    def __init__(self, user: str, password: str, caps: str = "sasl echo-message") -> None:
        self.user, self.password, self.caps = user, password, caps
        self.received: list[str] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)

    def start(self) -> "SaslIrcd":
        self.server.start()
        return self

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def _handle(self, sock, address) -> None:
        f = sock.makefile("rb")
        nick = "?"

        def send(line: str) -> None:
            sock.sendall(line.encode() + b"\r\n")

        for raw in f:
            line = raw.decode().rstrip("\r\n")
            self.received.append(line)
            verb, _, rest = line.partition(" ")
            if verb == "CAP" and rest.startswith("LS"):
                send(f":scripted CAP * LS :{self.caps}")
            elif verb == "CAP" and rest.startswith("REQ"):
                send(f":scripted CAP * ACK :{rest.split(':', 1)[1]}")
            elif verb == "AUTHENTICATE" and rest == "PLAIN":
                send("AUTHENTICATE +")
            elif verb == "AUTHENTICATE":
                authz, user, password = base64.b64decode(rest).decode().split("\0")
                if (user, password) == (self.user, self.password):
                    send(f":scripted 900 {nick} {nick}!u@h {user} :You are now logged in")
                    send(f":scripted 903 {nick} :SASL authentication successful")
                else:
                    send(f":scripted 904 {nick} :SASL authentication failed")
            elif verb == "NICK":
                nick = rest
            elif verb == "CAP" and rest == "END":
                send(f":scripted 001 {nick} :Welcome")
            elif verb == "JOIN":
                for channel in rest.split()[0].split(","):
                    send(f":{nick}!u@127.0.0.1 JOIN {channel}")
            elif verb == "PRIVMSG" and "echo-message" in self.caps:
                send(f":{nick}!u@127.0.0.1 {line}")
            elif verb == "QUIT":
                break
        sock.close()


def spec(port: int, nick: str, password: str) -> dict:
    return {"protocol": "irc", "server": "127.0.0.1", "port": port, "nick": nick, "channel": "#sasl",
            "sasl": {"username": "botuser", "password": password}, "flood": False}


def test_sasl_plain_logs_in_and_echo_message_acks(redis_url, redis_client):
    ircd = SaslIrcd("botuser", "s3cret").start()
    try:
        events = EventLog(redis_client)
        with running_frontend(redis_url, frontend_id="sasl-fe"):
            push(redis_client, {"type": "join", "room": "s1", "spec": spec(ircd.port, "saslbot", "s3cret")})
            assert events.wait(type="joined", room="s1")["nick"] == "saslbot"
            push(redis_client, {"type": "say", "room": "s1", "text": "logged in"})
            with gevent.Timeout(5):
                while not any(line == "PRIVMSG #sasl :logged in" for line in ircd.received):
                    gevent.sleep(0.05)
            with gevent.Timeout(5):  # acknowledged once the server echoed the line back
                while held(redis_client, "sasl-fe"):
                    gevent.sleep(0.05)
        sent = ircd.received
        assert sent[0] == "CAP LS 302"
        assert "CAP REQ :sasl" in sent and "CAP REQ :echo-message" in sent
        assert sent.index("AUTHENTICATE PLAIN") < sent.index("CAP END")
        assert not any("s3cret" in line for line in sent if not line.startswith("AUTHENTICATE "))
    finally:
        ircd.stop()


def test_with_irc_ack_write_echo_message_is_not_requested(redis_url, redis_client):
    """Nothing waits for echoes when a write counts as delivery: asking for them would only cost reads."""
    ircd = SaslIrcd("botuser", "s3cret").start()
    try:
        events = EventLog(redis_client)
        with running_frontend(redis_url, frontend_id="write-fe", irc_ack="write"):
            push(redis_client, {"type": "join", "room": "s4", "spec": spec(ircd.port, "writebot", "s3cret")})
            events.wait(type="joined", room="s4")
            push(redis_client, {"type": "say", "room": "s4", "text": "no echo"})
            with gevent.Timeout(5):
                while not any(line == "PRIVMSG #sasl :no echo" for line in ircd.received):
                    gevent.sleep(0.05)
            with gevent.Timeout(5):  # acknowledged once written
                while held(redis_client, "write-fe"):
                    gevent.sleep(0.05)
        assert "CAP REQ :sasl" in ircd.received
        assert not any("echo-message" in line for line in ircd.received if line.startswith("CAP REQ"))
    finally:
        ircd.stop()


def test_sasl_failure_is_reported_as_join_failed(redis_url, redis_client):
    ircd = SaslIrcd("botuser", "s3cret").start()
    try:
        events = EventLog(redis_client)
        with running_frontend(redis_url):
            push(redis_client, {"type": "join", "room": "s2", "spec": spec(ircd.port, "saslbad", "wrong")})
            error = events.wait(type="error", room="s2")
            assert error["code"] == "join_failed" and "SASL" in error["detail"]
            assert "wrong" not in error["detail"]
    finally:
        ircd.stop()


def test_sasl_required_but_not_offered(redis_url, redis_client):
    ircd = SaslIrcd("botuser", "s3cret", caps="multi-prefix").start()
    try:
        events = EventLog(redis_client)
        with running_frontend(redis_url):
            push(redis_client, {"type": "join", "room": "s3", "spec": spec(ircd.port, "saslno", "s3cret")})
            error = events.wait(type="error", room="s3")
            assert error["code"] == "join_failed" and "does not offer SASL" in error["detail"]
    finally:
        ircd.stop()
