"""A room's greenlet parks in the hub on its empty queue and is woken by one hub callback (``Wakes``).

What must hold (``frontend/room.py``): every command is handled, in order, by the room's own
greenlet; a parked room wakes for a command; while a hand-over holds the wake-ups (``Wakes.held``,
the incoming dispatcher handing a batch over and yielding to the hub between slices) no parked room
runs, and each then gets the whole batch in one wake-up; a room killed while parked ends, also with a
wake-up pending. The room's session and outbox are small stand-ins that record what the room hands
them (this is the room's scheduling, not a chat server's behaviour: the e2e tests run rooms for real).
"""

from __future__ import annotations

import logging

import gevent
import gevent.queue
import pytest

from frontend.config import load_settings
from frontend.counters import Counters
from frontend.keys import Keys
from frontend.logs import Throttle
from frontend.protocol import Command, parse_spec
from frontend.room import Room, RoomContext

SPEC_JSON = {"protocol": "irc", "server": "127.0.0.1", "port": 6667, "nick": "bot", "channel": "#c"}


class _Session:
    def __init__(self):
        self.handled: list[tuple[str, str, gevent.Greenlet]] = []

    def attach(self, room):
        pass

    def submit(self, room, command):
        self.handled.append((room.id, command.text, gevent.getcurrent()))


class _Sessions:
    def __init__(self, session):
        self.session = session

    def session_for(self, room_id, spec):
        return self.session


class _Ledger:
    def __init__(self):
        self.acked = []

    def ack(self, seq):
        self.acked.append(seq)


@pytest.fixture
def rooms():
    session = _Session()
    settings = load_settings(env={}, overrides={"frontend_id": "wakes"})
    ctx = RoomContext(outbox=None, ledger=_Ledger(), sessions=_Sessions(session), counters=Counters(),
                      keys=Keys(""), frontend_id="wakes", settings=lambda: settings,
                      throttle=Throttle(logging.getLogger("test")))
    made = [Room(f"r{i}", parse_spec(SPEC_JSON), SPEC_JSON, ctx) for i in range(3)]
    for room in made:
        room.greenlet = gevent.spawn(room.run)
    gevent.sleep(0)
    yield made, session, ctx
    for room in made:
        room.greenlet.kill()


def _say(room: Room, text: str) -> Command:
    return Command("say", room.id, text=text, seq=1)


def test_a_parked_room_wakes_for_each_command_and_handles_all_in_order(rooms):
    made, session, _ = rooms
    assert all(room._parked is room.greenlet for room in made)  # parked on the empty queue
    for i in range(5):
        for room in made:
            room.submit(_say(room, f"{room.id}-{i}"))
        gevent.sleep(0)
    for room in made:
        mine = [(text, g) for rid, text, g in session.handled if rid == room.id]
        assert [text for text, _ in mine] == [f"{room.id}-{i}" for i in range(5)]
        assert {g for _, g in mine} == {room.greenlet}  # handled by the room's own greenlet
        assert room._parked is room.greenlet


def test_held_wakeups_give_each_room_the_whole_batch_in_one_wakeup(rooms):
    made, session, ctx = rooms
    with ctx.wakes.held():
        for i in range(4):
            for room in made:
                room.submit(_say(room, f"{room.id}-{i}"))
            gevent.sleep(0)  # the hand-over yields between slices: no parked room runs
            assert session.handled == []
        with ctx.wakes.held():  # nested: the outer hand-over wakes them
            made[0].submit(_say(made[0], "r0-4"))
        gevent.sleep(0)
        assert session.handled == []
    gevent.sleep(0)
    assert [text for rid, text, _ in session.handled if rid == "r0"] == [f"r0-{i}" for i in range(5)]
    # one wake-up each: a room's commands were handled back to back, rooms one after the other
    order = [rid for rid, _, _ in session.handled]
    assert order == sorted(order, key=lambda rid: [r.id for r in made].index(rid))


def test_a_room_killed_while_parked_ends_even_with_a_wakeup_pending(rooms):
    made, session, _ = rooms
    room = made[1]
    room.greenlet.kill(block=False)  # the kill is scheduled first,
    room.submit(_say(room, "late"))  # the wake-up after it: it must find the greenlet dead
    gevent.sleep(0.01)
    assert room.greenlet.dead and room._parked is None
    assert session.handled == []
    made[0].submit(_say(made[0], "still"))
    gevent.sleep(0)
    assert [text for _, text, _ in session.handled] == ["still"]


def test_shutdown_wakes_a_parked_room_which_then_ends(rooms):
    made, _, _ = rooms
    made[2].shutdown()
    made[2].greenlet.join(1)
    assert made[2].greenlet.dead and made[2].greenlet.exception is None


def test_a_parked_room_holds_no_deque_and_its_queue_keeps_every_command_in_order(rooms):
    """``RoomQueue``: gevent's Queue (the design's), its deque only while it has commands."""
    made, session, _ = rooms
    room = made[2]
    assert isinstance(room.queue, gevent.queue.Queue)
    assert room.queue.queue == () and room.queue.qsize() == 0  # parked: nothing held
    with pytest.raises(gevent.queue.Empty):
        room.queue.get_nowait()
    chained = []

    def submit(r, command):  # a command that queues another one while the room handles it
        session.handled.append((r.id, command.text, gevent.getcurrent()))
        if command.text.startswith("chain") and len(chained) < 3:
            chained.append(command.text)
            r.submit(_say(r, f"chain{len(chained)}"))

    session.submit = submit
    for i in range(1000):
        room.submit(_say(room, f"c{i}"))
    assert room.queue.qsize() == 1000 and len(room.queue.queue) == 1000
    room.submit(_say(room, "chain0"))
    gevent.sleep(0)
    gevent.sleep(0)
    texts = [text for rid, text, _ in session.handled if rid == room.id]
    assert texts == [f"c{i}" for i in range(1000)] + ["chain0", "chain1", "chain2", "chain3"]
    assert room._parked is room.greenlet and room.queue.queue == ()
