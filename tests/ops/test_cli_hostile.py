"""What the CLI prints from Redis is hostile: escaped for the terminal (``--json`` too), secrets masked
(also in dead letters of older versions), huge items bounded; requeue refuses cut or masked items."""

import json
import re
import time

import pytest

from frontend.protocol import dead_letter
from tests.ops.helpers import cli, greenroom

pytestmark = pytest.mark.e2e
#: what must never reach the terminal raw: C0 (but the line feeds of the output itself), DEL, C1,
#: the line and paragraph separators
UNSAFE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
ESC_TITLE = "\x1b]0;pwned\x07"
CSI = "\x9b6n"


def _hostile_registry(redis_client):
    room = "r\x1b[2J" + ESC_TITLE  # valid JSON, as a writer other than the daemon may leave it
    redis_client.hset("rooms", mapping={
        room: json.dumps({"protocol": "irc", "server": "h\x1b[31m", "nick": "n", "channel": "#c" + CSI + "\u2028",
                          "password": "hunter2"}),
        "surrogate": '{"protocol":"xmpp","muc":"m\\ud800@x","nick":"n","jid":"a@b","password":"pw"}'})
    redis_client.hset("rooms:state", mapping={
        room: json.dumps({"state": "backoff\x07", "since": time.time(), "attempts": 3, "error": "\x1b[6n" + "\x85"}),
        "surrogate": json.dumps({"state": ["not", "a", "string"], "attempts": "many", "since": "yesterday"})})
    redis_client.hset("frontends:evil\x1b[1m", mapping={"host": "\x1b]2;x\x07", "pid": "1", "version": "\x9b1m",
                                                         "started": "1e999", "rooms": "nan",
                                                         "rooms_by_state": '{"joined\\u001b[5m":1}',
                                                         "last_error": "boom\r\x1b[Kforged"})
    redis_client.expire("frontends:evil\x1b[1m", 60)
    # several frontends: hostile ids in the leases and as holders (two live ones, so a rebalance plans a move)
    sec, usec = redis_client.time()
    now = sec * 1000 + usec // 1000
    redis_client.zadd("fleet:leases", {"evil\x1b[1m": now + 60000, "fe\x9b2J\u2028": now + 60000})
    redis_client.hset("rooms:holder", mapping={name: "evil\x1b[1m" for name in (room, "surrogate", "s-3", "s-4")})
    redis_client.sadd("rooms:held:evil\x1b[1m", room, "surrogate", "s-3", "s-4")
    redis_client.hset("rooms:moving", "surrogate", "fe\x9b2J\u2028")
    redis_client.rpush("control:dead", json.dumps({"error": {"code": "bad\x1b[0m", "detail": "d\x07\nforged"},
                                                   "raw": "x" + ESC_TITLE + CSI, "frontend": "f\x1b", "ts": 1.0}))
    redis_client.rpush("control:dead", b'{"error":{"code":"bad_command","detail":"\\ud800"},"raw":"\\udfff\\u2029",'
                                       b'"ts":"soon"}')


def test_every_cli_output_escapes_control_characters(redis_url, redis_client):
    _hostile_registry(redis_client)
    outputs = {}
    for args in (["rooms"], ["rooms", "--json"], ["status"], ["status", "--json"], ["dead", "list"],
                 ["dead", "list", "--json"], ["frontends"], ["frontends", "--json"], ["rebalance", "--dry-run"],
                 ["rebalance", "--dry-run", "--json"], ["rooms", "--frontend", "evil\x1b[1m"],
                 ["drain", "fe\x9b2J\u2028", "--wait", "0.1"]):
        result = outputs[" ".join(args)] = greenroom(*args, "--redis-url", redis_url)
        assert result.returncode in (0, 1) and "Traceback" not in result.stderr, (args, result.stderr)
        assert not UNSAFE.search(result.stdout), (args, UNSAFE.search(result.stdout), result.stdout)
        assert not UNSAFE.search(result.stderr), (args, result.stderr)
        if "--json" in args:
            data = json.loads(result.stdout)  # still JSON, and the same strings once decoded
            blob = json.dumps(data)
            assert "hunter2" not in blob and '"pw"' not in blob
        else:
            assert "\\x1b" in result.stdout, args
    rooms = json.loads(outputs["rooms --json"].stdout)["rooms"]
    hostile = next(r for r in rooms if r["room"].startswith("r\x1b"))
    assert hostile["room"] == "r\x1b[2J" + ESC_TITLE and hostile["where"] == "#c\x9b6n\u2028@h\x1b[31m:"
    assert hostile["spec"]["password"] == "***" and hostile["error"] == "\x1b[6n\x85"
    dead = json.loads(outputs["dead list --json"].stdout)["dead"]
    assert dead[0]["raw"] == "x" + ESC_TITLE + CSI and dead[1]["raw"] == "\ufffd\u2029"
    table = outputs["status"].stdout
    assert "boom\\r\\x1b[Kforged" in table and "evil\\x1b[1m" in table
    held = outputs["rooms --frontend evil\x1b[1m"].stdout
    assert "r\\x1b[2J" in held and "evil\\x1b[1m" in held and "-> fe\\x9b2J\\u2028 (moving)" in held
    drained = outputs["drain fe\x9b2J\u2028 --wait 0.1"]
    assert "frontend fe\\x9b2J\\u2028 drains" in drained.stdout and "evil\\x1b[1m" in drained.stdout
    plan = json.loads(outputs["rebalance --dry-run --json"].stdout)
    assert [(m["room"], m["from"]) for m in plan["moves"]] == [("r\x1b[2J" + ESC_TITLE, "evil\x1b[1m")]


