"""The IRC wire, inbound: our line parser (IRCv3 tags), bounded line reading, the dispatch table, and
what goes back out of what a server sent (PONG tokens, adopted nicks, line budgets). No network."""

import time

import irc.events
import pytest
from hypothesis import given, settings, strategies as st

from frontend.chat.base import SpeakGate
from frontend.chat.irc import DISPATCH, _BY_COMMAND
from frontend.chat.irc_format import MAX_PREFIX_LEN, pong_line, prefix_len, valid_server_nick
from frontend.chat.irc_wire import MAX_LINE, LineReader, command_name, commands_named, parse
from frontend.chat.sendqueue import OutLine, SendQueue
from frontend.pacing import TokenBucket


# ------------------------------------------------------------------------------------------ parse
@pytest.mark.parametrize("line, tags, source, command, params", [
    (":nick!u@h PRIVMSG #c :hello world", None, "nick!u@h", "PRIVMSG", ["#c", "hello world"]),
    ("PING :irc.test", None, None, "PING", ["irc.test"]),
    ("PING irc.test", None, None, "PING", ["irc.test"]),
    (":srv 001 me :Welcome to :the net", None, "srv", "001", ["me", "Welcome to :the net"]),
    (":srv 353 me = #c :@op +voice plain", None, "srv", "353", ["me", "=", "#c", "@op +voice plain"]),
    ("@time=2023-01-01T00:00:00Z;account=al :al!u@h PRIVMSG #c :hi", "time=2023-01-01T00:00:00Z;account=al",
     "al!u@h", "PRIVMSG", ["#c", "hi"]),
    ("@msgid=abc   :a!b@c   join   #c", "msgid=abc", "a!b@c", "JOIN", ["#c"]),
    (":a!b@c PRIVMSG #c :", None, "a!b@c", "PRIVMSG", ["#c", ""]),
    (":a!b@c PRIVMSG #c ::-)", None, "a!b@c", "PRIVMSG", ["#c", ":-)"]),
    ("CAP * LS * :sasl echo-message", None, None, "CAP", ["*", "LS", "*", "sasl echo-message"]),
    ("PRIVMSG #c a\tb", None, None, "PRIVMSG", ["#c", "a\tb"]),  # only spaces separate parameters
])
def test_parse(line, tags, source, command, params):
    msg = parse(line)
    assert (msg.raw_tags, msg.source, msg.command, msg.params) == (tags, source, command, params)


@pytest.mark.parametrize("line", ["", " ", ":", ":onlysource", "@tags", "@tags :src", ":src :trailing only"])
def test_lines_without_a_command_parse_to_none(line):
    assert parse(line) is None


def test_nick_of_the_source():
    assert parse(":alice!a@h PRIVMSG #c :x").nick == "alice"
    assert parse(":irc.test NOTICE * :x").nick == "irc.test"
    assert parse("PING :x").nick is None


def test_tags_are_unescaped_on_demand():
    msg = parse(r"@a=1;b;c=x\:y\sz\\w\r\n;d=end\;e= :s CMD")
    assert msg.tags == {"a": "1", "b": None, "c": "x;y z\\w\r\n", "d": "end", "e": None}
    assert parse("CMD").tags == {}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parse_never_raises_and_keeps_the_trailing_text(text):
    msg = parse(text)
    if msg is not None:
        assert msg.command and msg.command[0] != ":"
        assert all(isinstance(p, str) for p in msg.params)
    line = ":n!u@h PRIVMSG #c :" + text.replace("\n", "")
    assert parse(line).params == ["#c", text.replace("\n", "")]


def test_command_names_are_irc_events_names():
    assert command_name("001") == "welcome" and command_name("433") == "nicknameinuse"
    assert command_name("PRIVMSG") == "privmsg" and command_name("999") == "999"
    assert commands_named("welcome") == ["001"] and commands_named("join") == ["JOIN"]
    known = set(irc.events.numeric.values()) | set(irc.events.protocol) | {
        "cap", "authenticate", "badchanname", "secureonlychan",
        "account"}  # IRCv3 account-notify's verb, which irc.events does not name
    assert set(DISPATCH) <= known, set(DISPATCH) - known
    # one table: every command reaches exactly one handler, NICK included
    assert _BY_COMMAND["NICK"] is DISPATCH["nick"] and _BY_COMMAND["433"] is DISPATCH["nicknameinuse"]
    assert len(_BY_COMMAND) == sum(len(commands_named(name)) for name in DISPATCH)


# ------------------------------------------------------------------------------------- LineReader
def test_reader_splits_strips_cr_and_replaces_invalid_utf8():
    reader = LineReader()
    assert reader.feed(b"PING :a\r\nPING :b\nPART") == ["PING :a", "PING :b"]
    assert reader.feed(b" #c\r") == []
    assert reader.feed(b"\n\r\n\n:x PRIVMSG #c :caf\xe9 \xe2\x82\r\n") == ["PART #c", ":x PRIVMSG #c :caf\ufffd \ufffd"]


