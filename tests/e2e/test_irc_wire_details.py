"""Issue 13, item 10, through the real ngircd: a server password starting with ':' arrives whole, and
``to`` may name a network service only where that cannot act for another tenant.

ngircd has no services; a test user named ``NickServ`` stands in for them (what matters is whether
the bot's line reaches that nick on the wire).
"""

from __future__ import annotations

import pytest

from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.names import uniq
from tests.support.servers import NgircdServer, _connect, _has_reply

pytestmark = pytest.mark.e2e


class ColonPasswordNgircd(NgircdServer):
    """ngircd whose readiness probe sends the password as a trailing parameter, as it must be sent
    when it starts with ':' (the shared probe sends it bare)."""

    def _ready(self) -> bool:
        with _connect(self.host, self.port) as sock:
            sock.sendall(f"PASS :{self.password}\r\nNICK probe{self.port}\r\nUSER probe 0 * :probe\r\n".encode())
            received = b""
            while not _has_reply(received, b"001"):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                received += chunk
            sock.sendall(b"QUIT :ready\r\n")
            return True


def test_a_server_password_starting_with_a_colon_is_sent_whole(redis_url, redis_client, tmp_path):
    server = ColonPasswordNgircd(str(tmp_path / "ircd"), password=":colon-secret")
    server.start()
    try:
        events = EventLog(redis_client)
        with running_frontend(redis_url, frontend_id=uniq("pw-")):
            push(redis_client, {"type": "join", "room": "pw", "spec": irc_spec(server, "#pw", nick="colonbot",
                                                                           password=":colon-secret")})
            assert events.wait(type="joined", room="pw", timeout=10)["nick"] == "colonbot"
    finally:
        server.stop()


def test_services_are_refused_on_a_connection_shared_across_tenants(redis_url, redis_client, ngircd, irc_client):
    services = irc_client("NickServ")
    events = EventLog(redis_client)
    nick = uniq("svc")
    with running_frontend(redis_url, frontend_id=uniq("svc-")):
        push(redis_client,
             {"type": "join", "room": "sa", "spec": irc_spec(ngircd, "#" + uniq("sva"), nick=nick, tenant="acme")},
             {"type": "join", "room": "sb", "spec": irc_spec(ngircd, "#" + uniq("svb"), nick=nick, tenant="globex")},
             {"type": "join", "room": "sc", "spec": irc_spec(ngircd, "#" + uniq("svc"), nick=nick, tenant="globex",
                                                             allow_services=True)})
        for room in ("sa", "sb", "sc"):
            events.wait(type="joined", room=room)
        push(redis_client, {"type": "say", "room": "sa", "to": "nickserv", "text": "DROP", "cmd_id": "refused"},
             {"type": "say", "room": "sc", "to": "NickServ", "text": "allowed-by-spec", "cmd_id": "allowed"},
             {"type": "say", "room": "sb", "to": services.nick, "text": "INFO", "cmd_id": "refused2"})
        error = events.wait(type="error", room="sa", cmd_id="refused")
        assert error["code"] == "bad_command" and "shared with rooms of other tenants" in error["detail"]
        assert events.wait(type="error", room="sb", cmd_id="refused2")["code"] == "bad_command"
        services.expect(rf":{nick}!\S+ PRIVMSG NickServ :allowed-by-spec$")
        push(redis_client, {"type": "part", "room": "sb"}, {"type": "part", "room": "sc"})
        events.wait(type="parted", room="sb")
        events.wait(type="parted", room="sc")
        # one tenant left on the connection: services may be addressed
        push(redis_client, {"type": "say", "room": "sa", "to": "NickServ", "text": "one tenant now"})
        services.expect(rf":{nick}!\S+ PRIVMSG NickServ :one tenant now$")
    assert not [line for line in services.lines if "DROP" in line or "INFO" in line]
