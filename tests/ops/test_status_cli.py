"""`greenroom status` and `greenroom dead list|requeue|purge` against a live frontend."""

import json

import pytest

from tests.ops.helpers import cli, greenroom
from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_status_exits_1_when_no_frontend_is_alive(redis_url, redis_client):
    redis_client.rpush("control", b"{}")
    result = greenroom("status", "--redis-url", redis_url)
    assert result.returncode == 1, result.stderr
    assert "(no live frontend)" in result.stdout
    assert "control 1" in result.stdout
    result = greenroom("status", "--json", "--redis-url", redis_url)
    assert result.returncode == 1 and json.loads(result.stdout)["frontends"] == []


def test_status_table_and_json(redis_url, redis_client, ngircd):
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id="fe-status", heartbeat_interval=0.5):
        push(redis_client, {"type": "join", "room": "st1", "spec": irc_spec(ngircd, "#status", nick="stbot",
                                                                           tenant="acme")})
        events.wait(type="joined", room="st1")
        push(redis_client, {"type": "say", "room": "ghost", "text": "x"})
        wait_until(lambda: redis_client.llen("control:dead") == 1, what="a dead letter")
        wait_until(lambda: b'"joined":1' in (redis_client.hget("frontends:fe-status", "rooms_by_state") or b""),
                   what="heartbeat with the joined room")

        result = greenroom("status", "--redis-url", redis_url)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "fe-status" in out and "joined=1" in out
        assert "rooms: 1 (joined 1)" in out
        assert "control:dead 1" in out and "messages 0" not in out.split("lists:")[0]

        result = greenroom("status", "--json", "--redis-url", redis_url)
        assert result.returncode == 0
        data = json.loads(result.stdout)
        (fe,) = data["frontends"]
        assert fe["id"] == "fe-status" and fe["rooms"] == 1 and fe["rooms_by_state"] == {"joined": 1}
        assert isinstance(fe["pid"], int) and fe["version"]
        assert data["rooms"] == {"total": 1, "by_state": {"joined": 1}, "by_protocol": {"irc": 1}}
        assert data["lists"]["control:dead"] == 1 and data["lists"]["inflight"] == 0
    assert greenroom("status", "--redis-url", redis_url).returncode == 1  # the heartbeat left with it


def test_dead_list_requeue_purge(redis_url, redis_client, ngircd, irc_client):
    # the CLI's main() in this process (``cli``): a dozen commands without a new interpreter each; the
    # other tests here run `python -m frontend.cli` itself
    events = EventLog(redis_client)
    watcher = irc_client("deadwatch")
    watcher.join("#late")
    with running_frontend(redis_url):
        push(redis_client, {"type": "say", "room": "late", "text": "better late than never"},
             b'{"type":"say"}', b"\xff not json")
        wait_until(lambda: redis_client.llen("control:dead") == 3, what="three dead letters")

        result = cli("dead", "list", "--redis-url", redis_url)
        assert result.returncode == 0, result.stderr
        assert "unknown_room" in result.stdout and "bad_command" in result.stdout
        assert "3 dead letters" in result.stdout
        rows = json.loads(cli("dead", "list", "--json", "--redis-url", redis_url).stdout)["dead"]
        assert [r["code"] for r in rows] == ["unknown_room", "bad_command", "bad_command"]
        late = rows[0]
        assert "better late" in late["raw"] and late["frontend"] == "test-fe"

        assert cli("dead", "requeue", "--redis-url", redis_url).returncode == 2  # nothing named
        push(redis_client, {"type": "join", "room": "late", "spec": irc_spec(ngircd, "#late", nick="latebot")})
        events.wait(type="joined", room="late")
        result = cli("dead", "requeue", late["id"], "--redis-url", redis_url)
        assert result.returncode == 0 and "requeued 1" in result.stdout, result.stdout + result.stderr
        watcher.expect(r":latebot!\S+ PRIVMSG #late :better late than never")
        assert redis_client.llen("control:dead") == 2

        result = cli("dead", "purge", rows[1]["id"], "--redis-url", redis_url)
        assert "purged 1" in result.stdout and redis_client.llen("control:dead") == 1
        assert cli("dead", "requeue", "no-such-id", "--redis-url", redis_url).returncode == 1
        result = cli("dead", "purge", "--all", "--redis-url", redis_url)
        assert "purged 1" in result.stdout and redis_client.llen("control:dead") == 0

    # messages:dead as backend_sdk writes it: the event as received, the error, the traceback
    event = json.dumps({"type": "message", "room": "x", "text": "hi"})
    redis_client.rpush("messages:dead", json.dumps({"event": event, "error": "KeyError: 'x'",
                                                    "traceback": "Traceback ...", "handler": "on_message",
                                                    "consumer": "b1", "ts": 1.0}))
    rows = json.loads(cli("dead", "list", "--which", "messages", "--json",
                                "--redis-url", redis_url).stdout)["dead"]
    assert (rows[0]["code"], rows[0]["raw"], rows[0]["frontend"]) == ("KeyError", event, "b1")
    assert "on_message" in rows[0]["detail"]
    assert "requeued 1" in cli("dead", "requeue", "--all", "--which", "messages",
                                     "--redis-url", redis_url).stdout
    assert json.loads(redis_client.rpop("messages"))["text"] == "hi"
