"""Issue 4, fault 4: 10,000 malformed or hostile items on `control`, interleaved with valid ones.

A seeded generator (reproducible: the seed is in the test) builds items that are invalid by
construction under PROTOCOL.md: bytes that are not JSON or not UTF-8, JSON that is not an object,
wrong types for every field, texts over ``max_text_bytes``, room ids and ``to`` targets carrying
spaces, commas, CR/LF, channel prefixes, join specs smuggling a second channel, commands for unknown
rooms, nesting bombs. Interleaved with 300 valid ``say``s over 3 rooms. A real `greenroom run`:

- every valid ``say`` reaches its channel (an observer sits in all three),
- every bad item is in ``control:dead`` exactly once, with a code and a detail, ``raw`` being the item
  as pushed (decoded with replacement),
- the process still answers ``ping`` in every room, and never exited.
"""

from __future__ import annotations

import hashlib
import random
import re
import time

import pytest
import ujson

from tests.support.irc_client import Observer
from tests.support.servers import log_tail
from frontend.protocol import DEAD_RAW_LIMIT
from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, held, held_items, irc_spec, proc_alive, push, stop_process
from tests.support.names import uniq
from tests.support.report import report
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

BAD_ITEMS = 10_000
VALID_SAYS = 300
SEED = 20240404
MAX_TEXT = 16384
#: the 10,000 items include a JSON array or object as `type` (once a crasher of the dispatcher) ...
UNHASHABLE_TYPES = True
#: ... and empty items (once stuck in the in-flight list); the tests at the end pin both
EMPTY_ITEMS = True


SECRET_NAMES = re.compile(r'"(?:password|key|room_password)"')


def _j(obj) -> bytes:
    return ujson.dumps(obj, ensure_ascii=False).encode("utf-8")


