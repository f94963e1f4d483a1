"""A server cannot use flood learning against greenroom: however many flood ``ERROR`` lines one
connection gets, it is learned from once (one Redis write, one step down), and a rate never goes
below ``flood_learn_min_rate``. The suite's scripted stub plays the server (no packaged server sends
50 ERROR lines on one connection)."""

from __future__ import annotations

import gevent
import pytest
import ujson

from tests.support.events import EventLog
from tests.support.frontend import push, running_frontend
from tests.support.names import uniq
from tests.support.scripted_ircd import ScriptedIrcd, irc_stub_spec
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_many_flood_errors_on_one_connection_are_learned_from_once(redis_url, redis_client):
    def script(conn) -> None:
        conn.wait_for(lambda line: line.startswith("JOIN"), timeout=10)
        if len(conn.server.conns) == 1:  # the first connection only
            conn.send(b"".join(b"ERROR :Closing link: (bot@127.0.0.1) [Excess Flood]\r\n" for _ in range(50)))
            gevent.sleep(0.2)
            conn.sock.close()

    ircd = ScriptedIrcd(script).start()
    try:
        events = EventLog(redis_url)
        with running_frontend(redis_url, frontend_id="flood-hostile") as frontend:
            push(redis_client, {"type": "join", "room": "h", "spec": irc_stub_spec(ircd, "#h", uniq("h"))})
            events.wait(10, type="joined", room="h")
            events.wait(15, type="joined", room="h")  # again, on the second connection
            wait_until(lambda: redis_client.hget("servers:flood", "127.0.0.1"), 5, what="the learned entry")
            gevent.sleep(0.5)
            learned = ujson.loads(redis_client.hget("servers:flood", "127.0.0.1"))
            assert learned["kills"] == 1 and learned["rate"] == 1.0 and learned["burst"] == 1
            assert frontend.counters["flood_kills:127.0.0.1"] == 1
            state = ujson.loads(redis_client.hget("rooms:state", "h"))
            assert state["state"] == "joined"
    finally:
        ircd.stop()
