"""Issue 13, items 3, 5 (NAMES), 7 and 10 (PING): hostile IRC servers cannot stop, grow or fool greenroom.

The hostile servers are scripts of the test suite's own: no packaged server sends a 16 MB line, an
endless stream, NAMES with two million nicks, a 433 for every NICK or a NUL in a PING.
``tests/support/flood_ircd.py`` floods from its own process (full speed on the other core);
``tests/support/scripted_ircd.py`` runs in-process for the slower scripts. Meanwhile a room on the
real ngircd must keep answering: ``ping`` commands get their ``pong`` within a second or two and a
user's line arrives, however the other server behaves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import gevent
import gevent.event
import pytest
import ujson

from tests.support.events import Drain, Pinger
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.report import report, rss_kb
from tests.support.scripted_ircd import ScriptedIrcd, irc_stub_spec
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flood_server(mode: str, *args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.flood_ircd", mode, *args], cwd=ROOT,
                            stdout=subprocess.PIPE)
    port = int(proc.stdout.readline())
    return proc, port


def _good_room(redis_client, collector, ngircd):
    """A room on the real ngircd, joined, with an observer in its channel who can speak."""
    chan = "#" + uniq("good")
    push(redis_client, {"type": "join", "room": "good", "spec": irc_spec(ngircd, chan, nick=uniq("gbot"))})
    collector.wait(15, type="joined", room="good")
    return chan, Observer(ngircd.host, ngircd.port, uniq("guser"), [chan])


def _flood_spec(port: int, chan: str) -> dict:
    return {"protocol": "irc", "server": "127.0.0.1", "port": port, "nick": uniq("vict"), "channel": chan,
            "flood": False}


def test_a_16mb_line_and_a_line_flood_leave_the_other_rooms_answering(redis_url, redis_client, ngircd):
    proc, port = _flood_server("long", "--seconds", "4")
    collector = Drain(redis_url)
    problem = None
    try:
        with running_frontend(redis_url, frontend_id=uniq("long-")) as fe:
            chan, user = _good_room(redis_client, collector, ngircd)
            pinger = Pinger(redis_client, collector, "good")
            rss0 = rss_kb()
            heard = None
            try:
                push(redis_client, {"type": "join", "room": "bad", "spec": _flood_spec(port, "#bad")})
                collector.wait(60, type="message", room="bad", text="after-long")
                gevent.sleep(1.0)  # the NOTICE flood is running now
                user.privmsg(chan, "during-the-flood")
                said = time.monotonic()
                collector.wait(60, type="message", room="good", text="during-the-flood")
                heard = [t for t, e in collector.stamped() if e.get("text") == "during-the-flood"][0] - said
                collector.wait(60, type="message", room="bad", text="after-flood")
            except AssertionError as exc:
                problem = exc
            rss1 = rss_kb()
            latency = pinger.stop()
            too_long = fe.counters["lines_too_long"]
            user.close()
        long_events = [e for e in collector.find(room="bad") if len(e.get("text", "")) > 8192]
        report("long line + flood", pong=latency, user_line_s=heard and round(heard, 3),
               lines_too_long=too_long, rss_growth_mb=round((rss1 - rss0) / 1024, 1))
        assert latency["missing"] == 0 and latency["max_s"] < 1.0, (latency, problem)
        if problem is not None:
            raise problem
        assert heard < 2.0
        assert too_long == 1 and not long_events
        assert rss1 - rss0 < 40 * 1024, "the 16 MB line was held"
    finally:
        collector.stop()
        proc.kill()
        proc.wait(5)


def test_an_endless_line_is_dropped_without_holding_it(redis_url, redis_client, ngircd):
    proc, port = _flood_server("endless", "--seconds", "8")
    collector = Drain(redis_url)
    problem = None
    try:
        with running_frontend(redis_url, frontend_id=uniq("endless-")) as fe:
            _, user = _good_room(redis_client, collector, ngircd)
            pinger = Pinger(redis_client, collector, "good")
            rss0 = peak = rss_kb()
            push(redis_client, {"type": "join", "room": "bad", "spec": _flood_spec(port, "#bad")})
            deadline = time.monotonic() + 40
            while not collector.find(room="bad", text="after-endless"):
                peak = max(peak, rss_kb())
                if time.monotonic() > deadline:
                    problem = AssertionError("the server's next line never arrived")
                    break
                gevent.sleep(0.1)
            latency = pinger.stop()
            too_long = fe.counters["lines_too_long"]
            user.close()
        report("endless line", pong=latency, lines_too_long=too_long, rss_peak_growth_mb=round((peak - rss0) / 1024, 1))
        assert latency["missing"] == 0 and latency["max_s"] < 1.0, (latency, problem)
        assert peak - rss0 < 40 * 1024, f"{(peak - rss0) // 1024} MB held for one line"
        if problem is not None:
            raise problem
        assert too_long == 1
    finally:
        collector.stop()
        proc.kill()
        proc.wait(5)


def test_names_with_two_million_nicks_are_tracked_up_to_the_cap_and_released(redis_url, redis_client):
    from frontend.chat.irc_channels import MAX_MEMBERS

    proc, port = _flood_server("names", "--nicks", "2000000")
    collector = Drain(redis_url)
    try:
        with running_frontend(redis_url, frontend_id=uniq("names-")) as fe:
            rss0 = rss_kb()
            push(redis_client, {"type": "join", "room": "big", "spec": _flood_spec(port, "#big")})
            collector.wait(15, type="joined", room="big")
            collector.wait(60, type="message", room="big", text="after-names")
            rss1 = rss_kb()
            assert rss1 - rss0 < 40 * 1024, f"the nicks were kept: {(rss1 - rss0) // 1024} MB"
            session = fe.sessions.sessions()[0]
            tracked = session.channels.tracked
            untracked = fe.counters["members_untracked"]
            push(redis_client, {"type": "part", "room": "big"})
            collector.wait(10, type="parted", room="big")
            released = session.channels.tracked, len(session.channels.by_name)
        report("names", tracked=tracked, untracked=untracked, rss_growth_mb=round((rss1 - rss0) / 1024, 1))
        assert tracked == MAX_MEMBERS and untracked == 2_000_000 - MAX_MEMBERS
        assert released == (0, 0)
    finally:
        collector.stop()
        proc.kill()
        proc.wait(5)


def test_endless_nick_in_use_is_capped_and_backs_off(redis_url, redis_client):
    """Every NICK gets a 433: a few attempts per connection, a join_failed, then backoff (was: an
    endless NICK loop at full CPU)."""
    taken = lambda conn, nick: f":scripted 433 * {nick} :Nickname is already in use\r\n".encode()  # noqa: E731
    ircd = ScriptedIrcd(answer_nick=taken).start()
    collector = Drain(redis_url)
    try:
        with running_frontend(redis_url, frontend_id=uniq("nick-"), reconnect_min=1.0, reconnect_max=2.0):
            push(redis_client, {"type": "join", "room": "n1", "spec": irc_stub_spec(ircd, "#n", "taken")})
            gevent.sleep(4.0)
        nicks = sum(1 for conn in ircd.conns for line in conn.lines if line.startswith("NICK "))
        report("433 forever", connections=len(ircd.conns), nick_attempts=nicks)
        assert nicks <= 10 * len(ircd.conns) and len(ircd.conns) <= 8 and nicks <= 80, nicks
        error = collector.wait(1, type="error", room="n1")
        assert error["code"] == "join_failed" and "no free nick" in error["detail"]
    finally:
        collector.stop()
        ircd.stop()


def test_registration_that_never_finishes_times_out_as_a_whole(redis_url, redis_client):
    """A server that keeps talking but never says 001: the attempt ends after connect_timeout (was:
    every line restarted a per-recv timeout, so it never ended)."""
    def dribble(conn):
        while not conn.closed:
            conn.line(":scripted NOTICE * :*** still looking up your hostname")
            gevent.sleep(0.3)

    ircd = ScriptedIrcd(dribble, register=False).start()
    try:
        with running_frontend(redis_url, frontend_id=uniq("slow-"), connect_timeout=1.0, reconnect_min=0.2,
                              reconnect_max=0.5):
            push(redis_client, {"type": "join", "room": "s1", "spec": irc_stub_spec(ircd, "#s", "slowbot")})
            ircd.wait_conns(2, timeout=6)
            state = ujson.loads(redis_client.hget("rooms:state", "s1") or b"{}")
        assert "registration did not finish" in (state.get("error") or ""), state
    finally:
        ircd.stop()


def test_a_ping_is_answered_with_what_a_line_may_carry(redis_url, redis_client):
    def pings(conn):
        conn.send(b"PING :\x00abc\r\nPING :a\rb\r\nPING :" + b"x" * 5000 + b"\r\n")

    ircd = ScriptedIrcd(pings).start()
    try:
        with running_frontend(redis_url, frontend_id=uniq("ping-")):
            push(redis_client, {"type": "join", "room": "p1", "spec": irc_stub_spec(ircd, "#p", "pingbot")})
            ircd.wait_conns(1, timeout=5)
            conn = ircd.conns[0]
            wait_until(lambda: sum(1 for raw in conn.raw if raw.startswith(b"PONG")) >= 3, 5, what="3 PONGs")
        pongs = [raw for raw in conn.raw if raw.startswith(b"PONG")]
        assert pongs[:2] == [b"PONG :abc", b"PONG :ab"], pongs[:2]
        assert all(b"\x00" not in p and b"\r" not in p and len(p) + 2 <= 512 for p in pongs)
    finally:
        ircd.stop()
