"""Issue 4, fault 6: Redis frozen (SIGSTOP 15 s), and links cut by the in-test TCP proxy.

- Redis SIGSTOPped for 15 s while chat lines arrive and a producer pushes commands, then SIGCONT: the
  daemon answers ``ping`` within 10 s, the lines received during the freeze reach ``messages`` and the
  commands pushed during it reach the channel (no greenlet wedged, both directions move).
- frontend -> proxy -> Redis: blackhole (sockets stay open, nothing flows) for longer than the Redis
  socket timeouts, then heal; then reset (RST on every link): work resumes, nothing is lost.
- frontend -> proxy -> ngircd with ``ping_interval``/``ping_timeout`` of 1.5 s: blackhole, the dead
  link is detected within ping_interval + ping_timeout (+ slack), commands pushed while it is down are
  sent once the room is joined again after the heal; then reset: the room comes back at once.
"""

from __future__ import annotations

import time

import gevent
import pytest
import redis
import ujson

from tests.support.events import Drain, EventLog
from tests.support.frontend import FrontendProcess, irc_spec, proc_alive, stop_process
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.ports import with_port
from tests.support.report import report
from tests.support.servers import RedisServer, log_tail
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(150)]

PING = 1.5
FREEZE = 15.0


def _join(client, ngircd, rooms: dict, nick: str, port: int | None = None) -> None:
    items = []
    for room, chan in rooms.items():
        spec = irc_spec(ngircd, chan, nick=nick)
        if port is not None:
            spec["port"] = port
        items.append(ujson.dumps({"type": "join", "room": room, "spec": spec}))
    client.rpush("control", *items)


def _says(client, room: str, texts: list[str]) -> None:
    client.rpush("control", *[ujson.dumps({"type": "say", "room": room, "text": t}) for t in texts])


def test_redis_frozen_15s_then_everything_moves_again(ngircd, tmp_path):
    server = RedisServer(str(tmp_path / "redis")).start()
    nick, chan = uniq("fzbot"), "#" + uniq("fz")
    observer = Observer(ngircd.host, ngircd.port, uniq("fzobs"), [chan])
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(server.url, log_path, frontend_id=uniq("freeze-"), recovery_interval=2.0).start()
    drain = None
    try:
        client = server.client(socket_timeout=60)
        events = EventLog(server.url)
        _join(client, ngircd, {"fz": chan}, nick)
        events.wait(20, type="joined", room="fz")
        events.close()
        drain = Drain(server.url)

        server.pause()
        t_stop = time.monotonic()
        # during the freeze: chat lines come in, and a producer pushes commands (its RPUSH waits)
        producer = gevent.spawn(_says, client, "fz", [f"frozen-say-{i}" for i in range(10)])
        for i in range(20):
            observer.privmsg(chan, f"frozen-line-{i}")
            gevent.sleep(FREEZE / 25)
        gevent.sleep(max(0.0, FREEZE - (time.monotonic() - t_stop)))
        assert proc_alive(proc.proc), log_tail(log_path)
        server.resume()
        t_cont = time.monotonic()

        producer.join(10)
        assert producer.successful(), producer.exception
        pinger = redis.Redis.from_url(server.url, socket_timeout=10)
        pinger.rpush("control", ujson.dumps({"type": "ping", "room": "fz", "cmd_id": "after-freeze"}))
        pong = wait_until(lambda: drain.of(type="pong", cmd_id="after-freeze"), 10, what="pong after SIGCONT")
        t_pong = time.monotonic()
        wait_until(lambda: {f"frozen-line-{i}" for i in range(20)} <= {e.get("text") for e in drain.of(type="message")},
                   10, what="the lines received during the freeze in messages")
        t_lines = time.monotonic()
        said = lambda: {ln.text for ln in observer.privmsgs(chan, nick)}  # noqa: E731
        try:
            wait_until(lambda: {f"frozen-say-{i}" for i in range(10)} <= said(), 10,
                       what="the commands pushed during the freeze in the channel")
            t_says = time.monotonic()
        except AssertionError:
            raise AssertionError(f"missing: {sorted({f'frozen-say-{i}' for i in range(10)} - said())}\n"
                                 + log_tail(log_path)) from None
        # and a fresh command goes through too
        pinger.rpush("control", ujson.dumps({"type": "say", "room": "fz", "text": "after-freeze-say"}))
        observer.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "after-freeze-say", 5, what="a fresh say")
        report("redis_freeze", frozen_s=round(t_cont - t_stop, 1), pong_after_sigcont_s=round(t_pong - t_cont, 2),
               lines_in_messages_after_sigcont_s=round(t_lines - t_cont, 2),
               frozen_says_delivered_after_sigcont_s=round(t_says - t_cont, 2))
        assert pong and proc_alive(proc.proc)
        pinger.close()
        client.close()
    finally:
        if drain is not None:
            drain.stop()
        stop_process(proc)
        observer.close()
        server.kill()