def test_a_line_over_the_limit_is_dropped_up_to_its_newline():
    reader = LineReader(limit=100)
    assert reader.feed(b"x" * 60) == []
    assert reader.feed(b"y" * 60) == [] and reader.too_long == 1
    assert reader._partial == b""  # nothing of it is kept
    assert reader.feed(b"z" * 1000) == []
    assert reader.feed(b"zz\r\nnext line\r\n") == ["next line"]
    assert reader.feed(b"a" * 101 + b"\r\nok\r\n" + b"b" * 150) == ["ok"] and reader.too_long == 3
    assert reader.feed(b"\r\nafter\r\n") == ["after"]


def test_the_limit_allows_8k_of_tags_and_a_full_message():
    reader = LineReader()
    line = b"@" + b"t" * 8189 + b" :n!u@h PRIVMSG #c :" + b"x" * 480
    assert len(line) <= MAX_LINE
    assert reader.feed(line + b"\r\n") == [line.decode()]
    assert reader.feed(b"y" * (MAX_LINE + 1) + b"\r\n") == [] and reader.too_long == 1


def test_an_endless_line_costs_linear_time_and_bounded_memory():
    reader = LineReader()
    chunk = b"a" * 65536
    started = time.process_time()
    for _ in range(256):  # 16 MiB without a newline
        reader.feed(chunk)
        assert len(reader._partial) <= MAX_LINE
    assert reader.feed(b"\r\nPING :x\r\n") == ["PING :x"]
    assert time.process_time() - started < 1.0


# ---------------------------------------------------------------------- what goes back out
def test_pong_carries_only_what_a_line_may_carry():
    assert pong_line("\x00abc") == b"PONG :abc\r\n"
    assert pong_line("a\rb\nc") == b"PONG :abc\r\n"
    long = pong_line("é" * 1000)
    assert len(long) <= 512 and long.endswith(b"\r\n") and long.decode()
    assert pong_line("") == b"PONG :\r\n"


def test_server_nicks_and_budgets_are_bounded():
    assert valid_server_nick("bot_") and not valid_server_nick("") and not valid_server_nick("a b")
    assert not valid_server_nick("x" * 65) and not valid_server_nick("a\x00") and not valid_server_nick("a,b")
    assert prefix_len("bot", 10_000) == MAX_PREFIX_LEN
    assert prefix_len("bot", 20) == 1 + 3 + 20 + 1


# --------------------------------------------------------------------- gate and barrier lines
def test_a_barrier_takes_no_token_and_writes_nothing():
    q = SendQueue(TokenBucket(rate=0.001, burst=1), 100, lambda *a: None)
    q.enable("r")
    q.put("r", OutLine(b"one\r\n"))
    q.put("r", OutLine(None))
    taken, wait = q.take(10)
    assert [line.data for _, line in taken] == [b"one\r\n", None] and wait == 0.0


def test_speak_gate():
    gate = SpeakGate()
    assert gate.open and gate.opened.is_set()
    gate.set_open(False)
    assert not gate.open and not gate.opened.is_set()
    gate.set_open(True)
    assert gate.open
    assert not SpeakGate(open=False).open


# ------------------------------------------------------------------- the lean parse of PRIVMSG
_PIECES = [":", " ", "  ", "PRIVMSG", "privmsg", "NOTICE", "#c", "n!u@h", "n", "!", "@a=b", " :", "::",
           "x y", "\x01", "\r", "\x00", "é", "\ufffd"]


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=10).map("".join),
    st.tuples(st.sampled_from(["", "@t=1 "]), st.sampled_from([":n!u@h", ":n", ":!x", ":", ":a b", "n!u@h"]),
              st.sampled_from([" PRIVMSG ", "  PRIVMSG ", " PRIVMSG  ", " privmsg "]),
              st.sampled_from(["#c", ":#c", "#c d", "", "#c:x", "nick"]),
              st.sampled_from([" :", " ", "  :", " ::", ""]), st.text(max_size=20)).map("".join)))
def test_the_lean_privmsg_parse_agrees_with_parse(line):
    from frontend.chat.irc_wire import parse_privmsg
    if not line:
        return
    fast = parse_privmsg(line)
    if fast is None:
        return  # parse handles it
    msg = parse(line)
    assert msg is not None and msg.command == "PRIVMSG" and msg.raw_tags is None
    assert (msg.source, msg.nick, msg.params) == (fast[0], fast[1], [fast[2], fast[3]])


def test_the_lean_privmsg_parse_takes_the_traffic_line_and_leaves_the_rest():
    from frontend.chat.irc_wire import parse_privmsg
    assert parse_privmsg(":n!u@h PRIVMSG #c :hi there") == ("n!u@h", "n", "#c", "hi there")
    assert parse_privmsg(":n!u@h PRIVMSG #c :") == ("n!u@h", "n", "#c", "")
    for line in ["@time=x :n!u@h PRIVMSG #c :hi", ":n!u@h PRIVMSG #c hi", ":n!u@h PRIVMSG :hi",
                 ":n!u@h PRIVMSG  #c :hi", ":n!u@h privmsg #c :hi", ":!u@h PRIVMSG #c :hi",
                 "PRIVMSG #c :hi", ":n!u@h PRIVMSG #c d :hi", ":n!u@h NOTICE #c :hi"]:
        assert parse_privmsg(line) is None, line
