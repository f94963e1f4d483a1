"""Issue 13, hostile input round two: the daemon-side items, each through a real `greenroom run`,
redis-server and ngircd.

1. strings UTF-8 cannot carry (a lone surrogate as a ``\\ud800`` escape) are refused at the edge, and
   no loop stops: the valid commands of the same batch are delivered, events keep flowing.
2. ``events`` may only name events lists; one item that Redis refuses never re-sends the others.
5. huge items are refused without being held over and over; a flooded room is limited.
6. log lines cannot be forged, and repeated warnings are folded into a count.
8. a rejected join keeps no secret in ``control:dead``.
12. a backlog waits in Redis: the in-flight window is bounded and an acknowledgement costs one item.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest
import redis
import ujson

from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, dead_letters, held, irc_spec, proc_alive, push, stop_process
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.ports import free_port
from tests.support.report import report
from tests.support.servers import log_tail
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# ------------------------------------------------------------------------------------------- item 1
def test_strings_utf8_cannot_carry_are_refused_and_no_loop_stops(redis_url, redis_client, ngircd, tmp_path):
    room, chan, nick = uniq("su"), "#" + uniq("suc"), uniq("sub")
    observer = Observer(ngircd.host, ngircd.port, uniq("suobs"), [chan])
    port = free_port()
    fe_id = uniq("surr-")
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=fe_id, metrics_addr=f"127.0.0.1:{port}").start()
    try:
        events = EventLog(redis_url)
        push(redis_client, {"type": "join", "room": room, "spec": irc_spec(ngircd, chan, nick=nick)})
        events.wait(30, type="joined", room=room)
        spec = ujson.dumps(irc_spec(ngircd, "#" + uniq("other"), nick=uniq("o")))
        # valid JSON, every string a lone surrogate somewhere it would be carried (raw escapes)
        bad = [
            b'{"type":"join","room":"\\ud800","spec":' + spec.encode() + b'}',
            b'{"type":"say","room":"' + room.encode() + b'","cmd_id":"\\udfff","text":"x"}',
            b'{"type":"ping","room":"' + room.encode() + b'","cmd_id":"a\\ud83d"}',
            b'{"type":"say","room":"' + room.encode() + b'","text":"a\\ud800b"}',
            b'{"type":"say","room":"' + room.encode() + b'","text":"hi","to":"n\\udc00"}',
            b'{"type":"part","room":"' + room.encode() + b'","reason":"\\ud800"}',
            b'{"type":"join","room":"sj","spec":' + spec.replace('"nick":"', '"nick":"\\ud800').encode() + b'}',
            b'{"type":"join","room":"sj2","spec":' + spec[:-1].encode() + b',"tenant":"\\udc01"}}',
            b'{"type":"say","room":"' + room.encode() + b'","cmd_id":123456789012345678901234567890,"text":"x"}',
            b'{"type":"say","room":"' + room.encode() + b'","expires":1e400,"text":"x"}',
        ]
        valid = [ujson.dumps({"type": "say", "room": room, "text": f"valid-{i:02d}"}).encode() for i in range(10)]
        batch = [item for pair in zip(bad, valid) for item in pair]
        redis_client.rpush("control", *batch)  # one push: one batch for the dispatcher
        push(redis_client, {"type": "ping", "room": room, "cmd_id": "after"})
        events.wait(20, type="pong", room=room, cmd_id="after")
        observer.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "valid-09", 15, what="the valid says")
        said = [ln.text for ln in observer.privmsgs(chan)]
        assert said == [f"valid-{i:02d}" for i in range(10)]
        wait_until(lambda: redis_client.llen("control:dead") == len(bad), 10, what="every bad item dead-lettered")
        dead = dead_letters(redis_client)
        assert all(d["error"]["code"] == "bad_command" for d in dead), dead
        assert sum("lone surrogate" in d["error"]["detail"] for d in dead) >= 8, [d["error"] for d in dead]
        # every loop still runs: events, acks and dead letters still flow, and /healthz says so
        assert _healthz(port) == 200
        room2, chan2 = uniq("su2"), "#" + uniq("suc2")
        push(redis_client, {"type": "join", "room": room2, "spec": irc_spec(ngircd, chan2, nick=uniq("s2"))})
        events.wait(20, type="joined", room=room2)
        wait_until(lambda: held(redis_client, fe_id) == 0, 10, what="an empty ledger")
        assert proc_alive(proc.proc), log_tail(log_path)
        # nothing of it comes back after a restart
        stop_process(proc)
        proc = FrontendProcess(redis_url, log_path, frontend_id=fe_id, metrics_addr=f"127.0.0.1:{port}").start()
        push(redis_client, {"type": "ping", "room": room, "cmd_id": "restarted"})
        events.wait(30, type="pong", room=room, cmd_id="restarted")
        assert redis_client.llen("control:dead") == len(bad)
        assert "re-queued" not in log_tail(log_path, 200)
    finally:
        stop_process(proc)
        observer.close()


# ------------------------------------------------------------------------------------------- item 2
def test_events_may_only_name_events_lists(redis_url, redis_client, ngircd, tmp_path):
    log_path = str(tmp_path / "frontend.log")
    good_room, good_chan = uniq("eg"), "#" + uniq("egc")
    # a registry entry from before the rule: it must not start a self-feeding loop
    redis_client.hset("rooms", "legacy", ujson.dumps({**irc_spec(ngircd, "#" + uniq("lg"), nick=uniq("l")),
                                                     "events": "control"}))
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("ns-")).start()
    try:
        events = EventLog(redis_url)
        for target in ("control", "rooms", "messages:dead", "frontends:x", "messages.a b", "messages."):
            push(redis_client, {"type": "join", "room": uniq("ej"),
                                "spec": {**irc_spec(ngircd, "#" + uniq("ejc"), nick=uniq("e")), "events": target}})
        push(redis_client, {"type": "join", "room": good_room,
                            "spec": {**irc_spec(ngircd, good_chan, nick=uniq("g")), "events": "messages.team"}})
        team = EventLog(redis_url, key="messages.team")
        team.wait(30, type="joined", room=good_room)
        wait_until(lambda: redis_client.llen("control:dead") >= 6, 10, what="six refused joins")
        time.sleep(2.0)  # a self-feeding loop would make thousands by now
        dead = dead_letters(redis_client)
        assert len(dead) == 6 and all("'events'" in d["error"]["detail"] for d in dead), dead
        assert "legacy" in log_tail(log_path, 200) and "invalid spec" in log_tail(log_path, 200)
        assert redis_client.llen("control") == 0 and not events.find(room="legacy")
    finally:
        stop_process(proc)


def test_one_item_redis_refuses_never_resends_the_others(redis_url, redis_client, ngircd, tmp_path):
    log_path = str(tmp_path / "frontend.log")
    bad_room, good_room = uniq("rb"), uniq("rg")
    redis_client.hset("messages.broken", "not", "a list")  # WRONGTYPE for every RPUSH to it
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("wt-")).start()
    try:
        events = EventLog(redis_url)
        push(redis_client,
             {"type": "join", "room": bad_room, "spec": {**irc_spec(ngircd, "#" + uniq("rbc"), nick=uniq("b")),
                                                         "events": "messages.broken"}},
             {"type": "join", "room": good_room, "spec": irc_spec(ngircd, "#" + uniq("rgc"), nick=uniq("g"))})
        events.wait(30, type="joined", room=good_room)
        pings = []
        for i in range(40):
            pings += [{"type": "ping", "room": bad_room, "cmd_id": f"b{i}"},
                      {"type": "ping", "room": good_room, "cmd_id": f"g{i}"}]
        push(redis_client, *pings)
        for i in range(40):
            events.wait(10, type="pong", room=good_room, cmd_id=f"g{i}")
        time.sleep(3.0)  # several retries of the refused list have happened by now
        events.pump(0.5)
        got = [e["cmd_id"] for e in events.find(type="pong", room=good_room)]
        assert sorted(got) == sorted(f"g{i}" for i in range(40)), f"{len(got)} pongs for 40 pings"
        assert "refused a write to messages.broken" in log_tail(log_path, 200)
        # once it is a list again, what was kept for it arrives, once each
        redis_client.delete("messages.broken")
        broken = EventLog(redis_url, key="messages.broken")
        broken.wait_for(lambda seen: len([e for e in seen if e["type"] == "pong"]) >= 40, 15,
                        what="the kept pongs")
        time.sleep(1.0)
        broken.pump(0.5)
        kept = [e["cmd_id"] for e in broken.find(type="pong")]
        assert sorted(kept) == sorted(f"b{i}" for i in range(40))
    finally:
        stop_process(proc)


# ------------------------------------------------------------------------------------------- item 5
def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(re.search(r"VmHWM:\s+(\d+)", fh.read()).group(1))


def test_huge_items_are_refused_without_being_held(redis_url, redis_client, tmp_path):
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("huge-")).start()
    try:
        push(redis_client, {"type": "ping", "room": "nope", "cmd_id": "warm"})
        wait_until(lambda: redis_client.llen("control:dead") == 1, 15, what="the frontend running")
        base = _peak_rss_kb(proc.proc.pid)
        big = "x" * (10 * 1024 * 1024)
        items = [ujson.dumps({"type": "say", "room": "r", "text": big}).encode() for _ in range(10)]
        items += [b"\x80" + big.encode() for _ in range(10)]
        for item in items:
            redis_client.rpush("control", item)
        wait_until(lambda: redis_client.llen("control:dead") == 21, 60, what="20 huge items dead-lettered")
        peak = _peak_rss_kb(proc.proc.pid)
        report("huge_items", items=len(items), item_mb=10, peak_growth_mb=round((peak - base) / 1024, 1))
        assert peak - base < 120 * 1024, f"the peak RSS grew by {(peak - base) // 1024} MB for 20 items of 10 MB"
        dead = dead_letters(redis_client)[1:]
        assert all(d["raw_bytes"] > 10 * 1024 * 1024 and d["raw_truncated"] and len(d["raw"]) <= 4096 * 3
                   for d in dead)
        assert all("limit" in d["error"]["detail"] for d in dead)
    finally:
        stop_process(proc)


def test_a_flooded_room_is_limited_and_the_drops_counted(redis_url, redis_client, ngircd, tmp_path):
    room, chan = uniq("fl"), "#" + uniq("flc")
    port = free_port()
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("flood-"), metrics_addr=f"127.0.0.1:{port}",
                           room_event_rate=20, room_event_burst=50).start()
    flooder = None
    try:
        events = EventLog(redis_url)
        push(redis_client, {"type": "join", "room": room, "spec": irc_spec(ngircd, chan, nick=uniq("fb"))})
        events.wait(30, type="joined", room=room)
        flooder = Observer(ngircd.host, ngircd.port, uniq("flooder"), [chan])
        t0 = time.monotonic()
        flooder.send_many([f"PRIVMSG {chan} :line {i}".encode() for i in range(1000)])
        wait_until(lambda: _metric(_metrics(port), "greenroom_events_rate_dropped_total") > 0, 15,
                   what="drops counted")
        time.sleep(1.0)
        elapsed = time.monotonic() - t0
        events.pump(0.5)
        got = len(events.find(type="message", room=room))
        dropped = _metric(_metrics(port), "greenroom_events_rate_dropped_total")
        report("room_flood", sent=1000, delivered=got, dropped=dropped, seconds=round(elapsed, 1))
        assert got <= 50 + 20 * elapsed + 5, got
        assert got + dropped <= 1000
    finally:
        if flooder is not None:
            flooder.close()
        stop_process(proc)


# ------------------------------------------------------------------------------------------- item 6
def test_log_lines_cannot_be_forged_and_repeats_are_folded(redis_url, redis_client, tmp_path):
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("logs-")).start()
    try:
        forged = "\n2026-01-01 00:00:00,000 ERROR frontend.app: FORGED \x1b[31mred\x07"
        items = [ujson.dumps({"type": "say", "room": f"r{forged}{i}", "text": "x"}).encode() for i in range(100)]
        items += [b"junk %d" % i for i in range(20_000)]
        for start in range(0, len(items), 5000):
            redis_client.rpush("control", *items[start:start + 5000])
        wait_until(lambda: redis_client.llen("control:dead") == len(items), 60, what="every item dead-lettered")
        with open(log_path, "rb") as fh:
            text = fh.read()
        assert not re.search(rb"^2026-01-01 00:00:00,000 ERROR frontend.app: FORGED", text, re.M)
        assert b"\x1b" not in text and b"\x07" not in text
        assert b"FORGED \\x1b[31mred\\x07" in text  # the line is there, escaped
        report("log_flood", items=len(items), log_bytes=len(text))
        assert len(text) < 100_000, f"{len(text)} bytes of log for {len(items)} rejected items"
    finally:
        stop_process(proc)


# ------------------------------------------------------------------------------------------- item 8
def test_a_rejected_join_keeps_no_secret_in_the_dead_letters(redis_url, redis_client, tmp_path):
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("sec-")).start()
    try:
        spec = {"protocol": "irc", "server": "127.0.0.1", "nick": "n", "channel": "#c", "password": "hunter2pw",
                "key": "chankey9", "sasl": {"username": "u", "password": "saslpw77"}, "chanel": "typo"}
        push(redis_client, {"type": "join", "room": "s1", "spec": spec},
             {"type": "join", "room": "s2", "spec": {"protocol": "xmpp", "jid": "a@b", "password": "xmpppw55",
                                                     "muc": "r@c", "nick": "n", "room_password": "roompw66",
                                                     "port": "bad"}})
        redis_client.rpush("control", b'{"type":"join","room":"s3","spec":{"pass\\u0077ord":"escapedpw",'
                                      b'"protocol":"irc"')  # not JSON: cut off
        wait_until(lambda: redis_client.llen("control:dead") == 3, 15, what="three dead letters")
        raw = b" ".join(redis_client.lrange("control:dead", 0, -1))
        for secret in (b"hunter2pw", b"chankey9", b"saslpw77", b"xmpppw55", b"roompw66"):
            assert secret not in raw
        assert raw.count(b'\\"***\\"') >= 5
        assert b"hunter2pw" not in open(log_path, "rb").read()
    finally:
        stop_process(proc)


# ------------------------------------------------------------------------------------------ item 12
def test_a_backlog_waits_in_redis_and_acks_cost_one_item(redis_url, redis_client, ngircd, tmp_path):
    rooms_n, says, window = 50, 10_000, 1000
    nick, fe_id = uniq("blb"), uniq("backlog-")
    rooms = {f"b{i}": "#" + uniq(f"blc{i}-") for i in range(rooms_n)}
    observer = Observer(ngircd.host, ngircd.port, uniq("blobs"), rooms.values())
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=fe_id, inflight_max=window).start()
    redis_client.config_set("slowlog-log-slower-than", 10_000)  # 10 ms
    try:
        events = EventLog(redis_url)
        push(redis_client, *[{"type": "join", "room": r, "spec": irc_spec(ngircd, c, nick=nick)}
                             for r, c in rooms.items()])
        events.wait_for(lambda seen: {e["room"] for e in seen if e["type"] == "joined"} >= set(rooms), 60,
                        what="all rooms joined")
        redis_client.slowlog_reset()
        ids = list(rooms)
        redis_client.rpush("control", *[ujson.dumps({"type": "say", "room": ids[i % rooms_n],
                                                     "text": f"bl-{i:05d}"}) for i in range(says)])
        most_held, worst_ping = 0, 0.0
        probe = redis.Redis.from_url(redis_url, socket_timeout=10)

        def delivered() -> int:
            return sum(1 for ln in observer.lines if ln.cmd == "PRIVMSG" and ln.text.startswith("bl-"))

        deadline = time.monotonic() + 120
        while delivered() < says and time.monotonic() < deadline:
            t = time.monotonic()
            probe.ping()
            worst_ping = max(worst_ping, time.monotonic() - t)
            most_held = max(most_held, held(probe, fe_id))
            time.sleep(0.02)
        # acknowledgements: an HDEL each now (an EVAL of LREMs over the whole list before)
        slow = [entry for entry in redis_client.slowlog_get(128)
                if b"HDEL" in entry["command"].upper() or b"LREM" in entry["command"].upper()]
        report("backlog", says=says, rooms=rooms_n, window=window, most_held=most_held,
               worst_ping_ms=round(worst_ping * 1000, 1), slow_commands=len(slow))
        assert delivered() == says
        assert most_held <= window, f"{most_held} commands held at once, the window is {window}"
        assert not slow, slow[:3]
        assert worst_ping < 0.25
    finally:
        redis_client.config_set("slowlog-log-slower-than", 10_000)
        stop_process(proc)
        observer.close()