class HostileGenerator:
    """Items that PROTOCOL.md says must be rejected; each generator names the rule it breaks."""

    def __init__(self, rng: random.Random, rooms: list[str], channel: str, other: str,
                 unhashable_types: bool = True, empty_items: bool = True) -> None:
        self.rng = rng
        self.unhashable_types = unhashable_types
        self.empty_items = empty_items
        self.rooms = rooms
        self.channel = channel
        self.other = other
        self.makers = [getattr(self, name) for name in dir(self) if name.startswith("bad_")]

    def room(self) -> str:
        return self.rng.choice(self.rooms)

    def junk(self, n: int) -> str:
        alphabet = "abc \r\n\t\x00\x01\x07\"\\{}[]:,#@!$%é€😀\u202e\ufeff"
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def make(self) -> bytes:
        return self.rng.choice(self.makers)()

    # ----------------------------------------------------------------------------- not JSON
    def bad_random_bytes(self) -> bytes:
        data = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 80)))
        return b"\x80" + data  # a continuation byte first: never valid UTF-8, never JSON

    def bad_truncated_json(self) -> bytes:
        full = _j({"type": "say", "room": self.room(), "text": self.junk(20)})
        return full[: self.rng.randrange(1, len(full) - 1)]

    def bad_invalid_utf8_in_string(self) -> bytes:
        bad = self.rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        return b'{"type":"say","room":"' + self.room().encode() + b'","text":"x' + bad + b'"}'

    def bad_not_an_object(self) -> bytes:
        return _j(self.rng.choice([[], [1, 2], "say", 42, 1.5, None, True, [{"type": "say"}]]))

    def bad_nesting_bomb(self) -> bytes:
        depth = self.rng.choice([2000, 5000, 20000])
        return b'{"type":"say","room":"' + self.room().encode() + b'","text":' + b"[" * depth + b"]" * depth + b"}"

    def bad_trailing_garbage(self) -> bytes:
        return _j({"type": "ping", "room": self.room()}) + self.rng.choice([b"x", b"}", b"{}", b"\x00"])

    def bad_empty(self) -> bytes:
        return self.rng.choice([b"", b" ", b"\r\n", b"{", b"null"] if self.empty_items else
                               [b" ", b"\r\n", b"{", b"null"])

    # ----------------------------------------------------------------------------- wrong fields
    def bad_type(self) -> bytes:
        kinds = [None, "", "SAY", "raw", "quote", "privmsg", "join ", 1, 1.5, False, "mode"]
        if self.unhashable_types:
            kinds += [["say"], {"x": 1}, [], {}]
        t = self.rng.choice(kinds)
        obj = {"room": self.room(), "text": "hi"}
        if t is not None:
            obj["type"] = t
        return _j(obj)

    def bad_room_id(self) -> bytes:
        room = self.rng.choice([
            None, "", " ", "a b", "r\r\nJOIN #x", "r\x00", "r\x01", "r\t", "x" * 201, 7, ["r"], {"id": "r"},
            self.room() + " ", "\u2028r", "r\x7f",
        ])
        obj = {"type": self.rng.choice(["say", "ping", "part", "action", "topic"]), "text": "hi"}
        if room is not None:
            obj["room"] = room
        return _j(obj)

    def bad_text(self) -> bytes:
        kind = self.rng.randrange(4)
        if kind == 0:
            text = "x" * (MAX_TEXT + 1 + self.rng.randrange(5000))
        elif kind == 1:
            text = "€" * (MAX_TEXT // 3 + 1)  # 3 bytes each: just over the limit in bytes, not chars
        elif kind == 2:
            text = self.rng.choice([None, 5, 1.5, True, ["a"], {"t": "x"}])
        else:
            text = "missing"
        obj = {"type": self.rng.choice(["say", "action", "topic"]), "room": self.room()}
        if kind != 3 and text is not None:
            obj["text"] = text
        return _j(obj)

    def bad_to(self) -> bytes:
        to = self.rng.choice([
            "a b", "a,b", "#chan", self.other, ":nick", "&local", "+modeless", "!safe", "nick\r\nJOIN #x",
            "nick\nQUIT", "nick\x00", "nick\x01", "x" * 65, "", " ", 5, ["nick"], {"n": 1}, True,
            f"nick,{self.other}", "\tnick",
        ])
        return _j({"type": self.rng.choice(["say", "action"]), "room": self.room(), "text": "hi", "to": to})

    def bad_cmd_id(self) -> bytes:
        cmd_id = self.rng.choice(["x" * 201, [1], {"a": 1}, True, False, 1.5])
        return _j({"type": "ping", "room": self.room(), "cmd_id": cmd_id})

    def bad_expires(self) -> bytes:
        expires = self.rng.choice(["tomorrow", "1700000000", True, [1], {"t": 1}])
        return _j({"type": "say", "room": self.room(), "text": "hi", "expires": expires})

    def bad_reason(self) -> bytes:
        reason = self.rng.choice([5, ["bye"], {"r": 1}, "x" * 401, "€" * 134])
        return _j({"type": "part", "room": self.room(), "reason": reason})

    def bad_unknown_room(self) -> bytes:
        t = self.rng.choice(["say", "action", "topic", "ping", "part"])
        return _j({"type": t, "room": "nope-" + str(self.rng.randrange(10 ** 6)), "text": self.junk(10)})

    def bad_join_spec(self) -> bytes:
        base = {"protocol": "irc", "server": "127.0.0.1", "port": 6667, "nick": "n" + str(self.rng.randrange(999)),
                "channel": "#c" + str(self.rng.randrange(999))}
        override = self.rng.choice([
            {"channel": f"{self.channel},{self.other}"}, {"channel": f"{self.channel} {self.other}"},
            {"channel": f"#a\r\nJOIN {self.other}"}, {"channel": "0"}, {"channel": "nochan"},
            {"channel": "#" + "x" * 200}, {"channel": "#bell\x07"}, {"channel": None},
            {"nick": "a b"}, {"nick": "n\r\nJOIN #x"}, {"nick": "#n"}, {"nick": "x" * 65}, {"nick": 5},
            {"key": "a b"}, {"key": "a,b"}, {"key": "k\r\nMODE"}, {"password": "a b"},
            {"server": "a b"}, {"server": ""}, {"server": None}, {"port": 0}, {"port": 70000},
            {"port": "6667"}, {"port": True}, {"tls": "yes"}, {"protocol": "telnet"}, {"protocol": None},
            {"sasl": "user:pass"}, {"sasl": {"username": "u"}}, {"flood": {"burst": 0, "rate": 1}},
            {"flood": {"burst": 5, "rate": -1}}, {"flood": "off"}, {"share": "no"}, {"exec": "rm -rf /"},
            {"events": "a b"}, {"events": ""}, {"tenant": 5},
        ])
        spec = {**base, **override}
        spec = {k: v for k, v in spec.items() if v is not None}
        if self.rng.random() < 0.1:
            spec = self.rng.choice([None, [], "irc://127.0.0.1/#c", 5])
        return _j({"type": "join", "room": "j" + str(self.rng.randrange(10 ** 6)), "spec": spec})


def test_10000_hostile_items_are_dead_lettered_and_valid_ones_delivered(redis_url, redis_client, ngircd,
                                                                        tmp_path):
    fe_id = uniq("hostile-")
    nick = uniq("hbot")
    rooms = {uniq("hr"): "#" + uniq("hc") for _ in range(3)}
    other = "#" + uniq("hother")
    room_ids = list(rooms)
    observer = Observer(ngircd.host, ngircd.port, uniq("hobs"), [*rooms.values(), other])
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=fe_id, log_level="WARNING").start()
    try:
        events = EventLog(redis_url)
        push(redis_client, *[{"type": "join", "room": r, "spec": irc_spec(ngircd, c, nick=nick)}
                             for r, c in rooms.items()])
        for r in room_ids:
            events.wait(30, type="joined", room=r)

        rng = random.Random(SEED)
        gen = HostileGenerator(rng, room_ids, next(iter(rooms.values())), other,
                               unhashable_types=UNHASHABLE_TYPES, empty_items=EMPTY_ITEMS)
        bad = [gen.make() for _ in range(BAD_ITEMS)]
        valid = [_j({"type": "say", "room": room_ids[i % 3], "text": f"valid-{i:04d}"}) for i in range(VALID_SAYS)]
        items: list[tuple[bool, bytes]] = [(False, b) for b in bad] + [(True, v) for v in valid]
        rng.shuffle(items)
        t0 = time.monotonic()
        for start in range(0, len(items), 1000):
            redis_client.rpush("control", *[raw for _, raw in items[start:start + 1000]])
        pings = [{"type": "ping", "room": r, "cmd_id": f"after-{r}"} for r in room_ids]
        push(redis_client, *pings)
        for r in room_ids:
            events.wait(60, type="pong", room=r, cmd_id=f"after-{r}")
        t_pong = time.monotonic()

        expected = {f"valid-{i:04d}": rooms[room_ids[i % 3]].lower() for i in range(VALID_SAYS)}

        def delivered() -> dict:
            return {ln.text: ln.target.lower() for ln in observer.privmsgs(sender=nick)}

        wait_until(lambda: expected.keys() <= delivered().keys(), 30, what="all valid says delivered")
        got = delivered()
        assert {t: got[t] for t in expected} == expected
        wait_until(lambda: redis_client.llen("control:dead") >= BAD_ITEMS, 30, what="all dead letters")
        time.sleep(0.3)
        dead = [ujson.loads(x) for x in redis_client.lrange("control:dead", 0, -1)]
        assert len(dead) == BAD_ITEMS
        for d in dead:
            assert d["error"]["code"] in ("bad_command", "unknown_room"), d
            assert isinstance(d["error"]["detail"], str) and d["error"]["detail"], d
            assert d["frontend"] == fe_id
        # every bad item exactly once, named by its length and digest; `raw` is the item as received,
        # cut to DEAD_RAW_LIMIT bytes, with the values of secret fields masked (PROTOCOL.md)
        by_digest = {hashlib.blake2b(b, digest_size=16).hexdigest(): b for b in bad}
        want_ids = sorted((hashlib.blake2b(b, digest_size=16).hexdigest(), len(b)) for b in bad)
        got_ids = sorted((d["raw_digest"], d["raw_bytes"]) for d in dead)
        assert got_ids == want_ids, "control:dead does not hold exactly the bad items as received"
        for d in dead:
            item = by_digest[d["raw_digest"]]
            shown = item[:DEAD_RAW_LIMIT].decode("utf-8", "replace")
            assert d.get("raw_truncated", False) == (len(item) > DEAD_RAW_LIMIT), d
            if SECRET_NAMES.search(shown):
                assert '"***"' in d["raw"], d
            else:
                assert d["raw"] == shown, d
        # only the valid says were sent, nothing else from the bot, never to another channel
        bot_lines = observer.from_nick(nick)
        assert {ln.cmd for ln in bot_lines} <= {"JOIN", "PRIVMSG"}
        assert not [ln for ln in bot_lines if ln.target.lower() == other.lower()]
        assert len([ln for ln in bot_lines if ln.cmd == "PRIVMSG"]) == VALID_SAYS
        try:
            wait_until(lambda: held(redis_client, fe_id) == 0, 10, what="an empty in-flight ledger")
        except AssertionError:
            left = held_items(redis_client, fe_id)
            raise AssertionError(f"{len(left)} items never left the in-flight ledger, "
                                 f"e.g. {left[:5]}") from None
        assert redis_client.llen("control") == 0
        # and it still answers
        push(redis_client, {"type": "ping", "room": room_ids[0], "cmd_id": "final"})
        events.wait(10, type="pong", room=room_ids[0], cmd_id="final")
        assert proc_alive(proc.proc), log_tail(log_path)
        codes: dict[str, int] = {}
        for d in dead:
            codes[d["error"]["code"]] = codes.get(d["error"]["code"], 0) + 1
        report("hostile_control", bad=BAD_ITEMS, valid=VALID_SAYS, dead_by_code=codes,
               push_to_pongs_s=round(t_pong - t0, 2))
    finally:
        stop_process(proc)
        observer.close()


