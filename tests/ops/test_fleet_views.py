"""`greenroom status|rooms|frontends|drain|undrain|rebalance --dry-run` on fleet keys as frontends leave
them (fleet:leases, rooms:holder, rooms:held:<id>, rooms:sharekey, rooms:moving): the states that are
hard to catch with live frontends (a dead holder not yet taken over, a room nobody holds), the checks
that refuse a drain, and the rebalance plan by weight and share group. Real Redis; the CLI in-process."""

import json

import pytest

from tests.ops.helpers import cli
from tests.support.frontend import redis_now_ms

pytestmark = pytest.mark.e2e


def _fleet(client, leases: dict[str, float], holders: dict[str, str], *, sharekeys: dict[str, str] = (),
           weights: dict[str, float] = (), rooms=None) -> None:
    """Leases as seconds from now (negative: expired); every room of ``holders`` (and ``rooms``) in `rooms`."""
    now = redis_now_ms(client)
    for fid, left in leases.items():
        client.zadd("fleet:leases", {fid: now + int(left * 1000)})
    for room in list(holders) + list(rooms or []):
        client.hset("rooms", room, json.dumps({"protocol": "irc", "server": "h", "nick": "n", "channel": "#" + room}))
    for room, fid in holders.items():
        client.hset("rooms:holder", room, fid)
        client.sadd(f"rooms:held:{fid}", room)
    for room, key in dict(sharekeys).items():
        client.hset("rooms:sharekey", room, key)
    for fid, weight in dict(weights).items():
        client.hset("fleet:weight", fid, weight)


def test_status_says_which_rooms_no_live_frontend_holds(redis_client, redis_url):
    _fleet(redis_client, {"fe-live": 30, "fe-dead": -30},
           {"r-ok": "fe-live", "r-dead": "fe-dead", "r-gone": "fe-gone", "r-moving": "fe-live"}, rooms=["r-none"])
    redis_client.hset("rooms:moving", "r-moving", "fe-dead")
    redis_client.sadd("fleet:draining", "fe-live")

    result = cli("status", "--redis-url", redis_url)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    live = next(line for line in lines if line.startswith("fe-live"))
    assert "draining" in live and " 2 " in live  # 2 rooms held
    lease = float(live.split()[2].rstrip("s"))
    assert 25 < lease <= 30
    dead = next(line for line in lines if line.startswith("fe-dead"))
    assert " dead " in dead and "(no heartbeat)" in dead
    assert "held: 3 of 5 rooms are NOT held by a live frontend; 1 moving:" in result.stdout
    assert any(line.split()[:3] == ["r-none", "no", "holder"] for line in lines)
    assert any(line.startswith("  r-dead") and "held by fe-dead, whose lease expired 30s ago" in line for line in lines)
    assert any(line.startswith("  r-gone") and "held by fe-gone, which has no lease" in line for line in lines)
    assert "r-ok " not in result.stdout

    result = cli("status", "--json", "--redis-url", redis_url)
    assert result.returncode == 3
    data = json.loads(result.stdout)
    assert data["alive"] == 1
    fes = {fe["id"]: fe for fe in data["frontends"]}
    assert fes["fe-live"]["alive"] and fes["fe-live"]["draining"] and fes["fe-live"]["held"] == 2
    assert not fes["fe-dead"]["alive"] and fes["fe-dead"]["lease_s"] < -29 and not fes["fe-dead"]["heartbeat"]
    holding = data["holding"]
    assert holding["ok"] is False and holding["rooms"] == 5 and holding["held"] == 2
    assert sorted((r["room"], r["holder"]) for r in holding["not_held"]) == [
        ("r-dead", "fe-dead"), ("r-gone", "fe-gone"), ("r-none", None)]
    assert holding["moving"] == [{"room": "r-moving", "from": "fe-live", "to": "fe-dead"}]

    # every room held again: exit 0; no frontend alive at all: exit 1
    redis_client.delete("rooms:moving")
    for room in ("r-dead", "r-gone", "r-none"):
        redis_client.hset("rooms:holder", room, "fe-live")
    assert cli("status", "--redis-url", redis_url).returncode == 0
    redis_client.zadd("fleet:leases", {"fe-live": 1})
    result = cli("status", "--redis-url", redis_url)
    assert result.returncode == 1 and "(no live frontend)" in result.stdout


def test_rooms_shows_the_holder_marked_and_filters_by_frontend(redis_client, redis_url):
    _fleet(redis_client, {"fe-a": 30, "fe-b": 30, "fe-dead": -5},
           {"r1": "fe-a", "r2": "fe-b", "r3": "fe-dead", "r4": "fe-a"}, rooms=["r5"])
    redis_client.hset("rooms:moving", "r4", "fe-b")
    out = cli("rooms", "--redis-url", redis_url).stdout
    assert "HOLDER" in out.splitlines()[0]
    row = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert row["r1"].split()[-1] == "fe-a"  # alive: no mark
    assert "fe-dead (dead)" in row["r3"]
    assert "fe-a -> fe-b (moving)" in row["r4"]
    assert "- (none)" in row["r5"]

    only = cli("rooms", "--frontend", "fe-a", "--redis-url", redis_url).stdout.splitlines()
    assert [line.split()[0] for line in only[1:-1]] == ["r1", "r4"] and only[-1] == "2 rooms"
    rows = json.loads(cli("rooms", "--json", "--frontend", "fe-dead", "--redis-url", redis_url).stdout)["rooms"]
    assert [(r["room"], r["holder"], r["holder_alive"], r["moving_to"]) for r in rows] == [("r3", "fe-dead", False, None)]

    out = cli("frontends", "--redis-url", redis_url).stdout
    assert "fe-a  alive, lease" in out and "2 rooms\n  r1 r4\n" in out
    assert "fe-dead  dead, lease -5s" in out
    assert out.rstrip().endswith("not held by a live frontend: 2 rooms\n  r3 r5")
    data = json.loads(cli("frontends", "--json", "--redis-url", redis_url).stdout)
    assert {fe["id"]: fe["rooms"] for fe in data["frontends"]} == {"fe-a": ["r1", "r4"], "fe-b": ["r2"],
                                                                   "fe-dead": ["r3"]}


