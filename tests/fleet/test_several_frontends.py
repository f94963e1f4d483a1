"""Several frontends share the rooms (issue 15), each a real `greenroom run` process, on one real
redis-server and one real ngircd.

Placement spreads rooms; every command reaches its room's holder whichever frontend's router popped
it, in order per room, none dead-lettered; kill -9 of one: its rooms are held again, nothing lost; a
SIGTERM hands the rooms over; a frontend that starts later doubles no room; one paused past its lease
leaves its rooms to the others and never speaks in them again.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
import ujson

from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, held, irc_spec, push, stop_process
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.report import report
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

#: short leases, so a fail-over test takes seconds (one test below runs with the defaults)
QUICK = {"lease_time": 3.0, "lease_margin": 1.0, "heartbeat_interval": 1.0, "recovery_interval": 2.0}


class Fleet:
    """N frontends as processes, on one Redis; always stopped."""

    def __init__(self, redis_url: str, tmp_path, n: int, **env) -> None:
        self.redis_url, self.tmp_path, self.env = redis_url, tmp_path, env
        self.procs: dict[str, FrontendProcess] = {}
        for _ in range(n):
            self.add()

    def add(self, **env) -> str:
        fe_id = uniq("fe")
        proc = FrontendProcess(self.redis_url, str(self.tmp_path / f"{fe_id}.log"), frontend_id=fe_id,
                               **{**self.env, **env}).start()
        self.procs[fe_id] = proc
        return fe_id

    def ids(self) -> list[str]:
        return list(self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)


def holders(client: redis.Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall("rooms:holder").items()}


def alive(client: redis.Redis) -> set[str]:
    now_ms = int(client.time()[0]) * 1000
    return {m.decode() for m in client.zrangebyscore("fleet:leases", now_ms, "+inf")}


def wait_registered(client: redis.Redis, ids: list[str], timeout: float = 20.0) -> None:
    wait_until(lambda: set(ids) <= alive(client), timeout, what=f"leases of {ids}")


def names(observer: Observer, channel: str, timeout: float = 10.0) -> set[str]:
    """The nicks in ``channel`` now (NAMES), without the observer itself."""
    start = len(observer.lines)
    observer.send_raw(f"NAMES {channel}")
    observer.wait(lambda ln: ln.cmd == "366" and len(ln.params) > 1 and ln.params[1].lower() == channel.lower(),
                  timeout, start=start, what=f"NAMES {channel}")
    nicks: set[str] = set()
    for ln in observer.lines[start:]:
        if ln.cmd == "353" and len(ln.params) >= 4 and ln.params[2].lower() == channel.lower():
            nicks.update(n.lstrip("@+%~&") for n in ln.params[3].split())
    return {n for n in nicks if n.lower() != observer.nick.lower()}


def _join_rooms(client, ngircd, events: EventLog, rooms: dict[str, str], nicks: dict[str, str], *,
                timeout: float = 60, what: str = "all rooms joined") -> None:
    """Join every room (room id -> channel, each with its nick) and wait until each has a ``joined``."""
    push(client, *[{"type": "join", "room": r, "spec": irc_spec(ngircd, c, nick=nicks[r])} for r, c in rooms.items()])
    events.wait_for(lambda seen: {e["room"] for e in seen if e["type"] == "joined"} >= set(rooms), timeout,
                    what=what)


def _says(rooms: list[str], per_room: int, tag: str) -> list[dict]:
    return [{"type": "say", "room": r, "text": f"{tag}-{r}-{i:03d}"} for i in range(per_room) for r in rooms]


def _in_order_per_room(observer: Observer, rooms: dict[str, str], tag: str) -> dict[str, list[str]]:
    out = {}
    for r, chan in rooms.items():
        out[r] = [ln.text for ln in observer.privmsgs(chan) if ln.text.startswith(f"{tag}-{r}-")]
    return out


def _first_occurrences(texts: list[str]) -> list[str]:
    seen, out = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_placement_spreads_rooms_and_every_say_reaches_its_room_in_order(redis_url, redis_client, ngircd,
                                                                         tmp_path, n):
    fleet = Fleet(redis_url, tmp_path, n, **QUICK)
    rooms = {f"p{i}": "#" + uniq(f"pc{i}-") for i in range(20)}
    nicks = {r: uniq("pn") for r in rooms}  # a nick each: no two rooms share a connection
    observer = Observer(ngircd.host, ngircd.port, uniq("pobs"), rooms.values())
    try:
        wait_registered(redis_client, fleet.ids())
        events = EventLog(redis_url)
        _join_rooms(redis_client, ngircd, events, rooms, nicks)
        per_frontend = {fe: [r for r, h in holders(redis_client).items() if h == fe] for fe in fleet.ids()}
        report(f"placement_{n}", rooms_per_frontend={fe[-4:]: len(v) for fe, v in per_frontend.items()})
        assert all(len(v) >= 20 // n - 2 for v in per_frontend.values()), per_frontend
        assert sum(len(v) for v in per_frontend.values()) == 20
        push(redis_client, *_says(list(rooms), 10, "o"))
        wait_until(lambda: sum(len(v) for v in _in_order_per_room(observer, rooms, "o").values()) >= 200, 30,
                   what="200 says")
        got = _in_order_per_room(observer, rooms, "o")
        for r in rooms:
            assert got[r] == [f"o-{r}-{i:03d}" for i in range(10)], (r, got[r])
        assert redis_client.llen("control:dead") == 0, redis_client.lrange("control:dead", 0, 3)
        for r, chan in list(rooms.items())[:5]:
            assert names(observer, chan) == {nicks[r]}  # one bot per room
    finally:
        fleet.stop()
        observer.close()


def test_kill_9_of_one_frontend_loses_nothing_and_its_rooms_are_held_again(redis_url, redis_client, ngircd,
                                                                           tmp_path):
    fleet = Fleet(redis_url, tmp_path, 2, **QUICK)
    rooms = {f"k{i}": "#" + uniq(f"kc{i}-") for i in range(12)}
    nicks = {r: uniq("kn") for r in rooms}
    observer = Observer(ngircd.host, ngircd.port, uniq("kobs"), rooms.values())
    try:
        wait_registered(redis_client, fleet.ids())
        events = EventLog(redis_url)
        _join_rooms(redis_client, ngircd, events, rooms, nicks)
        victim = max(fleet.ids(), key=lambda fe: sum(1 for h in holders(redis_client).values() if h == fe))
        survivor = next(fe for fe in fleet.ids() if fe != victim)
        victims_rooms = [r for r, h in holders(redis_client).items() if h == victim]
        assert victims_rooms
        says = _says(list(rooms), 30, "k")
        push(redis_client, *says[:120])
        time.sleep(0.3)
        fleet.procs[victim].proc.kill()  # kill -9 with commands in flight
        t_kill = time.monotonic()
        push(redis_client, *says[120:])  # and more during the fail-over
        wait_until(lambda: set(holders(redis_client).values()) == {survivor}, 20, what="every room held by the survivor")
        t_held = time.monotonic()
        events.wait_for(lambda seen: {e["room"] for e in seen if e["type"] == "joined" and e["ts"] > time.time() - 60
                                      and e["room"] in victims_rooms} >= set(victims_rooms), 20,
                        what="the victim's rooms joined again")
        t_joined = time.monotonic()
        wait_until(lambda: all(set(_in_order_per_room(observer, rooms, "k")[r]) >= {f"k-{r}-{i:03d}" for i in range(30)}
                               for r in rooms), 40, what="every say delivered")
        got = _in_order_per_room(observer, rooms, "k")
        dups = sum(len(v) - len(set(v)) for v in got.values())
        report("kill9_failover", rooms=len(rooms), victims_rooms=len(victims_rooms), says=len(says),
               held_again_s=round(t_held - t_kill, 1), joined_again_s=round(t_joined - t_kill, 1), duplicates=dups)
        for r in rooms:  # in order per room (a duplicate may repeat a line, never reorder the first ones)
            assert _first_occurrences(got[r]) == [f"k-{r}-{i:03d}" for i in range(30)], (r, got[r])
        assert held(redis_client, victim) == 0 and redis_client.llen(f"control:inbox:{victim}") == 0
        assert redis_client.llen("control:dead") == 0
    finally:
        fleet.stop()
        observer.close()


def test_kill_9_fail_over_with_the_default_lease_rejoins_within_10_seconds(redis_url, redis_client, ngircd,
                                                                            tmp_path):
    fleet = Fleet(redis_url, tmp_path, 2)
    rooms = {f"d{i}": "#" + uniq(f"dc{i}-") for i in range(6)}
    nicks = {r: uniq("dn") for r in rooms}
    try:
        wait_registered(redis_client, fleet.ids())
        events = EventLog(redis_url)
        _join_rooms(redis_client, ngircd, events, rooms, nicks)
        victim = next(fe for fe in fleet.ids() if fe in holders(redis_client).values())
        victims_rooms = {r for r, h in holders(redis_client).items() if h == victim}
        start = len(events.seen)
        fleet.procs[victim].proc.kill()
        t_kill = time.monotonic()
        events.wait_for(lambda seen: {e["room"] for e in seen[start:] if e["type"] == "joined"} >= victims_rooms,
                        15, what="the victim's rooms joined again")
        took = time.monotonic() - t_kill
        report("kill9_default_lease", rooms=len(victims_rooms), rejoined_after_s=round(took, 1))
        assert took < 10.0, f"{took:.1f}s to rejoin with the default lease"
    finally:
        fleet.stop()


def test_sigterm_hands_the_rooms_to_the_peer(redis_url, redis_client, ngircd, tmp_path):
    fleet = Fleet(redis_url, tmp_path, 2, **QUICK)
    rooms = {f"h{i}": "#" + uniq(f"hc{i}-") for i in range(8)}
    nicks = {r: uniq("hn") for r in rooms}
    observer = Observer(ngircd.host, ngircd.port, uniq("hobs"), rooms.values())
    try:
        wait_registered(redis_client, fleet.ids())
        events = EventLog(redis_url)
        _join_rooms(redis_client, ngircd, events, rooms, nicks)
        leaving = next(fe for fe in fleet.ids() if fe in holders(redis_client).values())
        staying = next(fe for fe in fleet.ids() if fe != leaving)
        moved = {r for r, h in holders(redis_client).items() if h == leaving}
        push(redis_client, *_says(list(rooms), 5, "s"))
        start = len(events.seen)
        code, took = fleet.procs[leaving].terminate(timeout=15)
        assert code == 0
        t0 = time.monotonic()
        events.wait_for(lambda seen: {e["room"] for e in seen[start:] if e["type"] == "joined"} >= moved, 20,
                        what="the moved rooms joined by the peer")
        handover = time.monotonic() - t0 + took
        assert set(holders(redis_client).values()) == {staying}
        push(redis_client, *_says(list(rooms), 5, "t"))
        wait_until(lambda: all(len(set(_in_order_per_room(observer, rooms, "t")[r])) == 5 for r in rooms), 30,
                   what="says after the hand-over")
        for tag in ("s", "t"):
            got = _in_order_per_room(observer, rooms, tag)
            for r in rooms:
                assert _first_occurrences(got[r]) == [f"{tag}-{r}-{i:03d}" for i in range(5)], (tag, r, got[r])
        report("sigterm_handover", rooms=len(moved), stop_s=round(took, 1), handover_s=round(handover, 1),
               per_room_s=round(handover / max(1, len(moved)), 2))
        assert handover / len(moved) < 5.0
        for r in list(moved)[:3]:
            assert len(names(observer, rooms[r])) == 1  # one bot, the new holder's
    finally:
        fleet.stop()
        observer.close()


def test_a_frontend_that_starts_later_doubles_no_room_and_takes_new_ones(redis_url, redis_client, ngircd, tmp_path):
    fleet = Fleet(redis_url, tmp_path, 1, **QUICK)
    rooms = {f"l{i}": "#" + uniq(f"lc{i}-") for i in range(6)}
    nicks = {r: uniq("ln") for r in rooms}
    observer = Observer(ngircd.host, ngircd.port, uniq("lobs"), rooms.values())
    try:
        (first,) = fleet.ids()
        wait_registered(redis_client, [first])
        events = EventLog(redis_url)
        _join_rooms(redis_client, ngircd, events, rooms, nicks)
        late = fleet.add()
        wait_registered(redis_client, [late])
        time.sleep(2.0)  # it has loaded the registry and adopted what it should by now
        assert set(holders(redis_client).values()) == {first}
        assert redis_client.scard(f"rooms:held:{late}") == 0
        for r, chan in rooms.items():
            assert names(observer, chan) == {nicks[r]}
        new = {f"n{i}": "#" + uniq(f"nc{i}-") for i in range(4)}
        _join_rooms(redis_client, ngircd, events, new, {r: uniq("nn") for r in new}, timeout=30,
                    what="the new rooms joined")
        assert {holders(redis_client)[r] for r in new} == {late}  # fewest rooms
    finally:
        fleet.stop()
        observer.close()


def test_a_frontend_paused_past_its_lease_never_speaks_in_the_rooms_taken_from_it(redis_url, redis_client, ngircd,
                                                                                   tmp_path):
    # flood control on (4 lines/s after a burst of 2), so the paused frontend has lines queued when it
    # is stopped (the rate is the test's choice: any rate that leaves lines queued proves the point;
    # 4/s rather than 1/s lets the new holder say the ~17 left in ~4 s instead of ~17 s)
    fleet = Fleet(redis_url, tmp_path, 2, **QUICK, flood_rate=4.0, flood_burst=2)
    room, chan, nick = "z0", "#" + uniq("zc"), uniq("zn")
    observer = Observer(ngircd.host, ngircd.port, uniq("zobs"), [chan])
    try:
        wait_registered(redis_client, fleet.ids())
        events = EventLog(redis_url)
        push(redis_client, {"type": "join", "room": room, "spec": {**irc_spec(ngircd, chan, nick=nick), "flood": None}})
        events.wait(30, type="joined", room=room)
        paused = holders(redis_client)[room]
        other = next(fe for fe in fleet.ids() if fe != paused)
        push(redis_client, *[{"type": "say", "room": room, "text": f"q-{i:02d}"} for i in range(20)])
        observer.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "q-02", 15, what="the first lines")
        pid = fleet.procs[paused].proc.pid
        os.kill(pid, signal.SIGSTOP)  # a VM freeze, longer than the lease
        try:
            wait_until(lambda: holders(redis_client).get(room) == other, 20, what="the room taken over")
            new_nick = events.wait(20, type="joined", room=room)["nick"]
            time.sleep(1.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = len(observer.lines)
        wait_until(lambda: len(observer.privmsgs(chan, sender=new_nick)) >= 1, 40, what="the new holder speaking")
        # the paused one had ~17 lines queued: none may come after it resumed (its bucket refilled while
        # it was stopped: a frontend that still spoke would send 2 at once and 4/s more within this wait)
        time.sleep(2.0)
        late = [ln for ln in observer.lines[resumed:] if ln.cmd == "PRIVMSG" and ln.nick.lower() == nick.lower()]
        assert not late, f"the paused frontend spoke after its rooms were taken: {[ln.text for ln in late]}"
        wait_until(lambda: nick.lower() not in {n.lower() for n in names(observer, chan)}, 20,
                   what="the paused frontend out of the channel")
        assert set(holders(redis_client).values()) == {other}
        # everything is said by someone (the rest by the new holder, at its flood rate of 4 lines/s)
        wanted = {f"q-{i:02d}" for i in range(20)}
        wait_until(lambda: {ln.text for ln in observer.privmsgs(chan)} >= wanted, 40, what="every line said")
        late = [ln for ln in observer.lines[resumed:] if ln.cmd == "PRIVMSG" and ln.nick.lower() == nick.lower()]
        assert not late, f"the paused frontend spoke after its rooms were taken: {[ln.text for ln in late]}"
    finally:
        fleet.stop()
        observer.close()


def test_every_command_reaches_its_holder_whichever_router_popped_it(redis_url, redis_client, ngircd, tmp_path):
    """Many commands of few rooms pushed at once: several routers race for `control`; nothing is
    dead-lettered, and each room gets its commands in order."""
    fleet = Fleet(redis_url, tmp_path, 3, **QUICK, control_drain=7)  # small batches: the routers interleave
    rooms = {f"r{i}": "#" + uniq(f"rc{i}-") for i in range(4)}
    observer = Observer(ngircd.host, ngircd.port, uniq("robs"), rooms.values())
    try:
        wait_registered(redis_client, fleet.ids())
        events = EventLog(redis_url)
        _join_rooms(redis_client, ngircd, events, rooms, {r: uniq("rn") for r in rooms})
        items = [ujson.dumps(c) for c in _says(list(rooms), 100, "x")]
        for start in range(0, len(items), 25):
            redis_client.rpush("control", *items[start:start + 25])
        wait_until(lambda: sum(len(v) for v in _in_order_per_room(observer, rooms, "x").values()) >= 400, 40,
                   what="400 says")
        got = _in_order_per_room(observer, rooms, "x")
        for r in rooms:
            assert got[r] == [f"x-{r}-{i:03d}" for i in range(100)], r
        assert redis_client.llen("control:dead") == 0
    finally:
        fleet.stop()
        observer.close()


def _http(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_workers_2_run_two_frontends_under_one_supervisor(redis_url, redis_client, ngircd, tmp_path):
    from tests.support.ports import free_port

    port = free_port()
    base = uniq("wk")
    proc = FrontendProcess(redis_url, str(tmp_path / "workers.log"), frontend_id=base, workers=2,
                           metrics_addr=f"127.0.0.1:{port}", **QUICK).start()
    ids = [f"{base}:w0", f"{base}:w1"]
    rooms = {f"w{i}": "#" + uniq(f"wc{i}-") for i in range(10)}
    observer = Observer(ngircd.host, ngircd.port, uniq("wobs"), rooms.values())
    try:
        wait_registered(redis_client, ids, timeout=30)
        events = EventLog(redis_url)
        _join_rooms(redis_client, ngircd, events, rooms, {r: uniq("wn") for r in rooms})
        spread = {fe: sum(1 for h in holders(redis_client).values() if h == fe) for fe in ids}
        assert min(spread.values()) >= 3, spread
        push(redis_client, *_says(list(rooms), 5, "w"))
        wait_until(lambda: all(len(_in_order_per_room(observer, rooms, "w")[r]) >= 5 for r in rooms), 30,
                   what="the says")
        got = _in_order_per_room(observer, rooms, "w")
        assert all(got[r] == [f"w-{r}-{i:03d}" for i in range(5)] for r in rooms), got
        # one address for the host
        code, text = wait_until(lambda: (r := _http(f"http://127.0.0.1:{port}/readyz"))[0] == 200 and r, 20,
                                what="/readyz of both workers")
        assert set(ujson.loads(text)["workers"]) == set(ids)
        code, metrics = _http(f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and 'worker="0"' in metrics and 'worker="1"' in metrics
        assert "greenroom_commands_received_total{worker=" in metrics
        # a worker killed with -9 is restarted by the supervisor, as itself
        pid0 = int(redis_client.hget(f"frontends:{ids[0]}", "pid"))
        os.kill(pid0, signal.SIGKILL)
        wait_until(lambda: (p := redis_client.hget(f"frontends:{ids[0]}", "pid")) and int(p) != pid0, 30,
                   what="worker 0 restarted")
        wait_registered(redis_client, ids)
        push(redis_client, *_says(list(rooms), 2, "v"))
        wait_until(lambda: all(len(set(_in_order_per_room(observer, rooms, "v")[r])) == 2 for r in rooms), 40,
                   what="says after the restart")
        assert set(holders(redis_client).values()) <= set(ids)
        code, took = proc.terminate(timeout=30)
        assert code == 0
        assert not alive(redis_client) & set(ids)
        report("workers_2", spread=spread, stop_s=round(took, 1))
    finally:
        stop_process(proc)
        observer.close()


def test_a_parted_rooms_placement_is_dropped_and_a_quick_rejoin_keeps_one_holder(redis_url, redis_client, ngircd,
                                                                                 tmp_path):
    fleet = Fleet(redis_url, tmp_path, 2, lease_time=1.5, lease_margin=0.5)
    chan, chan2 = "#" + uniq("gc"), "#" + uniq("gc2")
    observer = Observer(ngircd.host, ngircd.port, uniq("gobs"), [chan, chan2])
    try:
        wait_registered(redis_client, fleet.ids())
        events = EventLog(redis_url)
        push(redis_client, {"type": "join", "room": "g1", "spec": irc_spec(ngircd, chan, nick=uniq("gn"))},
             {"type": "join", "room": "g2", "spec": irc_spec(ngircd, chan2, nick=uniq("gm"))})
        events.wait(30, type="joined", room="g1")
        events.wait(30, type="joined", room="g2")
        # g1: parted for good; g2: parted and joined again at once (both commands reach its holder)
        push(redis_client, {"type": "part", "room": "g1"}, {"type": "part", "room": "g2"},
             {"type": "join", "room": "g2", "spec": irc_spec(ngircd, chan2, nick=uniq("gm"))})
        events.wait(15, type="parted", room="g1")
        events.wait(15, type="joined", room="g2")
        wait_until(lambda: "g1" not in holders(redis_client), 20, what="g1's placement dropped")
        holder = holders(redis_client).get("g2")
        assert holder in fleet.ids() and redis_client.sismember(f"rooms:held:{holder}", "g2")
        time.sleep(6)  # several housekeeping rounds: g2 stays placed, once
        assert holders(redis_client).get("g2") == holder
        assert len(names(observer, chan2)) == 1
    finally:
        fleet.stop()
        observer.close()
