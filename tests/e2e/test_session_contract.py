"""The adapter contract the core builds on (issue 15 needs both): the speak gate and the silent detach.

Sessions from a real ``SessionPool`` on the real ngircd, with ``RecordingRoom``s as their rooms: a
``RoomLink`` that keeps what the session told it (events, states, acks) instead of sending it to
Redis. An observer in the channel sees what reached the wire.

- Gate closed: no room line goes out and none is acked; protocol lines (JOIN, PART) still go. Opened:
  the held lines go, in order, and are acked.
- ``detach(room, reason, silent=True)``: a bare PART (no reason), none of the room's queued lines
  sent, acked or reported, no ``parted``; on a channel another room keeps, no PART at all.
- ``detach`` (not silent) with the gate closed: PART at once, the held lines reported ``not_sent``.
"""

from __future__ import annotations

import time

import gevent
import pytest

from frontend.chat.base import SpeakGate
from frontend.config import load_settings
from frontend.counters import Counters
from frontend.protocol import Command, parse_spec
from frontend.sessions import SessionPool
from tests.support.frontend import FAST, irc_spec
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.scripted_ircd import ScriptedIrcd, irc_stub_spec
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


class RecordingRoom:
    """A ``RoomLink`` that records what its session tells it."""

    def __init__(self, room_id: str, spec: dict) -> None:
        self.id = room_id
        self.spec = parse_spec(spec)
        self.events: list[dict] = []
        self.states: list[str] = []
        self.acked: list[Command] = []

    def emit(self, type: str, **fields) -> None:
        self.events.append({"type": type, **fields})

    def set_state(self, state: str, *, error=None) -> None:
        self.states.append(state)

    def ack(self, command: Command) -> None:
        self.acked.append(command)

    def of(self, type: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type]


def say(room: RecordingRoom, text: str) -> Command:
    return Command(type="say", room=room.id, text=text, cmd_id=text, received=time.time())


@pytest.fixture
def pool():
    settings = load_settings(env={}, overrides={**FAST, "redis_url": "redis://127.0.0.1:1/0"})
    gate = SpeakGate()
    pool = SessionPool(settings, counters=Counters(), gate=gate)
    yield pool
    pool.close_all("test over", 2.0)


def _attach(pool, room: RecordingRoom):
    session = pool.session_for(room.id, room.spec)
    session.attach(room)
    wait_until(lambda: room.of("joined"), 10, what=f"{room.id} joined")
    return session


def test_a_closed_gate_holds_room_lines_but_not_protocol_lines(pool, ngircd):
    chan, other, nick = "#" + uniq("gate"), "#" + uniq("gate2"), uniq("gbot")
    watcher = Observer(ngircd.host, ngircd.port, uniq("gw"), [chan, other])
    try:
        first = RecordingRoom("g1", irc_spec(ngircd, chan, nick=nick))
        session = _attach(pool, first)
        pool.gate.set_open(False)
        held = [say(first, f"held-{i}") for i in range(3)]
        for command in held:
            session.submit(first, command)
        second = RecordingRoom("g2", irc_spec(ngircd, other, nick=nick))
        assert pool.session_for("g2", second.spec) is session
        session.attach(second)  # a JOIN: a protocol line, the gate does not hold it
        wait_until(lambda: second.of("joined"), 10, what="the second room joined")
        gevent.sleep(0.5)
        assert not watcher.privmsgs(chan, nick) and not first.acked
        assert session.depth(first) == 3
        pool.gate.set_open(True)
        watcher.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "held-2", 5, what="the held lines")
        assert [ln.text for ln in watcher.privmsgs(chan, nick)] == ["held-0", "held-1", "held-2"]
        wait_until(lambda: len(first.acked) == 3, 5, what="the held lines acked")
        assert first.acked == held
    finally:
        watcher.close()


