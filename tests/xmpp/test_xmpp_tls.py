"""XMPP TLS that explains itself (issue 16, item 3), against real prosody servers on loopback with
real certificates (``tls_pki``): a self-signed one and STARTTLS required (ejabberd as shipped), a
private CA (``prosody_tls``), plaintext only (``prosody``).

Every failure to join reaches the room's events as ``join_failed`` with the reason in words, once
per reason per series of attempts, and the room's state says the same; ``tls_verify`` and ``tls_ca``
make the self-signed and the private-CA servers joinable; rooms with other TLS settings never share
a stream. One scripted part: a TCP listener that never speaks (no packaged server plays "silent").
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket

import gevent
import pytest
import ujson

from tests.support.events import EventLog
from tests.support.frontend import push, running_frontend
from tests.xmpp.conftest import uniq, xmpp_spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

SELF_SIGNED = "the server's certificate is not trusted (self-signed; set tls_ca or tls_verify=false)"
UNKNOWN_ISSUER = ("the server's certificate is not trusted (its issuer is not among the system's trusted CAs; "
                  "set tls_ca or tls_verify=false)")
STARTTLS_REQUIRED = "the server requires STARTTLS but tls is false (set tls: true, the default)"
NO_STARTTLS = "the server does not offer STARTTLS but tls is true"


def account(server, stem: str) -> tuple[str, str]:
    password = "pw-" + uniq("s")
    return server.create_user(uniq(stem), password), password


def spec(server, jid: str, password: str, **extra) -> dict:
    """A spec for ``server`` with TLS on (the default) unless ``extra`` says otherwise."""
    return xmpp_spec(server, jid, password, f"{uniq('tls')}@{server.muc_domain}", **{"tls": True, **extra})


def state(redis_client, room: str) -> dict:
    raw = redis_client.hget("rooms:state", room)
    return ujson.loads(raw) if raw else {}


def wait_state(redis_client, room: str, timeout: float = 10.0, **match) -> dict:
    with gevent.Timeout(timeout, AssertionError(f"{room}: no state {match}; last {state(redis_client, room)}")):
        while True:
            current = state(redis_client, room)
            if all(current.get(k) == v if not callable(v) else v(current.get(k)) for k, v in match.items()):
                return current
            gevent.sleep(0.05)


def join_failures(events: EventLog, room: str) -> list[str]:
    return [e["detail"] for e in events.seen if e.get("room") == room and e.get("code") == "join_failed"]


def test_self_signed_server_is_one_join_failed_with_the_reason(redis_url, redis_client, prosody_self_signed):
    """ejabberd as shipped: self-signed, STARTTLS required. The reason reaches `messages` at once
    (not after connect_timeout), once however often the room retries, and the state says the same."""
    jid, password = account(prosody_self_signed, "self")
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id=uniq("xtls"), reconnect_min=0.1, reconnect_max=0.4):
        push(redis_client, {"type": "join", "room": "ss", "spec": spec(prosody_self_signed, jid, password)})
        error = events.wait(timeout=5, type="error", room="ss", code="join_failed")
        assert error["detail"].startswith(SELF_SIGNED), error
        assert "[certificate verify failed: self-signed certificate]" in error["detail"]
        assert password not in error["detail"]
        current = wait_state(redis_client, "ss", state="backoff", attempts=lambda n: (n or 0) >= 3)
        assert current["error"] == error["detail"]
        with pytest.raises(AssertionError):
            events.wait(timeout=0.5, type="error", room="ss")
    assert join_failures(events, "ss") == [error["detail"]]


def test_a_room_that_joins_a_failing_stream_hears_why_at_once(redis_url, redis_client, prosody_self_signed):
    """Not after the backoff (30-60 s here, as a permanent failure waits long): when it attaches."""
    jid, password = account(prosody_self_signed, "late")
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id=uniq("xtls"), reconnect_min=5.0, reconnect_max=60.0) as fe:
        push(redis_client, {"type": "join", "room": "first", "spec": spec(prosody_self_signed, jid, password)})
        first = events.wait(timeout=5, type="error", room="first", code="join_failed")
        push(redis_client, {"type": "join", "room": "late", "spec": spec(prosody_self_signed, jid, password)})
        late = events.wait(timeout=3, type="error", room="late", code="join_failed")
        assert late["detail"] == first["detail"] and late["detail"].startswith(SELF_SIGNED)
        assert fe.rooms["late"].session is fe.rooms["first"].session
        assert wait_state(redis_client, "late", state="backoff")["error"] == late["detail"]
    assert join_failures(events, "first") == [first["detail"]]


def test_tls_verify_false_joins_self_signed_and_never_shares_with_a_verifying_room(
        redis_url, redis_client, prosody_self_signed):
    """Same JID, same server: the room with tls_verify false joins, the verifying one fails on its
    own stream (a shared stream would have let it in unverified); tls_ca naming the very
    certificate joins too."""
    jid, password = account(prosody_self_signed, "nover")
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id=uniq("xtls")) as fe:
        push(redis_client,
             {"type": "join", "room": "nv", "spec": spec(prosody_self_signed, jid, password, tls_verify=False)},
             {"type": "join", "room": "vf", "spec": spec(prosody_self_signed, jid, password)},
             {"type": "join", "room": "pin", "spec": spec(prosody_self_signed, jid, password,
                                                          tls_ca=prosody_self_signed.tls.cert)})
        assert events.wait(timeout=10, type="joined", room="nv")["nick"] == "bot"
        assert events.wait(timeout=10, type="joined", room="pin")
        assert events.wait(timeout=10, type="error", room="vf", code="join_failed")["detail"].startswith(SELF_SIGNED)
        assert fe.rooms["nv"].session is not fe.rooms["vf"].session
        assert fe.rooms["pin"].session not in (fe.rooms["nv"].session, fe.rooms["vf"].session)
        assert state(redis_client, "nv")["state"] == "joined"


def test_private_ca_joins_with_tls_ca_and_fails_without(redis_url, redis_client, prosody_tls, tls_pki):
    jid, password = account(prosody_tls, "ca")
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id=uniq("xtls")):
        push(redis_client,
             {"type": "join", "room": "ca", "spec": spec(prosody_tls, jid, password, tls_ca=tls_pki.ca_file)},
             {"type": "join", "room": "sys", "spec": spec(prosody_tls, jid, password)})
        assert events.wait(timeout=10, type="joined", room="ca")
        push(redis_client, {"type": "ping", "room": "ca", "cmd_id": "p1"})
        assert events.wait(timeout=5, type="pong", room="ca")["cmd_id"] == "p1"
        error = events.wait(timeout=10, type="error", room="sys", code="join_failed")
        assert error["detail"].startswith(UNKNOWN_ISSUER), error
        assert "unable to get local issuer certificate" in error["detail"]


def test_starttls_required_but_tls_false_says_so_at_once(redis_url, redis_client, prosody_tls):
    """Was: "connecting timed out" every connect_timeout (30 s), never an event."""
    jid, password = account(prosody_tls, "plain")
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id=uniq("xtls")):
        push(redis_client, {"type": "join", "room": "pt", "spec": spec(prosody_tls, jid, password, tls=False)})
        error = events.wait(timeout=5, type="error", room="pt", code="join_failed")
        assert error["detail"] == STARTTLS_REQUIRED
        assert wait_state(redis_client, "pt", state="backoff")["error"] == STARTTLS_REQUIRED


def test_no_starttls_offered_but_tls_true(redis_url, redis_client, prosody, xmpp_account):
    jid, password = xmpp_account("notls")
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id=uniq("xtls")):
        push(redis_client, {"type": "join", "room": "nt", "spec": spec(prosody, jid, password)})
        error = events.wait(timeout=5, type="error", room="nt", code="join_failed")
        assert error["detail"].startswith(NO_STARTTLS), error


def _delays(records, label_part: str) -> list[float]:
    out = []
    for record in records:
        message = record.getMessage()
        if label_part in message and "reconnecting in" in message:
            out.append(float(re.search(r"reconnecting in ([\d.]+)s", message).group(1)))
    return out


def test_wrong_password_backs_off_longer_than_a_refused_connection(
        redis_url, redis_client, prosody_tls, tls_pki, caplog):
    """A permanent failure (credentials) waits at least half of reconnect_max each time; a transient
    one (nothing listens) starts at reconnect_min. Both say why, once."""
    caplog.set_level(logging.INFO, logger="frontend")
    jid, _ = account(prosody_tls, "badpw")
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = {**spec(prosody_tls, jid, "x"), "port": closed_port}
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id=uniq("xtls"), reconnect_min=0.2, reconnect_max=1.6):
        push(redis_client,
             {"type": "join", "room": "pw", "spec": spec(prosody_tls, jid, "not-the-password", tls_ca=tls_pki.ca_file)},
             {"type": "join", "room": "rf", "spec": refused})
        error = events.wait(timeout=10, type="error", room="pw", code="join_failed")
        assert error["detail"] == "authentication failed (not-authorized)"
        assert "not-the-password" not in error["detail"]
        refusal = events.wait(timeout=10, type="error", room="rf", code="join_failed")
        assert refusal["detail"] == f"connection refused by 127.0.0.1:{closed_port} (nothing listens there?)"
        wait_state(redis_client, "pw", attempts=lambda n: (n or 0) >= 2)
    permanent = _delays(caplog.records, f":{prosody_tls.port}/{jid}")
    transient = _delays(caplog.records, f":{closed_port}/{jid}")
    assert permanent and min(permanent) >= 0.8, permanent
    assert transient and transient[0] <= 0.2 and len(transient) > len(permanent), (transient, permanent)
    assert join_failures(events, "pw") == [error["detail"]]
    assert join_failures(events, "rf") == [refusal["detail"]]


def test_a_server_that_never_answers_times_out_with_the_reason(redis_url, redis_client):
    """A scripted part: a TCP listener that accepts and never speaks."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held = []
    acceptor = gevent.spawn(lambda: [held.append(listener.accept()[0]) for _ in iter(int, 1)])
    events = EventLog(redis_client)
    try:
        with running_frontend(redis_url, frontend_id=uniq("xtls"), connect_timeout=1.0):
            push(redis_client, {"type": "join", "room": "mute", "spec": xmpp_spec(
                type("S", (), {"host": "127.0.0.1", "port": port})(), "bot@localhost", "pw", "r@conference.localhost")})
            error = events.wait(timeout=5, type="error", room="mute", code="join_failed")
            assert error["detail"] == (f"the server did not answer the connection within 1s "
                                       f"(127.0.0.1:{port}: connected, but no XMPP stream)")
    finally:
        acceptor.kill()
        for conn in held:
            conn.close()
        listener.close()


