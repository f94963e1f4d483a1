"""The ops commands push valid commands to `control` and read the registry; passwords never in argv."""

import json
import subprocess
import sys

import pytest

from tests.support.events import EventLog
from tests.support.frontend import irc_spec, running_frontend

pytestmark = pytest.mark.e2e


def greenroom(redis_url, *args, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "frontend.cli", *args, "--redis-url", redis_url],
                          capture_output=True, text=True, timeout=30, env=env, input=input)


def test_join_say_part_push_valid_commands(redis_url, redis_client):
    assert greenroom(redis_url, "join", "ops", "--irc", "irc.example.org:6697", "--tls",
                     "--channel", "#ops", "--nick", "bot", "--tenant", "acme").returncode == 0
    assert greenroom(redis_url, "say", "ops", "hello", "--to", "alice").returncode == 0
    assert greenroom(redis_url, "say", "ops", "waves", "--action").returncode == 0
    assert greenroom(redis_url, "part", "ops", "--reason", "done").returncode == 0
    pushed = [json.loads(x) for x in redis_client.lrange("control", 0, -1)]
    assert pushed[0] == {"type": "join", "room": "ops", "spec": {
        "protocol": "irc", "server": "irc.example.org", "port": 6697, "tls": True, "nick": "bot",
        "channel": "#ops", "tenant": "acme"}}
    assert pushed[1] == {"type": "say", "room": "ops", "text": "hello", "to": "alice"}
    assert pushed[2]["type"] == "action" and pushed[3] == {"type": "part", "room": "ops", "reason": "done"}


def test_xmpp_join_takes_the_password_from_the_environment_only(redis_url, redis_client):
    import os
    env = {**os.environ, "GREENROOM_XMPP_PASSWORD": "pw-from-env"}
    done = greenroom(redis_url, "join", "team", "--xmpp", "bot@example.org", "--muc",
                     "team@conference.example.org", "--nick", "bot", env=env)
    assert done.returncode == 0, done.stderr
    spec = json.loads(redis_client.lpop("control"))["spec"]
    assert spec["password"] == "pw-from-env" and spec["tls"] is True and spec["protocol"] == "xmpp"
    env.pop("GREENROOM_XMPP_PASSWORD")
    refused = greenroom(redis_url, "join", "team", "--xmpp", "bot@example.org", "--muc",
                        "team@conference.example.org", "--nick", "bot", env=env, input="")
    assert refused.returncode == 2 and "GREENROOM_XMPP_PASSWORD" in refused.stderr
    assert redis_client.llen("control") == 0


def test_invalid_commands_are_refused_before_pushing(redis_url, redis_client):
    bad = greenroom(redis_url, "join", "x", "--irc", "h", "--channel", "nochannel", "--nick", "bot")
    assert bad.returncode == 2 and "not a channel name" in bad.stderr
    assert redis_client.llen("control") == 0


def test_rooms_shows_the_registry_with_live_state(redis_url, redis_client, ngircd):
    events = EventLog(redis_client)
    with running_frontend(redis_url):
        redis_client.rpush("control", json.dumps({"type": "join", "room": "shown",
                                                  "spec": irc_spec(ngircd, "#shown", nick="shownbot")}))
        events.wait(type="joined", room="shown")
        table = greenroom(redis_url, "rooms")
        assert table.returncode == 0
        line = next(l for l in table.stdout.splitlines() if l.startswith("shown"))
        assert "joined" in line and "#shown@127.0.0.1" in line
        rows = json.loads(greenroom(redis_url, "rooms", "--json").stdout)["rooms"]
        assert rows[0]["room"] == "shown" and rows[0]["state"] == "joined"


def test_the_fleet_commands_document_what_operators_must_know(redis_url):
    for command, words in (("drain", ["visible", "--force", "fleet:draining"]),
                           ("rebalance", ["visible", "--dry-run", "share group", "Nothing moves by itself"]),
                           ("status", ["Exit status", "1 when no frontend is alive", "3 when some room"])):
        shown = " ".join(greenroom(redis_url, command, "--help").stdout.split())
        for word in words:
            assert word in shown, (command, word)


def test_the_tenant_commands_document_credentials_and_removal(redis_url):
    for command, words in ((["tenant", "credentials"], ["--rotate", "stdout", "alone on its line", "never on the "
                                                        "dashboard", "stops working at once", "closed"]),
                           (["tenant", "remove"], ["--force", "Refused while it has rooms", "stay joined",
                                                   "ACL user"]),
                           (["tenant", "set"], ["'none': no limit", "omitted: unchanged"])):
        shown = " ".join(greenroom(redis_url, *command, "--help").stdout.split())
        for word in words:
            assert word in shown, (command, word)
