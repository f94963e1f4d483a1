"""Issue 4, fault 5: 1,000 lines queued to one room with flood control on.

Spec ``"flood": {"burst": 5, "rate": 50}`` (the issue's 1,000 lines are kept; the rate is the test's
choice, 50/s keeps the drain at ~20 s, and any rate proves the point). The ngircd test server has no
penalties, so the pacing seen by an observer is the bot's own: the test asserts from arrival times
that the burst is 5 and the steady rate is the configured one within 10 %, that nothing was dropped or
kicked, and that a second room on the SAME connection (same nick and server) gets its line out
within about one token interval while the first room's backlog drains (round-robin fairness).
"""

from __future__ import annotations

import time

import pytest
import ujson

from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, irc_spec, proc_alive, stop_process
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.report import report
from tests.support.servers import log_tail
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

LINES = 1000
BURST = 5
RATE = 50.0


def test_backlog_drains_at_the_configured_rate_and_a_second_room_is_not_starved(
        redis_url, redis_client, ngircd, tmp_path):
    nick = uniq("fbot")
    chan_a, chan_b = "#" + uniq("flA"), "#" + uniq("flB")
    flood = {"burst": BURST, "rate": RATE}
    observer = Observer(ngircd.host, ngircd.port, uniq("fobs"), [chan_a, chan_b])
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("flood-")).start()
    try:
        events = EventLog(redis_url)
        redis_client.rpush("control", *[ujson.dumps({"type": "join", "room": r, "spec": irc_spec(
            ngircd, c, nick=nick, flood=flood)}) for r, c in (("A", chan_a), ("B", chan_b))])
        events.wait(20, type="joined", room="A")
        events.wait(20, type="joined", room="B")
        time.sleep(1.0)  # the bucket is full again after the JOINs
        redis_client.rpush("control", *[ujson.dumps({"type": "say", "room": "A", "text": f"a-{i:04d}"})
                                        for i in range(LINES)])

        def a_lines() -> list:
            return [ln for ln in observer.privmsgs(chan_a, nick) if ln.text.startswith("a-")]

        wait_until(lambda: len(a_lines()) >= 200, 30, what="200 lines of the backlog")
        n_before_b = len(a_lines())
        t_b = time.monotonic()
        redis_client.rpush("control", ujson.dumps({"type": "say", "room": "B", "text": "b-urgent"}))
        b_line = observer.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "b-urgent", 10, what="B's line")
        b_latency = b_line.t - t_b
        a_between = len([ln for ln in a_lines() if t_b <= ln.t <= b_line.t])

        wait_until(lambda: len(a_lines()) >= LINES, LINES / RATE + 30, step=0.2, what="the whole backlog")
        lines = a_lines()
        assert [ln.text for ln in lines] == [f"a-{i:04d}" for i in range(LINES)], "lines lost, doubled or reordered"
        times = [ln.t for ln in lines]
        burst = sum(1 for t in times if t - times[0] < 0.5 / RATE)
        steady = times[BURST:]
        rate = (len(steady) - 1) / (steady[-1] - steady[0])
        # the rate over any 100 consecutive lines, to catch bursts hidden in the average
        windows = [100 / (times[i + 100] - times[i]) for i in range(BURST, len(times) - 100, 50)]
        report("flood", lines=LINES, burst_seen=burst, configured=f"{BURST}+{RATE:g}/s",
               steady_rate=round(rate, 2), window_rate_min=round(min(windows), 1),
               window_rate_max=round(max(windows), 1), b_latency_s=round(b_latency, 3),
               a_lines_before_b=a_between, token_interval_s=1 / RATE,
               drain_s=round(times[-1] - times[0], 2))
        assert burst <= BURST + 1, f"{burst} lines at once, the burst is {BURST}"
        assert abs(rate - RATE) / RATE < 0.10, f"steady rate {rate:.2f}/s, configured {RATE}/s"
        assert max(windows) < RATE * 1.25, f"a 100-line window ran at {max(windows):.1f}/s"
        # fairness: B's line goes out on one of the next two tokens (A got the current turn)
        assert a_between <= 2, f"{a_between} lines of A went out before B's line"
        assert b_latency < 2 / RATE + 0.25, f"B's line took {b_latency:.3f}s"
        # no flood kick, no drop, no reconnect
        bot = observer.from_nick(nick)
        assert not [ln for ln in bot if ln.cmd in ("QUIT", "PART")], "the bot left"
        assert not [ln for ln in observer.lines if ln.cmd == "KICK"], "someone was kicked"
        events.pump(0.5)
        assert not events.find(type="error"), events.find(type="error")[:3]
        assert len(events.find(type="joined")) == 2, "the bot rejoined: the connection dropped"
        assert proc_alive(proc.proc), log_tail(log_path)
        assert n_before_b >= 200
    finally:
        stop_process(proc)
        observer.close()
