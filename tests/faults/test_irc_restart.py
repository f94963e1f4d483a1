"""Issue 4, fault 3: the IRC server restarts with 500 rooms joined.

A private ngircd (so the session server is not disturbed), reached through the in-test TCP proxy,
which records when every connection arrives: that is the server-side view of the connect pacing.
500 rooms with distinct nicks (one connection each), ``connect_rate`` 100/s, ``reconnect_max`` 5 s.
After the restart all 500 rooms must be joined again within the backoff cap plus the time the pacing
needs for 500 connects (5 s), the connects are spread over at least (500 - 100) / 100 s, and no
one-second window holds more than ``connect_rate`` connects (the strict form, after a quiet spell
with a full bucket, is the last test). Arrival times are the kernel's (see ``TcpProxy.accept_times``).
"""

from __future__ import annotations

import time

import pytest
import ujson

from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, irc_spec, proc_alive, stop_process
from tests.support.names import uniq
from tests.support.report import report
from tests.support.servers import NgircdServer, log_tail
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(150)]

ROOMS = 500
CONNECT_RATE = 100.0
RECONNECT_MAX = 5.0


def _max_per_window(times: list[float], window: float = 1.0) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_500_rooms_rejoin_after_an_irc_server_restart_paced_and_within_the_cap(redis_url, redis_client, tmp_path):
    ircd = NgircdServer(str(tmp_path / "ngircd")).start()
    proxy = TcpProxy(ircd.host, ircd.port).start()
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("ircrst-"), connect_rate=CONNECT_RATE,
                           reconnect_min=0.5, reconnect_max=RECONNECT_MAX, log_level="WARNING").start()
    try:
        events = EventLog(redis_url)
        specs = {}
        for i in range(ROOMS):
            spec = irc_spec(ircd, f"#rs{i}", nick=f"rs{i}x{uniq('')}")
            spec["port"] = proxy.port
            specs[f"r{i}"] = spec
        t0 = time.monotonic()
        redis_client.rpush("control", *[ujson.dumps({"type": "join", "room": r, "spec": s}) for r, s in specs.items()])

        def joined_rooms(since: float) -> set:
            return {e["room"] for e in events.seen if e["type"] == "joined" and e["ts"] >= since}

        wall0 = time.time()
        events.wait_for(lambda seen: len(joined_rooms(wall0)) == ROOMS, 60, what="500 rooms joined")
        t_joined = time.monotonic()
        first = sorted(t for t in proxy.accept_times if t >= t0)
        time.sleep(1.5)  # a quiet spell: the pacer's bucket fills up again

        n_before = len(proxy.accept_times)
        t_stop = time.monotonic()
        ircd.restart()
        t_back = time.monotonic()
        wall_back = time.time() - 0.05
        try:
            events.wait_for(lambda seen: len(joined_rooms(wall_back)) == ROOMS,
                            RECONNECT_MAX + ROOMS / CONNECT_RATE + 15, what="500 rooms joined again")
        except AssertionError:
            raise AssertionError(f"{ROOMS - len(joined_rooms(wall_back))} rooms not joined again\n"
                                 + log_tail(log_path)) from None
        t_rejoined = time.monotonic()
        rejoin_ts = sorted(e["ts"] for e in events.seen if e["type"] == "joined" and e["ts"] >= wall_back)
        again = sorted(proxy.accept_times[n_before:])
        report("irc_restart", rooms=ROOMS, connect_rate=CONNECT_RATE, reconnect_max=RECONNECT_MAX,
               initial_join_s=round(t_joined - t0, 2), initial_connects=len(first),
               initial_connect_span_s=round(first[-1] - first[0], 2),
               initial_max_per_1s=_max_per_window(first), server_down_s=round(t_back - t_stop, 2),
               all_rejoined_after_server_back_s=round(t_rejoined - t_back, 2),
               rejoin_span_s=round(rejoin_ts[-1] - rejoin_ts[0], 2),
               connect_attempts_after_restart=len(again),
               restart_max_per_1s=_max_per_window(again))
        assert proc_alive(proc.proc), log_tail(log_path)
        # all back within the backoff cap plus the pacing of 500 connects (and some scheduling slack)
        assert t_rejoined - t_back <= RECONNECT_MAX + ROOMS / CONNECT_RATE + 3.0
        # paced: 500 connections need at least (500 - bucket) / rate seconds
        assert first[-1] - first[0] >= (ROOMS - CONNECT_RATE) / CONNECT_RATE * 0.9
        assert rejoin_ts[-1] - rejoin_ts[0] >= (ROOMS - CONNECT_RATE) / CONNECT_RATE * 0.9
        # the per-second ceiling: the rate, +1 for a closed window's two edges, +1 for the jitter of
        # accept timestamps at 10 ms spacing (the strict form at 50/s is the test below)
        assert _max_per_window(again) <= CONNECT_RATE + 2
        assert _max_per_window(first) <= CONNECT_RATE + 2
        # every room says joined in rooms:state
        states = redis_client.hgetall("rooms:state")
        assert sum(1 for v in states.values() if ujson.loads(v)["state"] == "joined") == ROOMS
    finally:
        stop_process(proc, timeout=15)
        proxy.stop()
        ircd.stop()


def test_connects_never_exceed_connect_rate_in_any_second(redis_url, redis_client, ngircd, tmp_path):
    rate, rooms = 50.0, 120
    proxy = TcpProxy(ngircd.host, ngircd.port).start()
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("pace-"), connect_rate=rate,
                           log_level="WARNING").start()
    try:
        events = EventLog(redis_url)
        time.sleep(1.5)  # the pacer's bucket is full after a quiet start
        items = []
        for i in range(rooms):
            spec = irc_spec(ngircd, "#" + uniq("pace"), nick=uniq("pc"))
            spec["port"] = proxy.port
            items.append(ujson.dumps({"type": "join", "room": f"p{i}", "spec": spec}))
        redis_client.rpush("control", *items)
        events.wait_for(lambda seen: len([e for e in seen if e["type"] == "joined"]) == rooms, 30,
                        what="all rooms joined")
        worst = _max_per_window(sorted(proxy.accept_times))
        report("connect_pacing", connect_rate=rate, connections=rooms, max_connects_in_1s=worst)
        assert worst <= rate + 1, f"{worst} connections started within one second, connect_rate is {rate:g}/s"
    finally:
        stop_process(proc, timeout=15)
        proxy.stop()
