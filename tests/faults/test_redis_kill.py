"""Issue 4, fault 2: Redis SIGKILLed and restarted while 5,000 chat lines are being received.

A private redis-server with an append-only file fsynced on every write (``appendfsync always``), so a
write Redis acknowledged survives the SIGKILL: what the test then finds missing was lost by the
frontend, not by Redis. A consumer greenlet pops ``messages`` throughout (reconnecting by itself).
Five observers send 1,000 PRIVMSGs each into five channels the bot sits in; Redis is killed in the
middle of it and restarted on the same port 1.5 s later. Every line must be in ``messages`` at least
once (matched by text; duplicates counted and reported), and the daemon process never exits.
"""

from __future__ import annotations

import time

import gevent
import pytest
import ujson

from tests.support.events import Drain, EventLog
from tests.support.frontend import FrontendProcess, irc_spec, proc_alive, stop_process
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.report import count_dups, report
from tests.support.servers import RedisServer, find_binary, log_tail
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(150)]

CHANNELS = 5
PER_CHANNEL = 1000


class DurableRedis(RedisServer):
    """redis-server whose acknowledged writes survive SIGKILL (AOF, fsync on every write)."""

    def _argv(self) -> list[str]:
        return [find_binary("redis-server"), "--port", str(self.port), "--bind", self.host,
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--appenddirname", "aof", "--protected-mode", "no", "--daemonize", "no",
                "--dir", self.workdir, "--logfile", ""]


def test_redis_killed_while_5000_lines_arrive_loses_none(ngircd, tmp_path):
    server = DurableRedis(str(tmp_path / "redis")).start()
    nick = uniq("rkbot")
    chans = ["#" + uniq(f"rk{i}-") for i in range(CHANNELS)]
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(server.url, log_path, frontend_id=uniq("rkill-")).start()
    drain = None
    senders: list[Observer] = []
    try:
        events = EventLog(server.url)
        client = server.client(socket_timeout=10)
        client.rpush("control", *[ujson.dumps({"type": "join", "room": f"r{i}", "spec": irc_spec(ngircd, c, nick=nick)})
                                  for i, c in enumerate(chans)])
        events.wait_for(lambda seen: len({e["room"] for e in seen if e["type"] == "joined"}) == CHANNELS, 30,
                        what="5 rooms joined")
        senders = [Observer(ngircd.host, ngircd.port, uniq(f"rks{i}-"), [c]) for i, c in enumerate(chans)]
        events.wait_for(lambda seen: len([e for e in seen if e["type"] == "user_joined"]) >= CHANNELS, 10,
                        what="the senders seen joining")
        events.close()
        client.close()
        drain = Drain(server.url)
        texts = {f"{i}-{k:04d}": f"r{i}" for i in range(CHANNELS) for k in range(PER_CHANNEL)}

        def send(i: int, chan: str) -> None:
            for start in range(0, PER_CHANNEL, 25):  # 1,000 lines in ~4 s per sender
                senders[i].send_many([f"PRIVMSG {chan} :{i}-{k:04d}".encode()
                                      for k in range(start, start + 25)])
                gevent.sleep(0.1)

        jobs = [gevent.spawn(send, i, c) for i, c in enumerate(chans)]
        gevent.sleep(1.5)
        got_before_kill = len(drain.events)
        server.kill()
        t_kill = time.monotonic()
        gevent.sleep(1.5)
        assert proc_alive(proc.proc), "the frontend exited when Redis died\n" + log_tail(log_path)
        server.start()
        t_back = time.monotonic()
        gevent.joinall(jobs, timeout=30)
        assert all(j.successful() for j in jobs), [j.exception for j in jobs]
        t_sent = time.monotonic()

        def received() -> set:
            return {e["text"] for e in drain.events if e.get("type") == "message"}

        try:
            wait_until(lambda: received() >= texts.keys(), 30, step=0.2, what="every line in messages")
        except AssertionError:
            missing = sorted(texts.keys() - received())
            raise AssertionError(f"{len(missing)} lines never reached messages, e.g. {missing[:10]}\n"
                                 + log_tail(log_path)) from None
        t_all = time.monotonic()
        gevent.sleep(0.5)
        msgs = [e for e in drain.events if e.get("type") == "message"]
        wrong_room = [e for e in msgs if texts.get(e["text"]) != e["room"]]
        assert not wrong_room, wrong_room[:3]
        _, dups = count_dups(e["text"] for e in msgs)
        _, dup_ids = count_dups(e["event_id"] for e in msgs)
        report("redis_kill", lines=len(texts), popped_before_kill=got_before_kill, duplicates_by_text=dups,
               duplicates_by_event_id=dup_ids, redis_down_s=round(t_back - t_kill, 2),
               all_in_messages_after_restart_s=round(t_all - t_back, 2),
               senders_done_after_restart_s=round(t_sent - t_back, 2), consumer_errors=drain.errors)
        assert dups == dup_ids, "a duplicate carried a new event_id: consumers could not de-duplicate it"
        assert proc_alive(proc.proc), "the frontend exited\n" + log_tail(log_path)
    finally:
        if drain is not None:
            drain.stop()
        for s in senders:
            s.close()
        stop_process(proc)
        server.kill()