def test_a_type_that_is_not_hashable_does_not_stop_the_dispatcher(redis_url, redis_client, ngircd, tmp_path):
    room, chan = uniq("ur"), "#" + uniq("uc")
    observer = Observer(ngircd.host, ngircd.port, uniq("uobs"), [chan])
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("unhash-")).start()
    try:
        events = EventLog(redis_url)
        push(redis_client, {"type": "join", "room": room, "spec": irc_spec(ngircd, chan, nick=uniq("ub"))})
        events.wait(30, type="joined", room=room)
        bad = [{"type": ["say"], "room": room, "text": "x"}, {"type": {"say": 1}, "room": room, "text": "x"},
               {"type": [], "room": room}, {"type": {}, "room": room}]
        push(redis_client, *bad, {"type": "say", "room": room, "text": "after-the-bad-ones"},
             {"type": "ping", "room": room, "cmd_id": "alive"})
        events.wait(8, type="pong", room=room, cmd_id="alive")
        observer.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "after-the-bad-ones", 10, what="say")
        wait_until(lambda: redis_client.llen("control:dead") == len(bad), 10, what="4 dead letters")
        assert proc_alive(proc.proc)
    finally:
        stop_process(proc)
        observer.close()


def test_an_empty_item_leaves_the_inflight_list(redis_url, redis_client, ngircd, tmp_path):
    fe_id = uniq("empty-")
    log_path = str(tmp_path / "frontend.log")
    proc = FrontendProcess(redis_url, log_path, frontend_id=fe_id).start()
    try:
        redis_client.rpush("control", b"", b"", b"not json")
        wait_until(lambda: redis_client.llen("control:dead") == 3, 15, what="3 dead letters")
        wait_until(lambda: held(redis_client, fe_id) == 0, 5,
                   what="an empty in-flight list")
    finally:
        stop_process(proc)


