"""Issue 4, fault 7 (and the invalid UTF-8 check): hostile text and targets never become protocol.

Texts with a lone CR, LF, NUL, ``\\x01`` and CRLF, and ``to`` targets with spaces, commas, ``#`` or
``:``: an observer in the room's channel, and one in another channel, see no JOIN, PART, QUIT, MODE,
KICK, NICK, TOPIC or CTCP from the bot, ever; the bot's only lines are its own JOIN and PRIVMSGs to
its own channel (and private messages to a plain nick). Join specs that try to smuggle a second
channel, a key or a nick with CRLF are dead-lettered. And invalid UTF-8 from a chat user reaches
``messages`` as U+FFFD while the room keeps working.
"""

from __future__ import annotations

import time

import pytest
import ujson

from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HOSTILE_TEXTS = [
    "lone-cr\rJOIN {other}",
    "lone-lf\nQUIT :bye",
    "nul\x00MODE {chan} +o {watcher}",
    "ctcp \x01VERSION\x01",
    "\x01ACTION fakes an action\x01",
    "crlf\r\nNICK evil",
    "crlf2\r\nKICK {chan} {watcher} :out",
    "crlf3\r\nPRIVMSG {other} :smuggled",
    "crlf4\r\nPART {chan}",
    "crlf5\r\nTOPIC {chan} :owned",
    "\r\n\r\n\rJOIN 0\n",
    "mixed \x01\r\x00\n\x01DCC SEND x 1 2 3\x01\r\nMODE {chan} +b *!*@*",
    "\x00\x01\x02\x03 formatting kept \x1f\x0f",
    "cr-only\r\r\r",
]
BAD_TARGETS = [
    "a b", "watcher other", "a,{other}", "{other}", ":{watcher}", "&amp", "+plus", "!bang",
    "{watcher}\r\nJOIN {other}", "{watcher}\nQUIT", "{watcher}\x00", "{watcher}\x01", "x" * 65, "",
    " {watcher}", "{watcher},{watcher2}", 42, ["{watcher}"], {"nick": "x"},
]
#: channel-status prefixes (STATUSMSG: "@#chan" reaches the ops of #chan on servers that support it,
#: e.g. inspircd, solanum) and server/host masks are not plain nicks either
STATUSMSG_TARGETS = ["@{other}", "%{other}", "~{other}", "@+{other}", "$*", "$$*", "#*"]
FORBIDDEN_FROM_BOT = {"JOIN", "PART", "QUIT", "MODE", "KICK", "NICK", "TOPIC", "INVITE", "NOTICE"}


def _fmt(value, **names):
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, list):
        return [_fmt(v, **names) for v in value]
    return value


@pytest.fixture
def fe(redis_url):
    with running_frontend(redis_url, frontend_id=uniq("inj-")) as frontend:
        yield frontend


def _setup(redis_url, redis_client, ngircd):
    chan, other = "#" + uniq("inj"), "#" + uniq("other")
    nick = uniq("ibot")
    watcher = Observer(ngircd.host, ngircd.port, uniq("w"), [chan])
    watcher2 = Observer(ngircd.host, ngircd.port, uniq("w2"), [other])
    room = uniq("inj-r")
    events = EventLog(redis_url)
    push(redis_client, {"type": "join", "room": room, "spec": irc_spec(ngircd, chan, nick=nick)})
    events.wait(15, type="joined", room=room)
    watcher.wait(lambda ln: ln.cmd == "JOIN" and ln.nick == nick, 10, what="bot JOIN")
    return chan, other, nick, watcher, watcher2, room, events


def _assert_bot_behaved(nick, chan, watcher, watcher2, allowed_private=()):
    bot_lines = watcher.from_nick(nick)
    joins = [ln for ln in bot_lines if ln.cmd == "JOIN"]
    assert len(joins) == 1 and joins[0].target.lower() == chan.lower(), joins
    bad = [ln for ln in bot_lines if ln.cmd in FORBIDDEN_FROM_BOT and ln is not joins[0]]
    assert not bad, f"the bot sent protocol commands: {bad}"
    others = [ln for ln in bot_lines if ln.cmd not in ("JOIN", "PRIVMSG")]
    assert not others, f"unexpected lines from the bot: {others}"
    for ln in bot_lines:
        if ln.cmd == "PRIVMSG":
            assert ln.target.lower() == chan.lower(), ln
            text = ln.text
            if text.startswith("\x01ACTION ") and text.endswith("\x01"):  # a real `action` command
                text = text[len("\x01ACTION "):-1]
            assert "\x01" not in text and "\x00" not in text, f"CTCP/NUL reached the channel: {ln!r}"
    seen_by_other = [ln for ln in watcher2.from_nick(nick)
                     if not (ln.cmd == "PRIVMSG" and ln.target.lower() in allowed_private)]
    assert not seen_by_other, f"the observer in another channel saw the bot: {seen_by_other}"


