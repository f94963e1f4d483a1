"""Tenants on the chat side (issue 18), measured on the wire: real `greenroom run` processes, redis-server
and ngircd, raw IRC observers.

- fair turns on a shared connection: tenant A with 2,000 queued lines over 20 rooms and tenant B with
  one line, all on one connection under flood control: B's line goes out within a slot or two;
- a tenant's ``lines_per_minute`` over four rooms, four connections and two frontends: the lines of
  all of them together come out at about that rate (each frontend has half: it holds half the rooms),
  while a room without a tenant is not held back; ``/metrics`` counts them by tenant;
- connect pacing by tenant: 500 joins of A and 1 of B, each its own connection, at 20 connects/s: B's
  room is joined within a slot or two;
- a server's ``max_connections``, shared by tenants: rooms past it wait (state ``waiting``, one
  ``error`` ``max_connections`` each, no retries), a freed connection goes to the tenant with fewer.
"""

from __future__ import annotations

import re
import time

import pytest
import ujson
from prometheus_client.parser import text_string_to_metric_families

from frontend import tenants
from frontend.keys import Keys
from tests.ops.helpers import http_get
from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, irc_spec, push, stop_process
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.ports import free_port
from tests.support.report import report
from tests.support.servers import log_tail
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _says(room: str, texts: list[str]) -> list[str]:
    return [ujson.dumps({"type": "say", "room": room, "text": t}) for t in texts]


def _kill(proc: FrontendProcess | None) -> None:
    if proc is not None:
        proc.kill()


def test_a_tenant_with_one_line_is_not_held_behind_another_tenants_2000(redis_url, redis_client, ngircd, tmp_path):
    rate = 10.0  # lines/s of the shared connection after a burst of 5: a slot is 0.1 s
    nick = uniq("fair")
    a_rooms = [(f"a{i}", "#" + uniq(f"fa{i}-")) for i in range(20)]
    b_room = ("b0", "#" + uniq("fb"))
    observer = Observer(ngircd.host, ngircd.port, uniq("fobs"), [c for _, c in a_rooms + [b_room]])
    log_path = str(tmp_path / "fe.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("fair-")).start()
    try:
        events = EventLog(redis_url)
        flood = {"burst": 5, "rate": rate}
        joins = [{"type": "join", "room": r, "spec": {**irc_spec(ngircd, c, nick=nick, flood=flood), "tenant": "A"}}
                 for r, c in a_rooms]
        joins.append({"type": "join", "room": b_room[0],
                      "spec": {**irc_spec(ngircd, b_room[1], nick=nick, flood=flood), "tenant": "B"}})
        push(redis_client, *joins)
        for r, _ in a_rooms + [b_room]:
            events.wait(30, type="joined", room=r)
        assert len({e["nick"] for e in events.find(type="joined")}) == 1  # one nick: one connection
        # 2,000 lines of A: 100 in each of its 20 rooms, pushed room after room
        redis_client.rpush("control", *[x for r, _ in a_rooms for x in _says(r, [f"{r}-{i:03d}" for i in range(100)])])
        wait_until(lambda: redis_client.llen("control") == 0, 20, what="A's lines routed")
        time.sleep(1.5)  # every one of them queued on the connection

        def a_lines() -> list:
            return [ln for ln in observer.privmsgs(sender=nick) if ln.text[:1] == "a"]

        before = len(a_lines())
        t_b = time.monotonic()
        redis_client.rpush("control", *_says("b0", ["b-only"]))
        b_line = observer.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "b-only", 15, what="B's line")
        slots = len([ln for ln in a_lines() if t_b <= ln.t <= b_line.t])
        time.sleep(2.5)
        lines = a_lines()
        # within A, its rooms still take turns: 20 consecutive lines come from 20 different rooms
        window = [ln.text.split("-")[0] for ln in lines[before:before + 20]]
        report("tenant fairness", a_queued=2000, a_rooms=20, b_lines=1, slot_s=1 / rate,
               a_lines_before_b=slots, b_latency_s=round(b_line.t - t_b, 3), a_sent_before=before)
        assert slots <= 2, f"{slots} lines of A went out before B's one line (by room it would be ~20)"
        assert b_line.t - t_b < 3 / rate + 0.3
        assert len(set(window)) == 20, window
        assert not events.find(type="error"), events.find(type="error")[:3]
    finally:
        _kill(proc)
        observer.close()


