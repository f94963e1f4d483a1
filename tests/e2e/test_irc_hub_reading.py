"""IRC read from the hub (issue 19): a plain connection is read by an io watcher callback, so no
greenlet waits on it (a parked greenlet costs about 8 KB, the watcher 0.3 KB).

Sessions from a real ``SessionPool`` with ``RecordingRoom``s (see ``test_session_contract``), against
ngircd, and against the suite's scripted server where the server must do what no packaged one does
on cue: drop the connection, or send 1,000 lines in one write.

- Connected and joined, a session has no live greenlet: its main greenlet ended, the watcher reads.
  Lines the server sends reach the room.
- The server drops the connection: a main greenlet starts again, backs off, reconnects and rejoins,
  and ends again once the new connection is read from the hub.
- More lines in one read than a turn allows (``TURN_LINES``): all of them reach the room, in order.
- Backpressure: while the events buffer is full nothing is read (the server holds the lines); once
  it has room, every line arrives, in order. First with a buffer the test fills and drains (the
  session's ``EventsBuffer`` interface), then through the real one: a whole frontend whose Redis is
  frozen (SIGSTOP) for less than its socket timeout, so Redis is slow, not down, while ngircd
  delivers more lines than the buffer holds: none is dropped, and the readers were held.
"""

from __future__ import annotations

import gc
import socket

import gevent
import greenlet
import pytest

from frontend.chat.irc import TURN_LINES
from frontend.config import load_settings
from frontend.counters import Counters
from frontend.sessions import SessionPool
from tests.e2e.test_session_contract import RecordingRoom
from tests.support.events import EventLog
from tests.support.frontend import FAST, irc_spec, push, running_frontend
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.scripted_ircd import ScriptedIrcd, irc_stub_spec
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


class FillableBuffer:
    """An ``EventsBuffer`` the test fills and drains."""

    def __init__(self) -> None:
        self.is_full = False
        self.waiters: list = []
        self.waits = 0

    def full(self) -> bool:
        return self.is_full

    def when_room(self, callback) -> None:  # a reader in the hub's
        self.waits += 1
        self.waiters.append(callback)

    def fill(self) -> None:
        self.is_full = True

    def drain(self) -> None:
        self.is_full = False
        waiters, self.waiters = self.waiters, []
        for callback in waiters:
            callback()


@pytest.fixture
def buffer():
    return FillableBuffer()


@pytest.fixture
def pool(buffer):
    settings = load_settings(env={}, overrides={**FAST, "redis_url": "redis://127.0.0.1:1/0"})
    pool = SessionPool(settings, counters=Counters(), pace_events=buffer)
    yield pool
    pool.close_all("test over", 2.0)


def live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def _join(pool, room: RecordingRoom, count: int = 1):
    session = pool.session_for(room.id, room.spec)
    session.attach(room)
    wait_until(lambda: len(room.of("joined")) >= count, 10, what=f"{room.id} joined")
    return session


def _served_from_hub(session) -> bool:
    return session._main.dead and session._reading is not None and session._reading.active


def test_joined_connections_hold_no_greenlet_and_their_lines_arrive(pool, ngircd):
    base = live_greenlets()
    rooms = [RecordingRoom(f"h{i}", irc_spec(ngircd, "#" + uniq(f"hub{i}"), nick=uniq(f"hb{i}"), share=False))
             for i in range(10)]
    sessions = [_join(pool, room) for room in rooms]
    assert len(set(map(id, sessions))) == 10  # a connection each
    wait_until(lambda: all(_served_from_hub(s) for s in sessions), 5, what="every connection read from the hub")
    # the writers that sent the JOINs linger for WRITER_LINGER s, then nothing is left per connection
    wait_until(lambda: live_greenlets() <= base, 8, what=f"no greenlet per connection (had {base} before)")
    channel = rooms[3].spec.channel
    talker = Observer(ngircd.host, ngircd.port, uniq("talk"), [channel])
    try:
        talker.privmsg(channel, "read from the hub")
        wait_until(lambda: rooms[3].of("message"), 5, what="the line reached the room")
        assert rooms[3].of("message")[0]["text"] == "read from the hub"
        assert all(not r.of("message") for r in rooms if r is not rooms[3])
    finally:
        talker.close()


