"""Tenants (issue 18), through a real `greenroom run`, redis-server and ngircd: quotas, and tenant-scoped
backends whose Redis ACL user can reach only the tenant's own keys."""

from __future__ import annotations

import threading
import time

import pytest
import redis
import ujson

from frontend import tenants
from frontend.keys import Keys
from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, dead_letters, irc_spec, push, stop_process
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_a_join_past_max_rooms_is_refused_and_unregistered_tenants_too(redis_url, redis_client, ngircd, tmp_path):
    keys = Keys("")
    tenants.save(redis_client, keys, tenants.Tenant("acme", max_rooms=2))
    proc = FrontendProcess(redis_url, str(tmp_path / "fe.log"), frontend_id=uniq("quota-"),
                           require_tenants="true").start()
    try:
        events = EventLog(redis_url)
        for i in range(3):
            push(redis_client, {"type": "join", "room": f"q{i}", "cmd_id": f"j{i}",
                                "spec": {**irc_spec(ngircd, "#" + uniq("qc"), nick=uniq("qn")), "tenant": "acme"}})
        events.wait(30, type="joined", room="q0")
        events.wait(30, type="joined", room="q1")
        refused = events.wait(15, type="error", room="q2")
        assert refused["code"] == "quota_exceeded" and refused["cmd_id"] == "j2" and refused["tenant"] == "acme"
        push(redis_client, {"type": "join", "room": "u1", "spec": {**irc_spec(ngircd, "#u1", nick="un"), "tenant": "nobody"}},
             {"type": "join", "room": "u2", "spec": irc_spec(ngircd, "#u2", nick="un")})
        wait_until(lambda: redis_client.llen("control:dead") == 3, 15, what="three dead letters")
        codes = [d["error"]["code"] for d in dead_letters(redis_client, "control:dead")]
        assert codes == ["quota_exceeded", "bad_command", "bad_command"], codes
        assert redis_client.scard("tenant:acme:rooms") == 2 and not redis_client.hexists("rooms", "q2")
        # a part frees a place
        push(redis_client, {"type": "part", "room": "q0"})
        events.wait(15, type="parted", room="q0")
        wait_until(lambda: redis_client.scard("tenant:acme:rooms") == 1, 10, what="q0 uncounted")
        push(redis_client, {"type": "join", "room": "q3",
                            "spec": {**irc_spec(ngircd, "#" + uniq("qc"), nick=uniq("qn")), "tenant": "acme"}})
        events.wait(30, type="joined", room="q3")
    finally:
        stop_process(proc)


def test_a_scoped_tenant_reaches_only_its_own_keys_and_rooms(redis_url, redis_client, ngircd, tmp_path):
    keys = Keys("")
    tenants.save(redis_client, keys, tenants.Tenant("acme"))
    url = tenants.credentials(redis_client, keys, "acme", redis_url)
    acme = redis.Redis.from_url(url)
    mine, theirs = "#" + uniq("ac"), "#" + uniq("bc")
    observer = Observer(ngircd.host, ngircd.port, uniq("tobs"), [mine, theirs])
    proc = FrontendProcess(redis_url, str(tmp_path / "fe.log"), frontend_id=uniq("scoped-")).start()
    try:
        assert acme.ping()
        # ops join a room of another tenant through the public control
        public = EventLog(redis_url)
        push(redis_client, {"type": "join", "room": "beta-room",
                            "spec": {**irc_spec(ngircd, theirs, nick=uniq("bn")), "tenant": "beta"}})
        public.wait(30, type="joined", room="beta-room")
        # the tenant's backend joins its room through its own intake: the room is acme's, whatever it says
        acme.rpush("tenant:acme:control", ujson.dumps({"type": "join", "room": "acme-room",
                                                       "spec": irc_spec(ngircd, mine, nick=uniq("an"))}))
        own = EventLog(url, key="tenant:acme:messages")
        joined = own.wait(30, type="joined", room="acme-room")
        assert joined["tenant"] == "acme"
        acme.rpush("tenant:acme:control", ujson.dumps({"type": "say", "room": "acme-room", "text": "hello from acme"}))
        observer.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "hello from acme", 15, what="acme's say")
        # a command for another tenant's room: forbidden, said nowhere, and told to acme only
        acme.rpush("tenant:acme:control", ujson.dumps({"type": "say", "room": "beta-room", "cmd_id": "x1",
                                                       "text": "not yours"}),
                   ujson.dumps({"type": "join", "room": "sneaky", "spec": {**irc_spec(ngircd, "#s", nick="sn"),
                                                                            "tenant": "beta"}}))
        err = own.wait(15, type="error", room="beta-room")
        assert err["code"] == "forbidden" and err["cmd_id"] == "x1"
        assert own.wait(15, type="error", room="sneaky")["code"] == "forbidden"
        wait_until(lambda: acme.llen("tenant:acme:control:dead") == 2, 10, what="acme's dead letters")
        assert redis_client.llen("control:dead") == 0
        time.sleep(1.0)
        assert not [ln for ln in observer.privmsgs(theirs) if ln.text == "not yours"]
        assert not public.find(type="error", room="beta-room") and not redis_client.hexists("rooms", "sneaky")
        # everything else is out of reach of its ACL user
        for attempt in (lambda: acme.lrange("messages", 0, -1), lambda: acme.hgetall("rooms"),
                        lambda: acme.rpush("control", "{}"), lambda: acme.lrange("tenant:beta:messages", 0, 1),
                        lambda: acme.scan(0), lambda: acme.keys("*"), lambda: acme.flushall(),
                        lambda: acme.eval("return redis.call('HGETALL', KEYS[1])", 1, "rooms")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
    finally:
        stop_process(proc)
        observer.close()


def test_a_scoped_tenants_backend_round_trip_through_the_sdk(redis_url, redis_client, ngircd, tmp_path):
    from backend_sdk import Backend

    keys = Keys("")
    tenants.save(redis_client, keys, tenants.Tenant("acme"))
    url = tenants.credentials(redis_client, keys, "acme", redis_url)
    chan = "#" + uniq("sdk")
    human = Observer(ngircd.host, ngircd.port, uniq("human"), [chan])
    proc = FrontendProcess(redis_url, str(tmp_path / "fe.log"), frontend_id=uniq("sdk-")).start()
    bot = Backend(url, tenant="acme", consumer=uniq("c"))

    @bot.command("echo")
    def echo(event):
        event.reply("echo: " + event.arg_text)

    runner = threading.Thread(target=bot.run, daemon=True)
    try:
        bot.join("acme-sdk", irc_spec(ngircd, chan, nick=uniq("sb")))
        runner.start()
        human.wait(lambda ln: ln.cmd == "JOIN" and ln.target.lower() == chan.lower() and ln.nick != human.nick,
                   30, what="the bot in the channel")
        human.privmsg(chan, "!echo tenant round trip")
        human.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "echo: tenant round trip", 20, what="the reply")
    finally:
        bot.stop()
        runner.join(10)
        stop_process(proc)
        human.close()