def test_redis_link_blackholed_then_reset(redis_server, redis_url, redis_client, ngircd, tmp_path):
    proxy = TcpProxy(redis_server.host, redis_server.port).start()
    url = with_port(redis_url, proxy.port)
    nick, chan = uniq("rlbot"), "#" + uniq("rl")
    observer = Observer(ngircd.host, ngircd.port, uniq("rlobs"), [chan])
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(url, log_path, frontend_id=uniq("rlink-"), recovery_interval=2.0).start()
    drain = None
    try:
        events = EventLog(redis_url)
        _join(redis_client, ngircd, {"rl": chan}, nick)
        events.wait(20, type="joined", room="rl")
        events.close()
        drain = Drain(redis_url)  # straight to Redis: the test's own view is never cut

        # 1. blackhole for longer than every Redis socket timeout of the daemon (5-6 s)
        proxy.blackhole()
        t_bh = time.monotonic()
        for i in range(20):
            observer.privmsg(chan, f"bh-line-{i}")
            gevent.sleep(0.4)
        _says(redis_client, "rl", [f"bh-say-{i}" for i in range(5)])  # waits in control meanwhile
        gevent.sleep(max(0.0, 9.0 - (time.monotonic() - t_bh)))
        assert proc_alive(proc.proc), log_tail(log_path)
        proxy.heal()
        t_heal = time.monotonic()
        redis_client.rpush("control", ujson.dumps({"type": "ping", "room": "rl", "cmd_id": "healed"}))
        wait_until(lambda: drain.of(type="pong", cmd_id="healed"), 10, what="pong after the heal")
        t_pong = time.monotonic()
        wait_until(lambda: {f"bh-line-{i}" for i in range(20)} <= {e.get("text") for e in drain.of(type="message")},
                   10, what="the lines sent during the blackhole")
        t_lines = time.monotonic()
        said = lambda: {ln.text for ln in observer.privmsgs(chan, nick)}  # noqa: E731
        wait_until(lambda: {f"bh-say-{i}" for i in range(5)} <= said(), 10, what="the says pushed meanwhile")
        t_says = time.monotonic()

        # 2. reset every link (RST), refusing new ones for 1 s
        closed = proxy.reset(refuse_for=1.0)
        t_reset = time.monotonic()
        observer.privmsg(chan, "after-reset-line")
        redis_client.rpush("control", ujson.dumps({"type": "ping", "room": "rl", "cmd_id": "reset"}))
        wait_until(lambda: drain.of(type="pong", cmd_id="reset"), 10, what="pong after the reset")
        t_pong2 = time.monotonic()
        wait_until(lambda: drain.of(type="message", text="after-reset-line"), 5, what="a line after the reset")
        _says(redis_client, "rl", ["after-reset-say"])
        observer.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "after-reset-say", 5, what="say after reset")
        dups = len(drain.of(type="message")) - len({e["text"] for e in drain.of(type="message")})
        report("redis_link", blackhole_s=round(t_heal - t_bh, 1), pong_after_heal_s=round(t_pong - t_heal, 2),
               lines_after_heal_s=round(t_lines - t_heal, 2), says_after_heal_s=round(t_says - t_heal, 2),
               links_reset=closed, pong_after_reset_s=round(t_pong2 - t_reset, 2), duplicate_lines=dups)
        assert t_pong2 - t_reset <= 1.0 + 2.0 + 1.0, "work did not resume within 2 s of Redis returning"
        assert proc_alive(proc.proc), log_tail(log_path)
    finally:
        if drain is not None:
            drain.stop()
        stop_process(proc)
        proxy.stop()
        observer.close()


def test_irc_link_blackholed_then_reset(redis_url, redis_client, ngircd, tmp_path):
    proxy = TcpProxy(ngircd.host, ngircd.port).start()
    nick, chan = uniq("ilbot"), "#" + uniq("il")
    observer = Observer(ngircd.host, ngircd.port, uniq("ilobs"), [chan])
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("ilink-"), ping_interval=PING,
                           ping_timeout=PING, connect_timeout=3.0, reconnect_min=0.2, reconnect_max=1.0).start()
    try:
        events = EventLog(redis_url)
        _join(redis_client, ngircd, {"il": chan}, nick, port=proxy.port)
        events.wait(20, type="joined", room="il")

        def state() -> str:
            raw = redis_client.hget("rooms:state", "il")
            return ujson.loads(raw)["state"] if raw else ""

        # 1. blackhole: silence; the bot's PING gets no answer; it must notice and reconnect
        proxy.blackhole()
        t_bh = time.monotonic()
        _says(redis_client, "il", ["written-into-the-dead-link"])  # the documented loss window
        wait_until(lambda: state() != "joined", PING * 2 + 3, step=0.05, what="the dead link noticed")
        t_detect = time.monotonic()
        _says(redis_client, "il", [f"while-down-{i}" for i in range(5)])
        gevent.sleep(1.0)
        proxy.heal()
        t_heal = time.monotonic()
        events.wait(15, type="joined", room="il")
        t_rejoin = time.monotonic()
        said = lambda: {ln.text for ln in observer.privmsgs(chan)}  # noqa: E731
        wait_until(lambda: {f"while-down-{i}" for i in range(5)} <= said(), 10,
                   what="the says pushed while the link was down")
        gevent.sleep(0.5)
        dead_link_line_arrived = "written-into-the-dead-link" in said()

        # 2. reset: both sides get an RST; the room must come back at once
        gevent.sleep(0.5)
        proxy.reset()
        t_reset = time.monotonic()
        events.wait(10, type="joined", room="il")
        t_rejoin2 = time.monotonic()
        _says(redis_client, "il", ["after-irc-reset"])
        observer.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "after-irc-reset", 5, what="say after reset")
        report("irc_link", ping_interval=PING, ping_timeout=PING, detect_s=round(t_detect - t_bh, 2),
               rejoin_after_heal_s=round(t_rejoin - t_heal, 2), rejoin_after_reset_s=round(t_rejoin2 - t_reset, 2),
               line_written_into_dead_link_arrived=dead_link_line_arrived)
        assert t_detect - t_bh <= 2 * PING + 1.0, f"dead link noticed after {t_detect - t_bh:.1f}s"
        assert t_rejoin2 - t_reset <= 3.0
        assert proc_alive(proc.proc), log_tail(log_path)
    finally:
        stop_process(proc)
        proxy.stop()
        observer.close()