def _scrape(port: int) -> dict:
    code, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_tenants_lines_per_minute_hold_over_rooms_connections_and_frontends(redis_url, redis_client, ngircd,
                                                                              tmp_path):
    # 8 lines/s over everything the tenant has (the rate is the test's choice: twice the 240/min this
    # test had measures the same in an 8 s window instead of 16 s)
    per_minute = 480
    tenants.save(redis_client, Keys(""), tenants.Tenant("rated", lines_per_minute=per_minute))
    rooms = [(f"r{i}", "#" + uniq(f"rt{i}-"), uniq(f"rb{i}-")) for i in range(4)]  # 4 nicks: 4 connections
    free = ("free", "#" + uniq("free"), uniq("fb"))
    observer = Observer(ngircd.host, ngircd.port, uniq("robs"), [c for _, c, _ in rooms + [free]])
    ports = [free_port(), free_port()]
    logs = [str(tmp_path / f"fe{i}.log") for i in range(2)]
    procs = [FrontendProcess(redis_url, logs[i], frontend_id=f"rate-fe{i}", metrics_addr=f"127.0.0.1:{ports[i]}",
                             lease_time=3.0, lease_margin=1.0).start() for i in range(2)]
    try:
        wait_until(lambda: redis_client.zcard("fleet:leases") == 2, 20, what="two frontends alive")
        events = EventLog(redis_url)
        for r, c, n in rooms:  # one at a time: each goes to the frontend with fewer rooms
            push(redis_client, {"type": "join", "room": r, "spec": {**irc_spec(ngircd, c, nick=n), "tenant": "rated"}})
            events.wait(30, type="joined", room=r)
        push(redis_client, {"type": "join", "room": free[0], "spec": irc_spec(ngircd, free[1], nick=free[2])})
        events.wait(30, type="joined", room=free[0])
        holders = {r: redis_client.hget("rooms:holder", r).decode() for r, _, _ in rooms}
        assert sorted(list(holders.values()).count(f"rate-fe{i}") for i in range(2)) == [2, 2], holders
        # each frontend has recomputed its share: 2 of the tenant's 4 rooms, so half the rate
        for path in logs:
            wait_until(lambda: "tenant rated: 2 of its 4 rooms here: 240.0 lines/min" in open(path).read(), 15,
                       what="the tenant's share recomputed")
        time.sleep(0.5)
        per_room = 60
        redis_client.rpush("control", *[x for r, _, _ in rooms
                                        for x in _says(r, [f"{r}-{i:02d}" for i in range(per_room)])])
        redis_client.rpush("control", *_says("free", [f"free-{i:02d}" for i in range(40)]))
        tenant_nicks = {n.lower() for _, _, n in rooms}
        measure = 8.0
        time.sleep(measure + 1.0)
        lines = sorted((ln for ln in observer.privmsgs() if ln.nick.lower() in tenant_nicks), key=lambda ln: ln.t)
        free_lines = observer.privmsgs(sender=free[2])
        assert lines, "no line of the tenant"
        t0 = lines[0].t
        inside = [ln for ln in lines if ln.t - t0 <= measure]
        burst = 2 * 20  # each frontend's bucket holds 5 s of its 4 lines/s
        steady = inside[burst:]
        rate = (len(steady) - 1) / (steady[-1].t - steady[0].t)
        by_frontend = {fe: len([ln for ln in inside if holders[ln.text.split("-")[0]] == fe]) for fe in set(holders.values())}
        samples = [_scrape(p) for p in ports]
        sent = [s.get(("greenroom_tenant_lines_sent_total", (("tenant", "rated"),)), 0) for s in samples]
        other = [s.get(("greenroom_tenant_lines_sent_total", (("tenant", "_other"),)), 0) for s in samples]
        report("tenant rate", lines_per_minute=per_minute, rooms=4, connections=4, frontends=2,
               lines_in_window=len(inside), window_s=measure, steady_per_min=round(rate * 60, 1),
               by_frontend=by_frontend, free_room_lines=len(free_lines), metric_sent=sent, metric_other=other)
        assert abs(rate * 60 - per_minute) / per_minute < 0.15, f"{rate * 60:.1f} lines/min, the limit is {per_minute}"
        expected = burst + per_minute / 60 * measure
        assert len(inside) <= expected * 1.1 + 2, (len(inside), expected)
        assert min(by_frontend.values()) >= 0.35 * len(inside), by_frontend  # both frontends had their half
        assert len(free_lines) == 40  # a room without a tenant is not held back by it
        assert free_lines[-1].t - free_lines[0].t < 3.0
        assert sum(sent) >= len(lines) and sum(other) >= 40
        assert not [k for s in samples for k in s if k[0] == "greenroom_tenant_lines_sent_total"
                    and dict(k[1])["tenant"] not in ("rated", "_other")]
    finally:
        for proc in procs:
            _kill(proc)
        observer.close()


