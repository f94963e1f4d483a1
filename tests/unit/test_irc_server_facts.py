"""What IRC servers tell us, read exactly: flood disconnects, ISUPPORT limits and case mapping, IRCv3
identity tags (hostile values included); and the flood learning rule. Pure functions, no servers."""

from __future__ import annotations

import pytest

from frontend.chat.irc_flood import flood_disconnect
from frontend.chat.irc_format import connection_nick, folder
from frontend.chat.irc_identity import Identity, parse_server_time, valid_account
from frontend.chat.irc_isupport import ServerInfo, parse_chanlimit
from frontend.chat.irc_wire import parse
from frontend.flood_memory import Learned, effective, probe, tighten


@pytest.mark.parametrize("text", [
    "Closing link: (bot@127.0.0.1) [Excess Flood]",      # InspIRCd, exactly
    "Closing link: (bot@127.0.0.1) [RecvQ exceeded]",
    "Closing link: (bot@127.0.0.1) [SendQ exceeded]",
    "Closing Link: 127.0.0.1 (Excess Flood)",           # ircd-hybrid, ratbox, solanum
    "Closing Link: bot[127.0.0.1] (Max SendQ exceeded)",  # UnrealIRCd
    "Receive buffer space exhausted",                    # ngircd
    "Closing Link: bot (Killed (oper (stop flooding)))",  # a kill that says so
])
def test_flood_disconnects_are_recognised(text):
    assert flood_disconnect(text)


@pytest.mark.parametrize("text", [
    "Closing link: (bot@127.0.0.1) [Quit: bye]", "Closing Link: 127.0.0.1 (Ping timeout: 240 seconds)",
    "Registration timeout", "Closing link: (bot@h) [K-Lined]", "Closing Link: bot (Killed (oper (spam)))",
    "shutting down", "",
])
def test_other_disconnects_are_not(text):
    assert not flood_disconnect(text)


def test_tighten_without_flood_control_takes_half_of_what_the_server_let_through():
    learned = tighten(None, confirmed=18, paced=False, start_rate=1.0, min_rate=0.05, previous=None,
                      why="Closing link: (u@h) [Excess Flood]", now=100.0)
    assert (learned.rate, learned.burst, learned.kills, learned.ceiling, learned.at) == (1.0, 9, 1, None, 100.0)
    assert tighten(None, confirmed=0, paced=False, start_rate=1.0, min_rate=0.05, previous=None,
                   why="", now=0).burst == 1  # no echo-message: nothing confirmed, a burst of one


def test_tighten_lowers_the_rate_of_a_pacing_bucket_and_the_burst_of_a_bursting_one():
    paced = tighten((1.0, 9), confirmed=40, paced=True, start_rate=1.0, min_rate=0.05, previous=None,
                    why="x", now=0)
    assert paced.rate == pytest.approx(0.7) and paced.burst == 9 and paced.ceiling == pytest.approx(0.9)
    burst = tighten((0.5, 5), confirmed=3, paced=False, start_rate=1.0, min_rate=0.05, previous=None,
                    why="x", now=0)
    assert (burst.rate, burst.burst) == (0.5, 1)
    assert tighten((0.5, 5), confirmed=9, paced=False, start_rate=1.0, min_rate=0.05, previous=None,
                   why="x", now=0).burst == 4  # always at least one less
    one = tighten((0.5, 1), confirmed=0, paced=False, start_rate=1.0, min_rate=0.05, previous=None, why="", now=0)
    assert one.rate == pytest.approx(0.35) and one.burst == 1  # a burst of one: the rate was too high
    floor = tighten((0.06, 1), confirmed=0, paced=True, start_rate=1.0, min_rate=0.05, previous=None, why="", now=0)
    assert floor.rate == 0.05  # a connection always makes progress


def test_tighten_keeps_what_another_connection_learned_lower_and_counts_kills():
    previous = Learned(rate=0.3, burst=2, kills=4, ceiling=0.4)
    learned = tighten(None, confirmed=18, paced=False, start_rate=1.0, min_rate=0.05, previous=previous,
                      why="w" * 1000, now=5.0)
    assert (learned.rate, learned.burst, learned.kills, learned.ceiling) == (0.3, 2, 5, 0.4)
    assert len(learned.why) == 200


