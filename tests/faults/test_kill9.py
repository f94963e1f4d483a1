"""Issue 4, fault 1: `kill -9` of the frontend while 5,000 `say` commands are in flight across 50 rooms.

A real `greenroom run` process, the session ngircd (flood control off through the spec), one observer
sitting in all 50 channels. The 5,000 commands are pushed in one RPUSH; the process is SIGKILLed once
the observer has seen a third of them, then restarted with the SAME frontend id, so it re-queues its
in-flight list before anything else. The scenario runs once (module fixture, keys under a private
prefix); the tests below assert on what it measured:

- every command that was still in ``control`` or in the in-flight list at the kill reaches its channel,
  nothing lands in another channel, and duplicates stay within the in-flight list length at the kill
  (duplicates can only come from commands written to the socket but not yet acknowledged in Redis);
- every text arrives at least once (issue 4, fault 1 as written).

All 50 rooms share one nick, hence one IRC connection (channels_per_connection is 50): that is how a
bot identity is used in production, it puts every room through one fair send queue, and it is the
worst case for the in-flight window (one writer, one socket, 50 rooms' backlogs behind it).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import ujson

from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, held, held_items, irc_spec, proc_alive
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.report import count_dups, report
from tests.support.servers import log_tail
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

ROOMS = 50
COMMANDS = 5000


def _stop(*procs: Any) -> None:
    for p in procs:
        if p is not None and proc_alive(p.proc):
            try:
                p.terminate(timeout=10)
            except Exception:
                p.kill()


@pytest.fixture(scope="module")
def kill9(redis_server, ngircd, tmp_path_factory) -> dict:
    """Run the kill -9 scenario once; return what it measured."""
    prefix = uniq("k9p") + ":"
    fe_id = uniq("kill9-")
    nick = uniq("k9bot")
    rooms = {f"r{i}": "#" + uniq(f"k9c{i}-") for i in range(ROOMS)}
    room_ids = list(rooms)
    client = redis.Redis.from_url(redis_server.url, socket_timeout=30)
    observer = Observer(ngircd.host, ngircd.port, uniq("k9obs"), rooms.values())
    log_path = str(tmp_path_factory.mktemp("kill9") / "frontend.log")
    # steps of 500 handed over one at a time (control_batch): the 5,000 lines then go out over a while,
    # so the kill lands while many are in flight (handed over as one batch of 5,000, they were all
    # written before the observer had seen a third)
    env = {"control_drain": 500, "control_batch": 500, "key_prefix": prefix}
    proc = FrontendProcess(redis_server.url, log_path, frontend_id=fe_id, **env).start()
    proc2 = None
    control = prefix + "control"
    try:
        events = EventLog(redis_server.url, key=prefix + "messages")
        client.rpush(control, *[ujson.dumps({"type": "join", "room": r, "spec": irc_spec(ngircd, c, nick=nick)})
                                for r, c in rooms.items()])
        events.wait_for(lambda seen: {e["room"] for e in seen if e["type"] == "joined"} >= set(room_ids),
                        60, what="all 50 rooms joined")

        # 5,000 says, round-robin over the rooms; unique texts so the observer can match them
        texts = [f"k9-{i:05d}" for i in range(COMMANDS)]
        expected = {t: rooms[room_ids[i % ROOMS]].lower() for i, t in enumerate(texts)}
        raw_of = {t: ujson.dumps({"type": "say", "room": room_ids[i % ROOMS], "text": t}).encode()
                  for i, t in enumerate(texts)}
        before = len(observer.lines)
        state = {"i": before, "n": 0}

        def seen() -> int:  # incremental: cheap enough to poll every millisecond
            lines, i, n = observer.lines, state["i"], state["n"]
            while i < len(lines):
                n += lines[i].cmd == "PRIVMSG"
                i += 1
            state.update(i=i, n=n)
            return n

        t_push = time.monotonic()
        client.rpush(control, *raw_of.values())
        wait_until(lambda: seen() >= COMMANDS // 3, 30, step=0.001, what="a third of the lines sent")
        proc.proc.kill()
        proc.proc.wait(10)
        t_kill = time.monotonic()
        seen_at_kill = seen()
        inflight_items = set(held_items(client, fe_id, prefix))
        control_items = set(client.lrange(control, 0, -1))
        pending_at_kill = {t for t, raw in raw_of.items() if raw in inflight_items or raw in control_items}

        proc2 = FrontendProcess(redis_server.url, log_path, frontend_id=fe_id, **env).start()
        t_restart = time.monotonic()

        def arrived() -> set:
            return {ln.text for ln in observer.lines[before:] if ln.cmd == "PRIVMSG"} & expected.keys()

        try:
            wait_until(lambda: arrived() >= pending_at_kill, 60, step=0.2, what="the pending commands")
            t_pending = time.monotonic()
            wait_until(lambda: held(client, fe_id, prefix) == 0 and client.llen(control) == 0, 20,
                       what="in-flight list and control empty")
            time.sleep(1.0)  # late duplicates, if any, are counted too
        finally:
            sent = [ln for ln in observer.lines[before:] if ln.cmd == "PRIVMSG"]
            result = {
                "texts": texts, "expected": expected, "pending_at_kill": pending_at_kill, "sent": sent,
                "inflight_at_kill": len(inflight_items), "control_at_kill": len(control_items),
                "seen_at_kill": seen_at_kill, "log": log_path, "proc2_alive": proc_alive(proc2.proc),
                "requeued_logged": "re-queued" in proc2.log(),
            }
        missing = sorted(expected.keys() - {ln.text for ln in sent})
        _, dups = count_dups(ln.text for ln in sent)
        result.update(missing=missing, dups=dups)
        report("kill9", commands=COMMANDS, rooms=ROOMS, seen_before_kill=seen_at_kill,
               inflight_list_at_kill=len(inflight_items), control_at_kill=len(control_items),
               duplicates=dups, lost=len(missing), lost_sample=missing[:3],
               kill_after_s=round(t_kill - t_push, 2),
               restart_to_pending_delivered_s=round(t_pending - t_restart, 2))
        yield result
    finally:
        _stop(proc2, proc)
        observer.close()
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


def test_kill9_commands_in_flight_are_redelivered_after_restart(kill9):
    assert kill9["seen_at_kill"] < COMMANDS, "the kill came too late: everything had been sent already"
    assert kill9["inflight_at_kill"] > 0, "nothing was in the in-flight list at the kill"
    got = {ln.text for ln in kill9["sent"]}
    not_redelivered = sorted(kill9["pending_at_kill"] - got)
    assert not not_redelivered, f"{len(not_redelivered)} commands pending at the kill never arrived"
    wrong = [ln for ln in kill9["sent"] if kill9["expected"].get(ln.text) != ln.target.lower()]
    assert not wrong, f"texts in the wrong channel (or unexpected texts): {wrong[:5]}"
    assert kill9["dups"] <= kill9["inflight_at_kill"], (
        f"{kill9['dups']} duplicates, more than the {kill9['inflight_at_kill']} commands in flight at the kill")
    assert kill9["proc2_alive"], "the restarted frontend exited\n" + log_tail(kill9["log"])
    assert kill9["requeued_logged"], "the restart did not log re-queuing its in-flight leftovers"


def test_kill9_every_text_arrives_at_least_once(kill9):
    """Issue 4 asks for every text at least once. A line is acknowledged only when the server
    answered a PING written after it (ngircd has no echo-message), so a line written just before the
    kill and dropped by the server (ngircd discards a client's unprocessed input on close) is still in
    the in-flight list and sent again after the restart: nothing may be missing."""
    missing = set(kill9["missing"])
    assert not missing, f"{len(missing)} texts never arrived, e.g. {sorted(missing)[:5]}"


def test_lines_written_but_not_delivered_at_a_kill_are_not_lost(redis_url, redis_client, ngircd, tmp_path):
    """Deterministic form of the loss window: the link to ngircd is blackholed (bytes held in the
    proxy), 100 says are written into it, the frontend is killed with -9 and the link then reset, as
    when a process dies during a network hiccup. The restarted frontend (same id) must still send
    them: they were never delivered."""
    fe_id = uniq("k9w-")
    nick = uniq("k9w")
    chan = "#" + uniq("k9w")
    observer = Observer(ngircd.host, ngircd.port, uniq("k9wobs"), [chan])
    proxy = TcpProxy(ngircd.host, ngircd.port).start()
    log_path = str(tmp_path / "frontend.log")
    spec = irc_spec(ngircd, chan, nick=nick)
    spec["port"] = proxy.port
    proc = FrontendProcess(redis_url, log_path, frontend_id=fe_id).start()
    proc2 = None
    try:
        events = EventLog(redis_url)
        redis_client.rpush("control", ujson.dumps({"type": "join", "room": "w", "spec": spec}))
        events.wait(20, type="joined", room="w")
        proxy.blackhole()
        texts = [f"held-{i:03d}" for i in range(100)]
        redis_client.rpush("control", *[ujson.dumps({"type": "say", "room": "w", "text": t}) for t in texts])
        wait_until(lambda: redis_client.llen("control") == 0, 10, what="commands popped")
        time.sleep(1.0)  # the writer has written them into the (held) link by now
        inflight_at_kill = held(redis_client, fe_id)
        proc.proc.kill()
        proc.proc.wait(10)
        proxy.reset()
        proxy.heal()
        proc2 = FrontendProcess(redis_url, log_path, frontend_id=fe_id).start()
        events.wait(20, type="joined", room="w")
        try:
            wait_until(lambda: {ln.text for ln in observer.privmsgs(chan)} >= set(texts), 5,
                       what="the 100 texts")
        finally:
            arrived = {ln.text for ln in observer.privmsgs(chan)} & set(texts)
            report("kill9_write_window", written_into_held_link=len(texts),
                   inflight_list_at_kill=inflight_at_kill, arrived_after_restart=len(arrived))
    finally:
        _stop(proc2, proc)
        proxy.stop()
        observer.close()