def test_connect_pacing_lets_one_join_of_b_past_500_of_a(redis_url, redis_client, ngircd, tmp_path):
    rate = 20.0
    log_path = str(tmp_path / "fe.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("pace-"), connect_rate=rate).start()
    try:
        events = EventLog(redis_url)
        joins = [{"type": "join", "room": f"pa{i}", "spec": {**irc_spec(ngircd, f"#pa{i}", nick=uniq("pa")),
                                                              "tenant": "A"}} for i in range(500)]
        push(redis_client, *joins)
        events.wait_for(lambda seen: len([e for e in seen if e["type"] == "joined"]) >= 10, 30,
                        what="A's first joins")
        wait_until(lambda: redis_client.llen("control") == 0 and redis_client.hlen("rooms") == 500, 20,
                   what="A's 500 rooms made")
        time.sleep(0.3)
        t_push = time.time()
        push(redis_client, {"type": "join", "room": "pb", "spec": {**irc_spec(ngircd, "#pb", nick=uniq("pb")),
                                                                    "tenant": "B"}})
        b = events.wait(15, type="joined", room="pb")
        a_between = [e for e in events.find(type="joined") if e["room"] != "pb" and t_push <= e["ts"] <= b["ts"]]
        a_joined = len([e for e in events.find(type="joined") if e["room"] != "pb"])
        report("connect fairness", a_joins=500, b_joins=1, connect_rate=rate, a_joined_so_far=a_joined,
               a_joined_before_b=len(a_between), b_latency_s=round(b["ts"] - t_push, 3))
        assert len(a_between) <= 3, f"{len(a_between)} rooms of A were joined before B's (FIFO: ~{500 - a_joined})"
        assert b["ts"] - t_push < 4 / rate + 0.5
        assert a_joined < 200  # A was still far from done: the test measured while it waited
    finally:
        _kill(proc)


def _lusers(observer: Observer) -> int:
    start = len(observer.lines)
    observer.send_raw("LUSERS")
    line = observer.wait(lambda ln: ln.cmd == "251", 10, what="LUSERS", start=start)
    return int(re.search(r"There are (\d+) users", line.text).group(1))


def test_a_servers_connection_budget_is_shared_between_tenants(redis_url, redis_client, ngircd, tmp_path):
    budget = 4
    config = tmp_path / "g.toml"
    config.write_text(f'[servers."{ngircd.host}"]\nmax_connections = {budget}\nconnect_rate = 5\n')
    observer = Observer(ngircd.host, ngircd.port, uniq("bobs"))
    base_users = _lusers(observer)
    a = [f"ba{i}" for i in range(10)]
    b = ["bb0", "bb1"]
    log_path = str(tmp_path / "fe.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("budget-"), config=str(config)).start()
    try:
        events = EventLog(redis_url)
        push(redis_client, *[{"type": "join", "room": r, "spec": {**irc_spec(ngircd, "#" + r, nick=uniq(r)),
                                                                  "tenant": "A" if r in a else "B"}} for r in a + b])
        events.wait_for(lambda seen: len([e for e in seen if e["type"] == "joined"]) >= budget, 20, what="4 joins")
        events.wait_for(lambda seen: len([e for e in seen if e.get("code") == "max_connections"]) >= 8, 10,
                        what="the waiting rooms told")
        time.sleep(1.5)  # nothing more happens: no retries, no fifth connection
        joined = sorted(e["room"] for e in events.find(type="joined"))
        told = sorted(e["room"] for e in events.find(type="error", code="max_connections"))
        states = {r: ujson.loads(redis_client.hget("rooms:state", r))["state"] for r in a + b}
        users = _lusers(observer) - base_users
        assert sorted(joined) == ["ba0", "ba1", "bb0", "bb1"], joined  # two each, not four of A
        assert told == sorted(set(a + b) - set(joined)), told  # each waiting room told, once
        assert all(states[r] == "waiting" for r in told), states
        assert users == budget, users
        # a connection of A is freed: A holds 1, B 2, only A waits: A's next room gets it
        push(redis_client, {"type": "part", "room": "ba0"})
        got = events.wait(15, type="joined", room="ba2")
        # one of B is freed: the next goes to A again (only A waits), never a fifth connection
        push(redis_client, {"type": "part", "room": "bb1"})
        events.wait(15, type="joined", room="ba3")
        time.sleep(1.0)
        users_after = _lusers(observer) - base_users
        told_after = [e["room"] for e in events.find(type="error", code="max_connections")]
        report("connection budget", max_connections=budget, a_rooms=10, b_rooms=2, joined_first=joined,
               told_once=len(told), lusers=users, lusers_after=users_after,
               freed_to=[got["room"], "ba3"])
        assert users_after == budget and len(told_after) == len(told), told_after
        assert "reconnecting" not in log_tail(log_path, 400)
    finally:
        stop_process(proc)
        observer.close()


def test_past_a_tenants_max_queued_its_oldest_lines_are_dropped_and_counted(redis_url, redis_client, ngircd,
                                                                            tmp_path):
    tenants.save(redis_client, Keys(""), tenants.Tenant("capped", lines_per_minute=6, max_queued=10))
    rooms = [("c0", "#" + uniq("cq0-")), ("c1", "#" + uniq("cq1-"))]
    nick = uniq("cq")
    observer = Observer(ngircd.host, ngircd.port, uniq("cobs"), [c for _, c in rooms])
    port = free_port()
    log_path = str(tmp_path / "fe.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("capped-"), metrics_addr=f"127.0.0.1:{port}",
                           lease_time=3.0, lease_margin=1.0).start()
    try:
        events = EventLog(redis_url)
        push(redis_client, *[{"type": "join", "room": r, "spec": {**irc_spec(ngircd, c, nick=nick), "tenant": "capped"}}
                             for r, c in rooms])
        for r, _ in rooms:
            events.wait(30, type="joined", room=r)
        wait_until(lambda: "tenant capped: 2 of its 2 rooms here" in open(log_path).read(), 10, what="the share")
        # the bucket's one token goes to a first line; then 19 lines of c0 (past max_queued its oldest 9
        # are dropped, 10 wait) and 10 of c1: each drops the tenant's oldest, c0's, whatever room it is in.
        # (Pushed in steps: the rooms' greenlets queue their lines in turn, not in control's order.)
        drops = lambda seen: len([e for e in seen if e.get("code") == "flood_dropped"])  # noqa: E731
        push(redis_client, {"type": "say", "room": "c0", "text": "cq-00", "cmd_id": "q00"})
        wait_until(lambda: [ln.text for ln in observer.privmsgs(sender=nick)] == ["cq-00"], 10, what="the first line")
        push(redis_client, *[{"type": "say", "room": "c0", "text": f"cq-{i:02d}", "cmd_id": f"q{i:02d}"}
                             for i in range(1, 20)])
        events.wait_for(lambda seen: drops(seen) >= 9, 15, what="9 drops")
        push(redis_client, *[{"type": "say", "room": "c1", "text": f"cq-{i:02d}", "cmd_id": f"q{i:02d}"}
                             for i in range(20, 30)])
        events.wait_for(lambda seen: drops(seen) >= 19, 15, what="19 drops")
        time.sleep(0.5)
        dropped = sorted(e["cmd_id"] for e in events.find(type="error", code="flood_dropped"))
        sent = [ln.text for ln in observer.privmsgs(sender=nick)]
        samples = _scrape(port)
        report("tenant max_queued", max_queued=10, pushed=30, sent=len(sent), dropped=len(dropped),
               metric_drops=samples.get(("greenroom_tenant_line_drops_total", (("tenant", "capped"),))))
        assert sent == ["cq-00"]
        assert dropped == [f"q{i:02d}" for i in range(1, 20)], dropped  # the oldest waiting ones
        assert "max_queued" in events.find(type="error", code="flood_dropped")[0]["detail"]
        assert samples[("greenroom_tenant_line_drops_total", (("tenant", "capped"),))] == 19
        assert samples[("greenroom_line_drops_total", (("reason", "tenant_queued"),))] == 19
    finally:
        _kill(proc)
        observer.close()
