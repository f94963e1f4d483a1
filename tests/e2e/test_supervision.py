"""One lifecycle for every long-lived loop (issue 14): a loop that dies of an unexpected error is
restarted by the supervisor, the crash is logged and counted, and ``/healthz`` says 503 while it is down.

The error is injected into the real outgoing dispatcher of a real frontend (real redis-server and
ngircd): a bug in its batch code, raised three times in a row. Before the supervisor, the outgoing
dispatcher caught only Redis errors and any other exception ended it for good, while events piled up
in memory and the process looked healthy.
"""

from __future__ import annotations

import gevent
import pytest

import frontend.outgoing
from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_a_crashed_outgoing_dispatcher_is_restarted_and_reported(redis_url, redis_client, ngircd,
                                                                  monkeypatch, caplog):
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id="sup-fe") as fe:
        push(redis_client, {"type": "join", "room": "sup", "spec": irc_spec(ngircd, "#sup", nick="supbot")})
        events.wait(type="joined", room="sup")
        real = frontend.outgoing._write_hash
        failures = {"left": 3}

        def buggy(*args, **kwargs):
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("a bug in the batch code")
            return real(*args, **kwargs)

        monkeypatch.setattr(frontend.outgoing, "_write_hash", buggy)
        health: list[int] = []

        def watch() -> None:
            while True:
                health.append(fe.metrics.health.health()[0])
                gevent.sleep(0.005)

        watcher = gevent.spawn(watch)
        try:
            push(redis_client, *[{"type": "ping", "room": "sup", "cmd_id": f"p{i}"} for i in range(20)])
            got = {events.wait(timeout=15, type="pong", room="sup")["cmd_id"] for _ in range(20)}
            # the pongs can all arrive in one pop, before the watcher's next sample: wait for one
            # taken since the last restart (the 200 asserted below), with a deadline
            wait_until(lambda: health[-1] == 200, 5, step=0.01, what="/healthz back to 200")
        finally:
            watcher.kill()
        assert got == {f"p{i}" for i in range(20)}  # nothing lost across three crashes
        assert failures["left"] == 0
        assert fe.counters["loop_crashes:outgoing"] == 3
        assert fe.outbox.running and fe.supervisor.down() == {}
        assert 503 in health and health[-1] == 200
        crashes = [r for r in caplog.records if "outgoing died" in r.getMessage()]
        assert len(crashes) == 3 and all(r.exc_info for r in crashes)
        code, body = fe.metrics.health.health()
        assert code == 200 and body["ok"] is True


def test_a_crashed_room_greenlet_is_restarted_with_its_queue(redis_url, redis_client, ngircd, caplog):
    """A room's greenlet that dies of an unexpected error (here: raised into it while it is parked) is
    counted, logged with the room id, and started again with the same queue: the commands that came
    while it was down are answered, in order, by the new greenlet; the room never left the channel."""
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id="sup-room") as fe:
        push(redis_client, {"type": "join", "room": "crashy", "spec": irc_spec(ngircd, "#crashy", nick="crashbot")})
        events.wait(type="joined", room="crashy")
        room = fe.registry.get("crashy")
        first, session = room.greenlet, room.session
        first.kill(RuntimeError("a bug in a room"), block=False)
        wait_until(lambda: first.dead, 5, what="the room's greenlet ended")
        assert fe.counters["room_crashes"] == 1
        push(redis_client, *[{"type": "ping", "room": "crashy", "cmd_id": f"c{i}"} for i in range(5)])
        got = [events.wait(timeout=15, type="pong", room="crashy")["cmd_id"] for _ in range(5)]
        assert got == [f"c{i}" for i in range(5)]
        assert room.greenlet is not first and not room.greenlet.dead
        assert fe.registry.get("crashy") is room and room.session is session and session.connected
        crashes = [r for r in caplog.records if "greenlet died" in r.getMessage()]
        assert len(crashes) == 1 and "crashy" in crashes[0].getMessage()
        assert not events.find(type="parted", room="crashy")
