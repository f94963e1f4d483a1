"""The test infrastructure itself: real servers start, answer, restart on their port, and clean up."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import socket
import tempfile
import time
from typing import Any, Iterator

import gevent.event
import pytest
import redis
import slixmpp
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.aio import run_async
from tests.support.irc_client import IrcTestClient, parse_line
from tests.support.names import uniq
from tests.support.ports import free_port
from tests.support.servers import NgircdServer, ProsodyServer, RedisServer




@pytest.fixture
def world_dir() -> Iterator[str]:
    """A 0755 dir under /tmp (prosody's own user must reach it), removed after the test."""
    path = tempfile.mkdtemp(prefix="greenroom-test-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_free_port_is_bindable_on_loopback():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- Redis -------------------------------------------------------------------------------------------

def test_redis_answers_and_is_empty(redis_server, redis_url, redis_client):
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0" == redis_server.url
    assert redis_client.ping() is True
    assert redis_client.dbsize() == 0
    redis_client.rpush("control", b"\xff raw bytes")
    assert redis_server.client().lpop("control") == b"\xff raw bytes"  # bytes, not str


def test_redis_restart_keeps_port_and_forgets_data(redis_server, redis_client):
    port = redis_server.port
    redis_client.set("k", "v")
    redis_server.restart()
    assert redis_server.port == port
    assert redis_client.get("k") is None  # no persistence; redis-py reconnected by itself


def test_redis_kill_pause_resume(redis_server, redis_client):
    redis_server.kill()
    with pytest.raises(redis.ConnectionError):
        redis_client.ping()
    redis_server.start()
    assert redis_client.ping()
    redis_server.pause()
    try:
        slow = redis_server.client(socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.TimeoutError):
            slow.ping()
    finally:
        redis_server.resume()
    assert redis_client.ping()
    redis_server.pause()
    redis_server.stop(timeout=2)  # SIGTERM reaches a stopped process too (with SIGCONT)
    assert not redis_server.running and redis_server.proc.returncode == 0
    redis_server.start()
    assert redis_client.ping()


@pytest.mark.parametrize("harm", ["kill", "pause", "stop"])
def test_redis_url_heals_a_server_an_earlier_test_broke(redis_server, request, harm):
    getattr(redis_server, harm)()
    url = request.getfixturevalue("redis_url")  # what the next test would get
    assert redis.Redis.from_url(url, socket_timeout=2).ping()
    assert not redis_server.paused


def test_redis_start_failure_shows_the_log(tmp_path):
    server = RedisServer(str(tmp_path / "r"))
    server.port = free_port()
    with socket.socket() as squatter:  # restart()-style start on a fixed port that is taken
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        with pytest.raises(RuntimeError, match=r"(?s)redis.*did not start: it exited.*Address already in use"):
            server.start(timeout=2)
    assert not server.running


# -- ngircd ------------------------------------------------------------------------------------------

def test_two_clients_in_a_channel_see_each_others_privmsg(ngircd, irc_client):
    chan = "#" + uniq("support")
    alice, bob = irc_client(uniq("alice")), irc_client(uniq("bob"))
    end = alice.join(chan)
    assert end.command == "366" and end.params[1] == chan
    bob.join(chan)
    alice.expect(rf":{bob.nick}!\S+ JOIN :?{re.escape(chan)}$")
    alice.privmsg(chan, "hello bob ✓")
    line = bob.expect(rf"PRIVMSG {re.escape(chan)} :hello bob")
    assert (line.nick, line.command, line.params, line.text) == (alice.nick, "PRIVMSG", [chan, "hello bob ✓"],
                                                                 "hello bob ✓")
    bob.privmsg(chan, "hi alice")
    assert alice.expect(lambda ln: ln.command == "PRIVMSG" and ln.nick == bob.nick).text == "hi alice"
    bob.privmsg(alice.nick, "psst")
    assert alice.expect(rf"PRIVMSG {alice.nick} :psst$").nick == bob.nick
    assert ngircd.host == "127.0.0.1" and all(line for line in alice.lines)


def test_expect_uses_a_cursor_and_fails_with_the_last_lines(irc_client):
    chan = "#" + uniq("cursor")
    alice, bob = irc_client(uniq("alice")), irc_client(uniq("bob"))
    alice.join(chan)
    bob.join(chan)
    for i in range(3):
        bob.privmsg(chan, f"n{i}")
    assert alice.expect(r":n1$").text == "n1"  # n0 is skipped, hence consumed
    assert alice.expect(r":n2$").text == "n2"
    with pytest.raises(AssertionError, match=r"(?s)no line matching ':n0\$'.*PRIVMSG .*:n2"):
        alice.expect(r":n0$", timeout=0.3)
    assert sum(":n0" in line for line in alice.lines) == 1  # `lines` keeps everything
    for i in range(50):
        bob.privmsg(chan, f"burst {i}")
    burst = alice.wait_for_count(re.compile(r"PRIVMSG \S+ :burst"), 50, timeout=5)
    assert [ln.text for ln in burst] == [f"burst {i}" for i in range(50)]


def test_no_flood_penalty_and_long_nicks(irc_client):
    chan = "#" + uniq("flood")
    # 22-25 characters: over 20, and within ngircd's 30 with uniq's run tag and counter
    sender, watcher = irc_client(uniq("a_long_nickname_")), irc_client(uniq("w"))
    assert len(sender.nick) > 20
    sender.join(chan)
    watcher.join(chan)
    started = time.monotonic()
    for i in range(300):
        sender.privmsg(chan, f"line {i}")
    watcher.wait_for_count(r"PRIVMSG \S+ :line \d+$", 300, timeout=10)
    assert time.monotonic() - started < 3  # with penalties ngircd would pace this to ~1 line/s


def test_many_channels_per_client(irc_client):
    client = irc_client(uniq("many"))
    for i in range(30):  # MaxJoins = 0: no limit (the default is 10)
        client.join(f"#{uniq('m')}")


def test_nick_in_use_fails_fast(irc_client):
    nick = uniq("taken")
    irc_client(nick)
    started = time.monotonic()
    with pytest.raises(AssertionError, match=" 433 "):
        irc_client(nick)
    assert time.monotonic() - started < 2


def test_ngircd_restart_keeps_port_and_password_is_enforced(tmp_path):
    server = NgircdServer(str(tmp_path / "ircd"), password="opensesame")  # a 0700 pytest dir works
    try:
        started = time.monotonic()
        server.start()
        port, took = server.port, time.monotonic() - started
        assert took < 1.0, took
        with pytest.raises(AssertionError, match="Bad password"):  # ngircd 26 sends ERROR, not 464
            IrcTestClient(server.host, server.port, "nopw").connect()
        client = IrcTestClient(server.host, server.port, "withpw", password="opensesame").connect()
        server.restart()
        assert server.port == port
        client.expect(r"^ERROR", timeout=5)  # the old connection was closed by the shutdown
        assert client.closed
        client.close()
        with IrcTestClient(server.host, server.port, "again", password="opensesame") as again:
            again.join("#back")
        server.kill()
        assert not server.running
        server.start()
        assert server.port == port
    finally:
        server.stop()
    assert "irc.test" in server.log_tail()


def test_connect_retries_until_the_server_listens(tmp_path):
    server = NgircdServer(str(tmp_path / "ircd"))
    server.port = free_port()
    client = IrcTestClient(server.host, server.port, "early")
    starter = gevent.spawn_later(0.5, server.start)
    try:
        client.connect(timeout=10)
        assert client.nick == "early"
    finally:
        client.close()
        starter.join()
        server.stop()


def test_client_answers_ping_and_follows_its_nick():
    """A scripted server (ngircd pings only after minutes): PING gets PONG, a forced NICK is followed."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = IrcTestClient("127.0.0.1", listener.getsockname()[1], "pinged")
        connecting = gevent.spawn(client.connect)
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b":srv 001 pinged :hi\r\nPING :cookie\r\n:pinged!u@h NICK :renamed\r\n")
            got = b""
            while b"PONG" not in got:
                got += conn.recv(4096)
            connecting.get(timeout=5)
            assert b"PONG :cookie\r\n" in got
            client.expect(r" NICK :renamed$")
            assert client.nick == "renamed"
            assert client.wait_for_count("NICK", 0) == []
            client.close()
        assert client.closed


def test_parse_line():
    line = parse_line("@time=x :nick!user@host PRIVMSG #chan :hello :world")
    assert (line.prefix, line.nick, line.command, line.params, line.text) == (
        "nick!user@host", "nick", "PRIVMSG", ["#chan", "hello :world"], "hello :world")
    assert parse_line("PING :irc.test").params == ["irc.test"]
    assert parse_line(":irc.test 001 me :Welcome").params == ["me", "Welcome"]
    bare = parse_line(":irc.test MODE #c +k key")
    assert (bare.nick, bare.params, bare.text) == ("irc.test", ["#c", "+k", "key"], "key")
    assert parse_line("").command == "" and parse_line("").text == ""


# -- prosody -----------------------------------------------------------------------------------------

def sasl_plain_ok(server: ProsodyServer, user: str, password: str) -> bool:
    """A raw c2s stream: does SASL PLAIN succeed (no slixmpp, no asyncio)?"""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"<?xml version='1.0'?><stream:stream to='{server.domain}' xmlns='jabber:client' "
                     "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode())
        received = b""
        while b"</stream:features>" not in received:
            received += sock.recv(4096) or b"</stream:features>"
        assert b"<mechanism>PLAIN</mechanism>" in received, received
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        sock.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        received = b""
        while b"success" not in received and b"failure" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        sock.sendall(b"</stream:stream>")
        while sock.recv(4096):  # until prosody closed its side: no session left open behind us
            pass
        return b"<success" in received




def xmpp_client(jid: str, password: str) -> slixmpp.ClientXMPP:
    """A plaintext slixmpp client (call on the loop: it picks up the running loop)."""
    client = slixmpp.ClientXMPP(jid, password)
    client.enable_direct_tls = client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_plain = True
    for name in ("xep_0030", "xep_0004", "xep_0045", "xep_0199", "xep_0203"):
        client.register_plugin(name)
    return client


async def session(client: slixmpp.ClientXMPP, server: ProsodyServer) -> None:
    started = asyncio.Event()
    failure: list[str] = []
    client.add_event_handler("session_start", lambda _: started.set())
    client.add_event_handler("failed_auth", lambda _: (failure.append("auth failed"), started.set()))
    client.connect(server.host, server.port)
    await asyncio.wait_for(started.wait(), 10)
    assert not failure, failure


async def muc_round_trip(server: ProsodyServer, alice: tuple[str, str], bob: tuple[str, str],
                         room: str) -> dict[str, Any]:
    a, b = xmpp_client(*alice), xmpp_client(*bob)
    live: asyncio.Queue = asyncio.Queue()
    try:
        await session(a, server)
        await session(b, server)
        muc = a.plugin["xep_0045"]
        presence, *_ = await muc.join_muc_wait(room, "alice", maxstanzas=0, timeout=10)
        created = 201 in presence["muc"]["status_codes"]
        if created:  # a new room stays locked until its owner submits a configuration
            await muc.set_room_config(room, a.plugin["xep_0004"].make_form(ftype="submit"))
        echo: asyncio.Queue = asyncio.Queue()
        a.add_event_handler("groupchat_message", echo.put_nowait)
        a.send_message(mto=room, mbody="before bob", mtype="groupchat")
        await asyncio.wait_for(echo.get(), 10)  # the room has it (and stored it for history)
        b.add_event_handler("groupchat_message", live.put_nowait)
        _, _, occupants, history = await b.plugin["xep_0045"].join_muc_wait(room, "bob", timeout=10)
        a.send_message(mto=room, mbody="hello bob", mtype="groupchat")
        while True:
            msg = await asyncio.wait_for(live.get(), 10)
            if msg["body"] == "hello bob":
                break
        return {"created": created, "history": [m["body"] for m in history], "from": str(msg["from"]),
                "occupants": [str(p["from"]) for p in occupants]}
    finally:
        await asyncio.gather(*(client.disconnect(wait=0.5) for client in (a, b)))


def test_prosody_xmpp_login_muc_message_and_history(prosody, xmpp_account):
    alice, bob = xmpp_account("alice"), xmpp_account("bob")
    assert alice[0].endswith("@localhost") and alice[0] != bob[0]
    room = f"{uniq('support')}@{prosody.muc_domain}"
    got = run_async(lambda: muc_round_trip(prosody, alice, bob, room))
    assert got["created"]
    assert got["history"] == ["before bob"]  # history is replayed to a joining occupant
    assert got["from"] == f"{room}/alice"
    assert f"{room}/alice" in got["occupants"]


def test_prosody_wrong_password_and_plain_auth(prosody, xmpp_account):
    jid, password = xmpp_account()
    user = jid.split("@")[0]
    assert sasl_plain_ok(prosody, user, password)
    assert not sasl_plain_ok(prosody, user, password + "x")


def test_prosody_restart_keeps_port_and_accounts(world_dir):
    server = ProsodyServer(os.path.join(world_dir, "xmpp"))
    try:
        started = time.monotonic()
        server.start()
        took = time.monotonic() - started
        assert took < 3, took
        if os.geteuid() == 0:
            assert os.stat(server.data_dir).st_uid != 0  # ran as user prosody, not root
        assert server.create_user("carol", "pw1") == "carol@localhost"
        assert sasl_plain_ok(server, "carol", "pw1")
        port = server.port
        server.restart()
        assert server.port == port
        assert sasl_plain_ok(server, "carol", "pw1")
        server.kill()
        server.create_user("dave", "pw2")  # works while the server is down, too
        server.start()
        assert sasl_plain_ok(server, "dave", "pw2") and sasl_plain_ok(server, "carol", "pw1")
    finally:
        server.stop()
    assert "Prosody" in server.log_tail()
    assert not server.running


def test_prosody_in_a_private_pytest_dir(tmp_path):
    """pytest's 0700 dirs are out of reach of user prosody: as root it then runs with run_as_root."""
    with ProsodyServer(str(tmp_path / "xmpp")) as server:
        server.create_user("erin", "pw")
        assert sasl_plain_ok(server, "erin", "pw")