def test_probe_raises_the_rate_by_a_tenth_up_to_the_ceiling_and_effective_only_lowers():
    assert probe(Learned(rate=1.0, burst=9), now=7.0) == Learned(rate=pytest.approx(1.1), burst=9, at=7.0)
    assert probe(Learned(rate=0.85, burst=9, ceiling=0.9), now=0).rate == 0.9
    assert probe(Learned(rate=0.9, burst=9, ceiling=0.9), now=0) is None
    learned = Learned(rate=0.8, burst=3)
    assert effective(None, learned) == (0.8, 3.0)           # "flood": false is covered too
    assert effective((0.5, 5.0), learned) == (0.5, 3.0)     # a slower spec stays slower
    assert effective((2.0, 10.0), None) == (2.0, 10.0)


def test_learned_entries_from_redis_are_validated():
    good = Learned(rate=0.7, burst=4, kills=2, at=1.5, ceiling=0.9, why="Excess Flood")
    assert Learned.from_json(good.to_json()) == good
    for raw in (b"", b"[]", b"{}", b'{"rate":0,"burst":3}', b'{"rate":1,"burst":0}', b'{"rate":"x","burst":1}',
                b'{"rate":1e400,"burst":1}', b'{"rate":1,"burst":1,"ceiling":-1}', b"\xff"):
        assert Learned.from_json(raw) is None, raw


def test_isupport_channel_limits_and_case_mapping():
    info = ServerInfo()
    assert info.feed(["me", "CASEMAPPING=ascii", "CHANLIMIT=#&+:3", "NICKLEN=30", "are supported"])
    assert info.casemapping == "ascii" and info.limit_for("#a") == ("#&+", 3) and info.limit_for("!x") is None
    assert not info.feed(["me", "CHANLIMIT=#&+:3", "are supported"])  # nothing changed
    assert parse_chanlimit("#:25,&:") == (("#", 25),)  # "&:" without a number: no limit
    assert parse_chanlimit("#&:10,+:5") == (("#&", 10), ("+", 5))
    for bad in ("#", "x:3", "#:abc", "#:-1", "#:0", "#:9999999", ":5"):
        assert parse_chanlimit(bad) == (), bad
    old = ServerInfo()
    old.feed(["me", "MAXCHANNELS=20", "are supported"])
    assert old.limit_for("&c") == ("", 20)
    hostile = ServerInfo()
    hostile.feed(["me", "CASEMAPPING=\x1b[31m", "CHANLIMIT=" + "#:1," * 500, "are supported"])
    assert hostile.casemapping is None and hostile.chanlimit == ()  # too long, not a name: ignored


def test_case_mappings_and_connection_nicks():
    assert folder("ascii")("#A[]\\~") == "#a[]\\~"
    assert folder("rfc1459")("#A[]\\~") == "#a{}|^"
    assert folder("strict-rfc1459")("#A[]\\~") == "#a{}|~"
    assert folder(None)("[X]") == folder("rfc7613")("[X]") == "{x}"
    assert [connection_nick("bot", i) for i in range(4)] == ["bot", "bot2", "bot3", "bot4"]


def _identity(*caps: str) -> Identity:
    identity = Identity()
    for cap in caps:
        identity.enable(cap)
    return identity


def test_identity_fields_come_only_from_what_was_negotiated_and_are_checked():
    line = parse("@account=alice;msgid=1GR~AAB;time=2026-01-02T03:04:05.250Z :alice!a@h PRIVMSG #c :hi")
    full = _identity("account-tag", "server-time", "message-tags")
    assert full.fields("alice", line) == {"account": "alice", "msgid": "1GR~AAB", "server_ts": 1767323045.25}
    assert _identity("server-time").fields("alice", line) == {"account": None, "server_ts": 1767323045.25}
    assert _identity().fields("alice", line) == {"account": None}
    hostile = parse(r"@account=ali\sce;msgid=a\sb;time=2026-13-01T00:00:00Z :a!a@h PRIVMSG #c :hi")
    assert full.fields("a", hostile) == {"account": None}  # a space in both, month 13
    for value in ("*", "", "a" * 101, "al\x01ce", "al\nice"):
        assert valid_account(value) is None, value
    assert valid_account("Alice[m]") == "Alice[m]"
    for value in ("2026-01-01 00:00:00Z", "2026-01-01T00:00:00", "1969-12-31T23:59:59Z", "9" * 50, ""):
        assert parse_server_time(value) is None, value