# -- tls_ca: hostile input, checked at the edge and when it is used --------------------------------

def dead_details(redis_client) -> dict[str, str]:
    """room -> the detail of its dead letter."""
    letters = [ujson.loads(item) for item in redis_client.lrange("control:dead", 0, -1)]
    return {ujson.loads(d["raw"])["room"]: d["error"]["detail"] for d in letters}


def test_bad_tls_ca_paths_are_bad_commands(redis_url, redis_client, prosody_tls, tmp_path):
    jid, password = account(prosody_tls, "path")
    big = tmp_path / "big.pem"
    with open(big, "wb") as fh:
        fh.truncate(3 * 1024 * 1024)  # sparse: over the 2 MiB bound, costs no disk
    cases = {
        "ca/relative.pem": "must be an absolute, normalized path",
        "/etc/../etc/ssl/x.pem": "must be an absolute, normalized path",
        "/" + "a" * 1100: "too long",
        str(tmp_path / "missing.pem"): f"tls_ca {str(tmp_path / 'missing.pem')!r}: no such file",
        str(tmp_path): "not a regular file",
        "/dev/zero": "not a regular file",
        str(big): "over 2097152 bytes",
    }
    with running_frontend(redis_url, frontend_id=uniq("xtls")):
        for i, path in enumerate(cases):
            push(redis_client, {"type": "join", "room": f"bad{i}",
                                "spec": spec(prosody_tls, jid, password, tls_ca=path)})
        with gevent.Timeout(10):
            while redis_client.llen("control:dead") < len(cases):
                gevent.sleep(0.05)
    details = dead_details(redis_client)
    for i, (path, words) in enumerate(cases.items()):
        detail = details[f"bad{i}"]
        assert words in detail and detail.startswith("spec field"), (path, detail)
    assert not redis_client.hkeys("rooms")