def test_hostile_text_and_targets_never_become_protocol(fe, redis_url, redis_client, ngircd):
    chan, other, nick, watcher, watcher2, room, events = _setup(redis_url, redis_client, ngircd)
    names = {"chan": chan, "other": other, "watcher": watcher.nick, "watcher2": watcher2.nick}
    try:
        good = []
        for i, text in enumerate(HOSTILE_TEXTS):
            good.append({"type": "say", "room": room, "text": _fmt(text, **names), "cmd_id": f"t{i}"})
            good.append({"type": "action", "room": room, "text": _fmt(text, **names), "cmd_id": f"a{i}"})
        good.append({"type": "say", "room": room, "to": watcher2.nick, "cmd_id": "priv",
                     "text": _fmt("private\r\nJOIN {other}\x01VERSION\x01", **names)})
        bad = [{"type": "say", "room": room, "to": _fmt(t, **names), "text": "hi", "cmd_id": f"to{i}"}
               for i, t in enumerate(BAD_TARGETS)]
        bad += [{"type": "action", "room": room, "to": _fmt(t, **names), "text": "hi", "cmd_id": f"ato{i}"}
                for i, t in enumerate(BAD_TARGETS[:6])]
        bad_specs = [
            {"channel": f"{chan},{other}"}, {"channel": f"{chan} {other}"}, {"channel": f"{chan}\r\nJOIN {other}"},
            {"channel": "0"}, {"channel": other[1:]}, {"channel": f"{chan}\x07"},
            {"key": f"k\r\nJOIN {other}"}, {"key": "a b"}, {"key": "a,b"},
            {"nick": f"evil\r\nJOIN {other}"}, {"nick": "a b"}, {"nick": "#nick"},
            {"server": f"{ngircd.host}\r\nJOIN {other}"}, {"password": "p\r\nJOIN #x"},
            {"port": "6667\r\n"}, {"tenant": "t\nx"}, {"events": "a b"},
        ]
        for i, override in enumerate(bad_specs):
            spec = irc_spec(ngircd, "#" + uniq("new"), nick=uniq("nb"))
            spec.update(override)
            bad.append({"type": "join", "room": uniq("injj"), "spec": spec, "cmd_id": f"spec{i}"})
        # a part whose reason tries to smuggle a JOIN is valid: only its first line is used
        push(redis_client, *good, *bad)
        push(redis_client, {"type": "say", "room": room, "text": "done-marker", "cmd_id": "done"},
             {"type": "ping", "room": room, "cmd_id": "p1"})
        watcher.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "done-marker", 15, what="marker")
        events.wait(10, type="pong", room=room, cmd_id="p1")
        watcher2.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.nick == nick, 5, what="the private message")
        wait_until(lambda: redis_client.llen("control:dead") >= len(bad), 10, what="dead letters")
        time.sleep(0.5)  # anything the bot would still send arrives now

        _assert_bot_behaved(nick, chan, watcher, watcher2, allowed_private={watcher2.nick.lower()})
        dead = [ujson.loads(x) for x in redis_client.lrange("control:dead", 0, -1)]
        dead_ids = {ujson.loads(d["raw"]).get("cmd_id") for d in dead}
        assert dead_ids == {c["cmd_id"] for c in bad}
        assert all(d["error"]["code"] == "bad_command" and d["error"]["detail"] for d in dead)
        # the texts did arrive, sanitised: CR/LF split them into lines, NUL and \x01 are gone
        said = [ln.text for ln in watcher.privmsgs(chan, nick)]
        assert "lone-cr" in said and f"JOIN {other}" in said and "lone-lf" in said
        assert "ctcp VERSION" in said and "\x02\x03 formatting kept \x1f\x0f" in said
        private = [ln for ln in watcher2.privmsgs(watcher2.nick, nick)]
        assert [ln.text for ln in private] == ["private", f"JOIN {other}VERSION"]
    finally:
        watcher.close()
        watcher2.close()


def test_statusmsg_and_mask_targets_are_rejected(fe, redis_url, redis_client, ngircd):
    chan, other, nick, watcher, watcher2, room, events = _setup(redis_url, redis_client, ngircd)
    try:
        bad = [{"type": "say", "room": room, "to": t.format(other=other), "text": "hi", "cmd_id": f"s{i}"}
               for i, t in enumerate(STATUSMSG_TARGETS)]
        push(redis_client, *bad, {"type": "ping", "room": room, "cmd_id": "p"})
        events.wait(10, type="pong", room=room, cmd_id="p")
        time.sleep(0.3)
        dead = [ujson.loads(x) for x in redis_client.lrange("control:dead", 0, -1)]
        refused = sorted(ujson.loads(d["raw"])["to"] for d in dead)
        assert refused == sorted(t.format(other=other) for t in STATUSMSG_TARGETS)
    finally:
        watcher.close()
        watcher2.close()


def test_invalid_utf8_from_a_user_becomes_replacement_characters(fe, redis_url, redis_client, ngircd):
    chan, other, nick, watcher, watcher2, room, events = _setup(redis_url, redis_client, ngircd)
    try:
        sender = Observer(ngircd.host, ngircd.port, uniq("u8"), [chan])
        try:
            sender.send_raw(b"PRIVMSG " + chan.encode() + b" :bad \xff\xfe bytes")
            sender.send_raw(b"PRIVMSG " + chan.encode() + b" :latin1 caf\xe9 and cut \xe2\x82")
            sender.send_raw(b"PRIVMSG " + chan.encode() + b" :\x01ACTION \xc3\x28 waves\x01")
            sender.send_raw(b"PRIVMSG " + chan.encode() + b" :fine again \xe2\x82\xac")
            first = events.wait(10, type="message", room=room, **{"from": sender.nick})
            assert first["text"] == "bad \ufffd\ufffd bytes"
            second = events.wait(10, type="message", room=room, **{"from": sender.nick})
            assert second["text"] == "latin1 caf\ufffd and cut \ufffd"
            action = events.wait(10, type="action", room=room, **{"from": sender.nick})
            assert action["text"] == "\ufffd( waves"
            third = events.wait(10, type="message", room=room, **{"from": sender.nick})
            assert third["text"] == "fine again \u20ac"
            # the room still works both ways
            push(redis_client, {"type": "say", "room": room, "text": "still here"},
                 {"type": "ping", "room": room, "cmd_id": "u8"})
            watcher.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "still here", 10, what="say")
            events.wait(10, type="pong", room=room, cmd_id="u8")
        finally:
            sender.close()
    finally:
        watcher.close()
        watcher2.close()
