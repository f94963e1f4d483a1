"""Frontend lifecycle through real servers: restart from the registry, scale, signals, reconnects."""

import subprocess
import sys
import time

import pytest

from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, irc_spec, push, running_frontend
from tests.support.servers import NgircdServer

pytestmark = pytest.mark.e2e


def test_restart_rejoins_every_room_in_the_registry(redis_url, redis_client, ngircd, irc_client):
    events = EventLog(redis_client)
    chans = [f"#restart{i}" for i in range(3)]
    watcher = irc_client("rwatch")
    for chan in chans:
        watcher.join(chan)
    with running_frontend(redis_url, frontend_id="fe-a"):
        for i, chan in enumerate(chans):
            push(redis_client, {"type": "join", "room": f"rs{i}", "spec": irc_spec(ngircd, chan, nick=f"rsbot{i}")})
        for i in range(3):
            events.wait(type="joined", room=f"rs{i}")
    assert redis_client.hlen("rooms") == 3  # a stop is not a part
    assert {watcher.expect(r":rsbot\d!\S+ QUIT").nick for _ in chans} == {"rsbot0", "rsbot1", "rsbot2"}
    with running_frontend(redis_url, frontend_id="fe-b"):
        rejoined = {events.wait(type="joined")["room"] for _ in range(3)}
        assert rejoined == {"rs0", "rs1", "rs2"}
        back = {watcher.expect(r":rsbot\d!\S+ JOIN :?#restart\d$").nick for _ in chans}
        assert back == {"rsbot0", "rsbot1", "rsbot2"}
        push(redis_client, {"type": "say", "room": "rs1", "text": "back"})
        watcher.expect(r":rsbot1!\S+ PRIVMSG #restart1 :back")


def test_200_rooms_in_one_process(redis_url, redis_client, ngircd, irc_client):
    events = EventLog(redis_client)
    with running_frontend(redis_url, connect_rate=50) as fe:
        commands = []
        for i in range(200):
            nick = f"many{i}" if i < 100 else f"shared{i % 2}"  # 100 own connections, 100 on two
            commands.append({"type": "join", "room": f"m{i}", "spec": irc_spec(ngircd, f"#many{i}", nick=nick)})
        started = time.monotonic()
        push(redis_client, *commands)
        joined = {events.wait(type="joined", timeout=60)["room"] for _ in range(200)}
        took = time.monotonic() - started
        assert joined == {f"m{i}" for i in range(200)}
        assert len(fe.sessions) == 102
        # every room still answers through its own greenlet
        push(redis_client, *[{"type": "ping", "room": f"m{i}", "cmd_id": i} for i in range(200)])
        pongs = {events.wait(type="pong", timeout=30)["cmd_id"] for _ in range(200)}
        assert pongs == set(range(200))
    print(f"200 rooms joined in {took:.1f}s")


def test_sigterm_exits_0_within_5_seconds(redis_url, redis_client, ngircd, irc_client, tmp_path):
    events = EventLog(redis_client)
    watcher = irc_client("termwatch")
    watcher.join("#term")
    proc = FrontendProcess(redis_url, str(tmp_path / "fe.log")).start()
    try:
        push(redis_client, {"type": "join", "room": "term", "spec": irc_spec(ngircd, "#term", nick="termbot")})
        events.wait(type="joined", room="term", timeout=15)
        push(redis_client, *[{"type": "say", "room": "term", "text": f"line {i}"} for i in range(20)])
        watcher.expect(r"PRIVMSG #term :line 0$")
        code, took = proc.terminate()
        assert code == 0, proc.log()
        assert took < 5.0, f"took {took:.2f}s"
        watcher.expect(r":termbot!\S+ QUIT")
        sent = [line for line in watcher.lines if "PRIVMSG #term :line" in line]
        assert len(sent) == 20  # everything the room accepted went out before QUIT
        assert redis_client.hget("rooms", "term") is not None
        log = proc.log()
        assert "stopping: no more commands" in log and "stopped" in log
    finally:
        proc.kill()


def test_server_restart_reconnects_and_rejoins(redis_url, redis_client, tmp_path):
    server = NgircdServer(str(tmp_path / "ircd"))
    server.start()
    try:
        events = EventLog(redis_client)
        with running_frontend(redis_url):
            push(redis_client, {"type": "join", "room": "phoenix", "spec": irc_spec(server, "#phoenix", nick="phx")})
            events.wait(type="joined", room="phoenix")
            server.restart()
            assert events.wait(type="joined", room="phoenix", timeout=20)
            state = redis_client.hget("rooms:state", "phoenix")
            assert b'"joined"' in state
    finally:
        server.stop()


def test_server_password_is_sent_and_a_wrong_one_reported(redis_url, redis_client, tmp_path):
    server = NgircdServer(str(tmp_path / "ircd"), password="opensesame")
    server.start()
    try:
        events = EventLog(redis_client)
        with running_frontend(redis_url):
            push(redis_client,
                 {"type": "join", "room": "pw-ok", "spec": irc_spec(server, "#pw", nick="pwok", password="opensesame")},
                 {"type": "join", "room": "pw-bad", "spec": irc_spec(server, "#pw", nick="pwbad", password="wrong")})
            assert events.wait(type="joined", room="pw-ok")
            error = events.wait(type="error", room="pw-bad")
            assert error["code"] == "join_failed"
    finally:
        server.stop()


def test_sdk_echo_round_trip_through_ircd(redis_url, redis_client, ngircd, irc_client, tmp_path):
    events_log = open(tmp_path / "echo.log", "wb")
    backend = subprocess.Popen([sys.executable, "-m", "backend_sdk.examples.echo", "--redis-url", redis_url],
                               stdout=events_log, stderr=subprocess.STDOUT)
    try:
        with running_frontend(redis_url):
            # the backend consumes `messages`, so the test watches the channel, as a user would
            alice = irc_client("echoalice")
            alice.join("#echo")
            push(redis_client, {"type": "join", "room": "echo", "spec": irc_spec(ngircd, "#echo", nick="echobot")})
            alice.expect(r":echobot!\S+ JOIN", timeout=10)
            alice.privmsg("#echo", "!echo hello there")
            alice.expect(r":echobot!\S+ PRIVMSG #echo :hello there$", timeout=10)
            alice.privmsg("#echo", "!ping")
            alice.expect(r":echobot!\S+ PRIVMSG #echo :pong$", timeout=10)
            alice.privmsg("echobot", "!echo private")
            alice.expect(r":echobot!\S+ PRIVMSG echoalice :private$", timeout=10)
    finally:
        backend.terminate()
        backend.wait(10)
        events_log.close()