def test_dead_list_masks_the_secrets_of_dead_letters_from_older_versions(redis_url, redis_client):
    raw = json.dumps({"type": "join", "room": "r1", "spec": {
        "protocol": "irc", "server": "h", "nick": "n", "channel": "#c", "password": "clear-pass",
        "key": "clear-key", "sasl": {"username": "u", "password": "clear-sasl"}}})
    redis_client.rpush("control:dead", json.dumps({"error": {"code": "bad_command", "detail": "x"}, "raw": raw,
                                                   "frontend": "old", "ts": 1.0}))
    redis_client.rpush("control:dead", json.dumps({
        "error": {"code": "bad_command", "detail": "x"}, "frontend": "old", "ts": 1.0,
        "raw": '{"type":"join","room":"r2","spec":{"room_password":"clear-room","pass\\u0077ord":"escaped"}}'}))
    redis_client.rpush("control:dead", json.dumps({"error": {"code": "bad_command", "detail": "x"}, "frontend": "old",
                                                   "raw": '{"type":"join","spec":{"password":"not json, cut'}))
    for args in (["dead", "list"], ["dead", "list", "--json"]):
        out = cli(*args, "--redis-url", redis_url).stdout
        for secret in ("clear-pass", "clear-key", "clear-sasl", "clear-room", "escaped", "not json, cut"):
            assert secret not in out, (args, secret)
    rows = json.loads(cli("dead", "list", "--json", "--redis-url", redis_url).stdout)["dead"]
    spec = json.loads(rows[0]["raw"])["spec"]
    assert spec["password"] == spec["key"] == spec["sasl"]["password"] == "***" and spec["sasl"]["username"] == "u"
    # the item in Redis is what was received: requeue pushes that, not the masked view
    assert redis_client.lindex("control:dead", 0).count(b"clear-pass") == 1


def test_requeue_refuses_cut_or_masked_dead_letters_unless_forced(redis_url, redis_client):
    good = json.dumps({"type": "say", "room": "r1", "text": "hello"}).encode()
    masked = json.dumps({"type": "join", "room": "r2", "spec": {"protocol": "irc", "server": "h", "nick": "n",
                                                                 "channel": "#c", "password": "secret"}}).encode()
    cut = json.dumps({"type": "say", "room": "r3", "text": "y" * 20000}).encode()
    for raw, code in ((good, "unknown_room"), (masked, "bad_command"), (cut, "bad_command")):
        redis_client.rpush("control:dead", dead_letter(raw, code, "x", "fe"))
    rows = json.loads(cli("dead", "list", "--json", "--redis-url", redis_url).stdout)["dead"]
    assert [r["flags"] for r in rows] == [[], ["masked"], ["cut"]]
    assert rows[0]["requeue_refused"] is None and "masked" in rows[1]["requeue_refused"]
    assert "cut to 4096 of" in rows[2]["requeue_refused"]
    table = cli("dead", "list", "--redis-url", redis_url).stdout
    assert "[masked]" in table and "[cut]" in table and "2 of them cannot be requeued" in table

    result = cli("dead", "requeue", "--all", "--redis-url", redis_url)
    assert result.returncode == 1 and "requeued 1 dead letters" in result.stdout
    assert result.stderr.count("refused to requeue") == 2 and "its secrets were masked" in result.stderr
    assert "would push a broken command" in result.stderr and "--force" in result.stderr
    assert redis_client.lrange("control", 0, -1) == [good] and redis_client.llen("control:dead") == 2

    result = cli("dead", "requeue", rows[1]["id"], "--force", "--redis-url", redis_url)
    assert result.returncode == 0 and "requeued 1" in result.stdout
    assert json.loads(redis_client.rpop("control"))["spec"]["password"] == "***"  # what the operator forced


def test_huge_dead_letters_are_listed_and_purged_without_reading_them_whole(redis_url, redis_client):
    big = b'{"error":{"code":"bad_command","detail":"huge"},"raw":"' + b"z" * (6 << 20) + b'"}'
    redis_client.rpush("control:dead", big, big + b" ", dead_letter(b'{"type":"say"}', "bad_command", "x", "fe"))
    result = cli("dead", "list", "--json", "--redis-url", redis_url)
    assert result.returncode == 0 and len(result.stdout) < 20_000, len(result.stdout)
    rows = json.loads(result.stdout)["dead"]
    assert [r["code"] for r in rows] == ["bad_command"] * 3 and rows[0]["bytes"] == len(big)
    assert "too big to show" in rows[0]["raw"] and rows[0]["flags"] == ["big"] and rows[0]["id"] != rows[1]["id"]
    refused = cli("dead", "requeue", rows[0]["id"], "--redis-url", redis_url)
    assert refused.returncode == 1 and "too big to check" in refused.stderr and redis_client.llen("control") == 0
    assert "purged 1" in cli("dead", "purge", rows[1]["id"], "--redis-url", redis_url).stdout
    assert redis_client.lrange("control:dead", 0, -1)[0] == big and redis_client.llen("control:dead") == 2
