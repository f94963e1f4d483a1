"""IRC over TLS that explains itself (issue 16, item 3), against the real InspIRCd: its TLS port has
a certificate of the private test CA (``tls_pki``), which no system store trusts.

``tls_ca`` joins it; without it the room hears ``join_failed`` with the reason, once, and its state
says the same; rooms with other TLS settings never share a connection (a shared one would let a
verifying room in on an unverified connection); a certificate for another name and a plaintext
port say so too.
"""

from __future__ import annotations

import gevent
import pytest
import ujson

from tests.support.events import EventLog
from tests.support.frontend import push, running_frontend

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

UNKNOWN_ISSUER = ("the server's certificate is not trusted (its issuer is not among the system's trusted CAs; "
                  "set tls_ca or tls_verify=false) [certificate verify failed: unable to get local issuer certificate]")


def spec(server, port: int, nick: str, channel: str, **extra) -> dict:
    return {"protocol": "irc", "server": server.host, "port": port, "tls": True, "nick": nick,
            "channel": channel, "flood": False, **extra}


def state(redis_client, room: str) -> dict:
    raw = redis_client.hget("rooms:state", room)
    return ujson.loads(raw) if raw else {}


def wait_attempts(redis_client, room: str, n: int, timeout: float = 10.0) -> dict:
    with gevent.Timeout(timeout, AssertionError(f"{room}: fewer than {n} attempts: {state(redis_client, room)}")):
        while (state(redis_client, room).get("attempts") or 0) < n:
            gevent.sleep(0.05)
    return state(redis_client, room)


def test_tls_ca_joins_the_private_ca_server_and_talks(redis_url, redis_client, inspircd, inspircd_client, tls_pki):
    watcher = inspircd_client("tlswatch16")
    watcher.join("#tlsca")
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id="irc-tls-ca"):
        push(redis_client, {"type": "join", "room": "ca",
                            "spec": spec(inspircd, inspircd.tls_port, "cabot16", "#tlsca", tls_ca=tls_pki.ca_file)})
        events.wait(type="joined", room="ca")
        push(redis_client, {"type": "say", "room": "ca", "text": "verified by the private CA"})
        watcher.expect(r":cabot16!\S+ PRIVMSG #tlsca :verified by the private CA$")


def test_untrusted_certificate_is_join_failed_once_and_rooms_do_not_share(
        redis_url, redis_client, inspircd, tls_pki):
    """Three rooms, one nick, one server: with tls_ca (joins), with tls_verify false (joins), and
    verifying against the system's CAs (refused, with the reason): three connections."""
    events = EventLog(redis_client)
    port = inspircd.tls_port
    with running_frontend(redis_url, frontend_id="irc-tls-share", reconnect_min=0.1, reconnect_max=0.4) as fe:
        push(redis_client,
             {"type": "join", "room": "pinned",
              "spec": spec(inspircd, port, "share16", "#tlsa", tls_ca=tls_pki.ca_file)},
             {"type": "join", "room": "blind", "spec": spec(inspircd, port, "share16", "#tlsb", tls_verify=False)},
             {"type": "join", "room": "system", "spec": spec(inspircd, port, "share16", "#tlsc")})
        error = events.wait(type="error", room="system", code="join_failed")
        assert error["detail"] == UNKNOWN_ISSUER
        events.wait(type="joined", room="pinned")
        events.wait(type="joined", room="blind")
        sessions = {fe.rooms[r].session for r in ("pinned", "blind", "system")}
        assert len(sessions) == 3
        current = wait_attempts(redis_client, "system", 3)
        assert current["state"] in ("backoff", "connecting") and current["error"] == UNKNOWN_ISSUER
    assert [e for e in events.seen if e["room"] == "system" and e["type"] == "error"] == [error]


def test_a_certificate_for_another_name_and_a_plaintext_port(redis_url, redis_client, inspircd, make_inspircd, tls_pki):
    other = make_inspircd(tls=tls_pki.issue("wrongname", ["wrong.test"]))
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id="irc-tls-name", connect_timeout=1.0):
        push(redis_client,
             {"type": "join", "room": "name",
              "spec": spec(other, other.tls_port, "name16", "#n", tls_ca=tls_pki.ca_file)},
             {"type": "join", "room": "plain", "spec": spec(inspircd, inspircd.port, "plain16", "#p")})
        error = events.wait(type="error", room="name", code="join_failed")
        assert error["detail"].startswith("the server's certificate is not for 127.0.0.1 (connect by a name it "
                                          "carries, or set tls_verify=false) [certificate verify failed: IP address "
                                          "mismatch"), error
        plain = events.wait(type="error", room="plain", code="join_failed")  # InspIRCd waits for a line
        assert plain["detail"] == (f"the server did not answer the TLS handshake within 1s "
                                   f"(127.0.0.1:{inspircd.port}: a plaintext port?)"), plain