def test_silent_detach_leaves_without_speaking_and_leaves_the_lines_unacked(pool, ngircd):
    chan, nick = "#" + uniq("silent"), uniq("sbot")
    watcher = Observer(ngircd.host, ngircd.port, uniq("sw"), [chan])
    try:
        room = RecordingRoom("s1", irc_spec(ngircd, chan, nick=nick))
        keeper = RecordingRoom("s0", irc_spec(ngircd, "#" + uniq("keep"), nick=nick))
        session = _attach(pool, keeper)  # keeps the connection open after s1 goes
        session.attach(room)
        wait_until(lambda: room.of("joined"), 10, what="joined")
        pool.gate.set_open(False)
        for i in range(3):
            session.submit(room, say(room, f"not-mine-{i}"))
        session.detach(room, "moving to another frontend", silent=True)
        part = watcher.wait(lambda ln: ln.cmd == "PART" and ln.nick == nick, 5, what="the bot's PART")
        assert "moving" not in part.raw
        pool.gate.set_open(True)
        gevent.sleep(0.5)
        assert not watcher.privmsgs(chan, nick), "a line of the detached room was sent"
        assert not room.acked and not room.of("error") and not room.of("parted")
        assert "parted" not in room.states
        assert session.depth(room) == 0 and session.room_count == 1
    finally:
        watcher.close()


def test_silent_detach_on_a_shared_channel_keeps_the_bot_there(pool, ngircd):
    chan, nick = "#" + uniq("keepch"), uniq("kbot")
    watcher = Observer(ngircd.host, ngircd.port, uniq("kw"), [chan])
    try:
        a = RecordingRoom("ka", irc_spec(ngircd, chan, nick=nick, tenant="acme"))
        b = RecordingRoom("kb", irc_spec(ngircd, chan, nick=nick, tenant="globex"))
        session = _attach(pool, a)
        session.attach(b)
        wait_until(lambda: b.of("joined"), 10, what="b joined")
        session.detach(a, "moving", silent=True)
        command = say(b, "b speaks on")
        session.submit(b, command)
        watcher.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "b speaks on", 5, what="b's line")
        wait_until(lambda: b.acked == [command], 5, what="b's line acked")
        assert not [ln for ln in watcher.from_nick(nick) if ln.cmd in ("PART", "QUIT")]
    finally:
        watcher.close()


def test_a_loud_detach_with_the_gate_closed_parts_now_and_reports_the_held_lines(pool, ngircd):
    chan, nick = "#" + uniq("loud"), uniq("lbot")
    watcher = Observer(ngircd.host, ngircd.port, uniq("lw"), [chan])
    try:
        room = RecordingRoom("l1", irc_spec(ngircd, chan, nick=nick))
        keeper = RecordingRoom("l0", irc_spec(ngircd, "#" + uniq("keep"), nick=nick))
        session = _attach(pool, keeper)
        session.attach(room)
        wait_until(lambda: room.of("joined"), 10, what="joined")
        pool.gate.set_open(False)
        held = [say(room, f"never-{i}") for i in range(2)]
        for command in held:
            session.submit(room, command)
        session.detach(room, "bye now")
        part = watcher.wait(lambda ln: ln.cmd == "PART" and ln.nick == nick, 5, what="the PART")
        assert part.text == "bye now"
        assert room.acked == held and [e["cmd_id"] for e in room.of("error")] == ["never-0", "never-1"]
        assert all(e["code"] == "not_sent" for e in room.of("error"))
        assert room.of("parted") == [{"type": "parted", "reason": "bye now"}]
        pool.gate.set_open(True)
        gevent.sleep(0.3)
        assert not watcher.privmsgs(chan, nick)
    finally:
        watcher.close()


def test_a_room_parted_while_its_join_is_on_the_way_leaves_no_bot_behind(pool):
    """The JOIN was sent, the server has not answered yet, the room goes: a PART must follow the JOIN
    (it used to be dropped, and the server's JOIN left the bot in a channel no room held). A slow
    server is a scripted one: ngircd answers a JOIN at once."""
    ircd = ScriptedIrcd(join_delay=1.0).start()
    try:
        keeper = RecordingRoom("j0", irc_stub_spec(ircd, "#keep", "jbot"))
        room = RecordingRoom("j1", irc_stub_spec(ircd, "#slow", "jbot"))
        session = pool.session_for(keeper.id, keeper.spec)
        session.attach(keeper)
        wait_until(lambda: keeper.of("joined"), 10, what="the keeper joined")
        session.attach(room)
        ircd.conns[0].wait_for(lambda line: line == "JOIN #slow")
        session.detach(room, "changed my mind")
        ircd.conns[0].wait_for(lambda line: line.startswith("PART #slow"))
        assert room.of("parted") and not room.of("joined")
        gevent.sleep(1.2)  # the late JOIN arrives: no room, no event
        assert not room.of("joined") and session.room_count == 1
    finally:
        ircd.stop()