def test_a_dropped_connection_reconnects_rejoins_and_is_read_from_the_hub_again(pool):
    ircd = ScriptedIrcd().start()
    try:
        room = RecordingRoom("d1", irc_stub_spec(ircd, "#drop", "dbot"))
        session = _join(pool, room)
        wait_until(lambda: _served_from_hub(session), 5, what="read from the hub")
        first = ircd.conns[0]
        first.sock.shutdown(socket.SHUT_RDWR)  # the server drops the link
        ircd.wait_conns(2, 10)
        wait_until(lambda: len(room.of("joined")) >= 2, 10, what="joined again after the reconnect")
        wait_until(lambda: _served_from_hub(session), 5, what="read from the hub again")
        assert "backoff" in room.states  # the main greenlet backed off in between
        ircd.conns[1].line(":alice!a@h PRIVMSG #drop :after the reconnect")
        wait_until(lambda: room.of("message"), 5, what="a line on the new connection")
    finally:
        ircd.stop()


def test_a_long_read_is_handled_whole_and_in_order_over_several_turns(pool):
    n = TURN_LINES * 4 - 7
    ircd = ScriptedIrcd().start()
    try:
        room = RecordingRoom("t1", irc_stub_spec(ircd, "#turns", "tbot"))
        session = _join(pool, room)
        wait_until(lambda: _served_from_hub(session), 5, what="read from the hub")
        ircd.conns[0].send(b"".join(b":alice!a@h PRIVMSG #turns :line %d\r\n" % i for i in range(n)))
        wait_until(lambda: len(room.of("message")) >= n, 10, what=f"{n} lines")
        assert [e["text"] for e in room.of("message")] == [f"line {i}" for i in range(n)]
        assert _served_from_hub(session)  # reading went on after the last turn
    finally:
        ircd.stop()


def test_nothing_is_read_while_the_events_buffer_is_full_and_nothing_is_lost(pool, buffer):
    ircd = ScriptedIrcd().start()
    try:
        room = RecordingRoom("b1", irc_stub_spec(ircd, "#full", "bbot"))
        session = _join(pool, room)
        wait_until(lambda: _served_from_hub(session), 5, what="read from the hub")
        buffer.fill()
        conn = ircd.conns[0]
        for i in range(5):
            conn.line(f":alice!a@h PRIVMSG #full :held {i}")
        wait_until(lambda: buffer.waits, 5, what="the reader waiting for room")
        gevent.sleep(0.3)
        assert not room.of("message")  # left with the server
        buffer.drain()
        wait_until(lambda: len(room.of("message")) >= 5, 5, what="the held lines after the drain")
        assert [e["text"] for e in room.of("message")] == [f"held {i}" for i in range(5)]
        conn.line(":alice!a@h PRIVMSG #full :and on")
        wait_until(lambda: len(room.of("message")) == 6, 5, what="reading goes on")
    finally:
        ircd.stop()


def test_a_slow_redis_holds_the_readers_and_no_event_is_lost(redis_server, redis_url, redis_client, ngircd):
    n, buffer_size = 3000, 2000  # more lines than the buffer holds: without backpressure, 1,000 dropped
    chan, nick = "#" + uniq("slow"), uniq("sb")
    events = EventLog(redis_client)
    with running_frontend(redis_url, event_buffer=buffer_size, event_batch=50) as frontend:
        push(redis_client, {"type": "join", "room": "slow1", "spec": irc_spec(ngircd, chan, nick=nick)})
        events.wait(10, type="joined", room="slow1")
        talker = Observer(ngircd.host, ngircd.port, uniq("st"), [chan])
        try:
            redis_server.pause()  # 3 s: under the frontend's 5 s Redis socket timeout, so slow, not down
            try:
                talker.send_many([f"PRIVMSG {chan} :m{i}".encode() for i in range(n)])
                gevent.sleep(3.0)
            finally:
                redis_server.resume()
            texts = events.wait_for(
                lambda seen: (lambda got: got if len(got) >= n else None)(
                    [e["text"] for e in seen if e["type"] == "message" and e["room"] == "slow1"]),
                60, what=f"{n} messages")
            assert texts == [f"m{i}" for i in range(n)]
            counters = frontend.counters
            assert counters["events_dropped"] == 0
            assert counters["reads_held"] >= 1  # the reader stopped at the high-water mark
        finally:
            talker.close()