def test_drain_refuses_what_would_leave_rooms_unheld(redis_client, redis_url):
    _fleet(redis_client, {"fe-a": 30, "fe-b": 30, "fe-dead": -5}, {"r1": "fe-a", "r2": "fe-b"})

    for fid, why in (("nosuch", "no frontend nosuch (live frontends: fe-a, fe-b)"),
                     ("fe-dead", "frontend fe-dead is not alive (its lease expired 5s ago)")):
        result = cli("drain", fid, "--redis-url", redis_url)
        assert result.returncode == 1 and why in result.stderr, result.stderr
    assert not redis_client.exists("fleet:draining")

    result = cli("drain", "fe-a", "--redis-url", redis_url)
    assert result.returncode == 0, result.stderr
    assert "frontend fe-a drains" in result.stdout and "its 1 rooms to fe-b" in result.stdout
    assert redis_client.smembers("fleet:draining") == {b"fe-a"}
    assert "was draining already" in cli("drain", "fe-a", "--redis-url", redis_url).stdout

    # the last frontend that takes rooms is not drained, unless forced
    result = cli("drain", "fe-b", "--redis-url", redis_url)
    assert result.returncode == 1 and "no other live frontend takes rooms" in result.stderr
    assert "would leave its 1 rooms unheld" in result.stderr and "--force" in result.stderr
    assert cli("drain", "fe-b", "--force", "--redis-url", redis_url).returncode == 0
    assert redis_client.smembers("fleet:draining") == {b"fe-a", b"fe-b"}

    result = cli("undrain", "fe-b", "--redis-url", redis_url)
    assert result.returncode == 0 and "takes new rooms again" in result.stdout
    assert "was not draining" in cli("undrain", "fe-b", "--redis-url", redis_url).stdout
    assert redis_client.smembers("fleet:draining") == {b"fe-a"}
    # --wait: fe-a still holds its room (no frontend process runs here to hand it over)
    result = cli("drain", "fe-a", "--wait", "0.5", "--redis-url", redis_url)
    assert result.returncode == 1 and "still holds 1 rooms after 0.5s" in result.stderr


def test_rebalance_plan_follows_weights_and_keeps_share_groups_whole(redis_client, redis_url):
    rooms = {f"s{i}": "fe-b" for i in range(6)} | {"g1": "fe-b", "g2": "fe-b", "g3": "fe-b"}
    _fleet(redis_client, {"fe-a": 30, "fe-b": 30, "fe-c": 30, "fe-dead": -5}, rooms,
           sharekeys={"g1": "k", "g2": "k", "g3": "k", "s0": "solo"}, weights={"fe-a": 2, "fe-b": 1, "fe-c": 1})
    redis_client.sadd("fleet:draining", "fe-c")  # draining: gets nothing

    result = cli("rebalance", "--dry-run", "--json", "--redis-url", redis_url)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True
    assert {fe["id"]: (fe["weight"], fe["rooms"], fe["after"]) for fe in plan["frontends"]} == {
        "fe-a": (2.0, 0, 6), "fe-b": (1.0, 9, 3)}
    moved = {m["room"]: (m["from"], m["to"], m["result"]) for m in plan["moves"]}
    assert set(moved.values()) == {("fe-b", "fe-a", "planned")} and len(moved) == 6
    assert {"g1", "g2", "g3"} <= set(moved)  # the group moves whole (3 rooms: the best single step)
    assert not redis_client.exists("rooms:moving") and redis_client.scard("rooms:held:fe-b") == 9

    text = cli("rebalance", "--dry-run", "--redis-url", redis_url).stdout
    assert "plan: move 6 rooms (3 of them with their share group)" in text
    assert "  g1 " in text and "fe-b -> fe-a  (share group)" in text
    assert not [line for line in text.splitlines() if line.startswith("move ")]  # a dry run moves nothing

    # at most 2 rooms: the group of 3 does not fit, two rooms alone do
    plan = json.loads(cli("rebalance", "--dry-run", "--json", "--max", "2", "--redis-url", redis_url).stdout)
    assert [m["room"] for m in plan["moves"]] == ["s0", "s1"]
    assert cli("rebalance", "--max", "0", "--redis-url", redis_url).returncode == 2

    # one frontend that takes rooms: nothing to even out
    redis_client.sadd("fleet:draining", "fe-a")
    result = cli("rebalance", "--redis-url", redis_url)
    assert result.returncode == 0 and "nothing to move: 1 live frontend takes rooms" in result.stdout