def test_accounts_are_tracked_from_joins_and_account_lines_only_with_both_caps():
    tracking = _identity("extended-join", "account-notify")
    join = parse(":bob!b@h JOIN #c bobacct :Bob")
    assert tracking.joined("bob", join, tracked=True) == "bobacct"
    assert tracking.fields("bob", parse(":bob!b@h PRIVMSG #c :hi")) == {"account": "bobacct"}
    tracking.on_account("bob", parse(":bob!b@h ACCOUNT *"), tracked=True)
    assert tracking.fields("bob", parse(":bob!b@h PRIVMSG #c :hi")) == {"account": None}
    tracking.on_account("bob", parse(":bob!b@h ACCOUNT bob2"), tracked=True)
    tracking.renamed("bob", "robert")
    assert tracking.accounts == {"robert": "bob2"}
    tracking.forget("robert")
    assert tracking.accounts == {}
    assert tracking.joined("carol", parse(":carol!c@h JOIN #c carol :C"), tracked=False) == "carol"
    assert tracking.accounts == {}  # past the member bounds: not remembered
    half = _identity("extended-join")  # no account-notify: a logout would go unseen, nothing tracked
    assert half.joined("bob", join, tracked=True) == "bobacct" and half.accounts == {}
    tracking.joined("bob", join, tracked=True)
    tracking.enable("account-notify", False)  # CAP DEL
    assert tracking.accounts == {}


def test_rekey_splits_and_merges_channels_as_the_case_mapping_says():
    """``irc_limits.rekey`` on real ``IrcChannels`` (a stand-in session: nothing here connects)."""
    from types import SimpleNamespace

    from frontend.chat.irc_channels import IrcChannels
    from frontend.protocol import parse_spec

    sent: list[bytes] = []
    queue = SimpleNamespace(disable=lambda seat: None, enable=lambda seat: None, remove=lambda seat: [])
    session = SimpleNamespace(fold=folder("rfc1459"), registered=True, queue=queue, label="t", nick="bot",
                              send_urgent=sent.extend, identity=None)

    class Room:
        def __init__(self, rid: str, channel: str) -> None:
            self.id, self.spec = rid, parse_spec({"protocol": "irc", "server": "h", "nick": "bot", "channel": channel})
            self.states: list[str] = []

        def set_state(self, state: str, error=None) -> None:
            self.states.append(state)

    channels = IrcChannels(session)
    square, curly, other = Room("sq", "#a[x"), Room("cu", "#a{x"), Room("o", "#b")
    for room in (square, curly, other):
        channels.attach(room)
    assert sorted(channels.by_name) == ["#a{x", "#b"] and len(channels.by_name["#a{x"].seats) == 2
    sent.clear()
    session.fold = folder("ascii")
    channels.rekey()
    assert sorted(channels.by_name) == ["#a[x", "#a{x", "#b"]
    assert [s.room.id for s in channels.by_name["#a[x"].seats] == ["sq"]
    assert [s.room.id for s in channels.by_name["#a{x"].seats] == ["cu"]
    assert channels.seat_of(curly).place is channels.by_name["#a{x"]
    assert sent == [b"JOIN #a{x\r\n"]  # the channel that split off is joined
    session.fold = folder("rfc1459")
    channels.rekey()  # and back: one channel again
    assert sorted(channels.by_name) == ["#a{x", "#b"] and len(channels.by_name["#a{x"].seats) == 2


def test_learning_counts_only_what_the_server_confirmed():
    """``irc_limits.learn_flood`` on a stand-in session: with ``irc_ack = "write"`` a written line
    says nothing of what the server took, so the burst starts from one."""
    from types import SimpleNamespace

    from frontend.chat.irc_limits import learn_flood
    from frontend.config import Settings
    from frontend.flood_memory import FloodMemory
    from frontend.keys import Keys

    for mode, burst in (("pong", 9), ("write", 1)):
        memory = FloodMemory(None, Keys())
        session = SimpleNamespace(flood_memory=memory, spec=SimpleNamespace(server="irc.test"), label="t",
                                  queue=SimpleNamespace(bucket=None), written=(100, 18, 1.0), retry_soon=False,
                                  delivery=SimpleNamespace(mode=mode), settings=Settings(frontend_id="x"))
        learn_flood(session, "Closing link: (u@h) [Excess Flood]")
        assert (memory.get("irc.test").rate, memory.get("irc.test").burst) == (1.0, burst)
        assert session.retry_soon