def test_a_tls_ca_that_is_no_bundle_or_vanished_is_a_join_failed(redis_url, redis_client, prosody_tls, tls_pki,
                                                                   tmp_path):
    """The file passes the edge but holds no certificate; a registry room whose bundle was removed
    since: both rooms say why (nothing of the file's content), and a valid copy still joins."""
    jid, password = account(prosody_tls, "gone")
    secret = tmp_path / "not-a-bundle.txt"
    secret.write_text("password=hunter2\n")
    gone = tmp_path / "gone.pem"
    shutil.copyfile(tls_pki.ca_file, gone)
    redis_client.hset("rooms", "vanished", ujson.dumps(spec(prosody_tls, jid, password, tls_ca=str(gone))))
    os.remove(gone)
    copy = tmp_path / "copy.pem"
    shutil.copyfile(tls_pki.ca_file, copy)
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id=uniq("xtls")):
        push(redis_client,
             {"type": "join", "room": "nobundle", "spec": spec(prosody_tls, jid, password, tls_ca=str(secret))},
             {"type": "join", "room": "copy", "spec": spec(prosody_tls, jid, password, tls_ca=str(copy))})
        error = events.wait(timeout=10, type="error", room="nobundle", code="join_failed")
        assert error["detail"] == f"tls_ca {str(secret)!r}: holds no PEM certificate (-----BEGIN CERTIFICATE----- ...)"
        vanished = events.wait(timeout=10, type="error", room="vanished", code="join_failed")
        assert vanished["detail"] == f"tls_ca {str(gone)!r}: no such file"
        assert events.wait(timeout=10, type="joined", room="copy")
        assert wait_state(redis_client, "vanished", state="backoff")["error"] == vanished["detail"]
    assert not any("hunter2" in ujson.dumps(e) for e in events.seen)