def test_control_of_the_wrong_type_is_reported_and_the_dispatcher_resumes(redis_url, redis_client, ngircd,
                                                                          tmp_path):
    """`control` that is not a list makes both replies of the pop (BLMOVE and the drain script, sent
    in one write) an error: the dispatcher logs it, backs off, and once `control` is a list again the
    commands flow, in order."""
    prefix = uniq("wt") + ":"
    room, chan = uniq("wr"), "#" + uniq("wc")
    log_path = str(tmp_path / "frontend.log")
    redis_client.set(prefix + "control", "not a list")
    proc = FrontendProcess(redis_url, log_path, frontend_id=uniq("wrongtype-"), key_prefix=prefix).start()
    try:
        wait_until(lambda: "WRONGTYPE" in log_tail(log_path, 4000), 15, what="the error in the log")
        assert proc_alive(proc.proc)
        redis_client.delete(prefix + "control")
        events = EventLog(redis_url, key=prefix + "messages")
        push(redis_client, {"type": "join", "room": room, "spec": irc_spec(ngircd, chan, nick=uniq("wb"))},
             key=prefix + "control")
        events.wait(30, type="joined", room=room)
        push(redis_client, *[{"type": "ping", "room": room, "cmd_id": i} for i in range(50)],
             key=prefix + "control")
        assert [events.wait(10, type="pong", room=room)["cmd_id"] for _ in range(50)] == list(range(50))
    finally:
        stop_process(proc)
        for key in redis_client.scan_iter(match=prefix + "*"):
            redis_client.delete(key)
