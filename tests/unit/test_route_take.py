"""What one router step (``frontend/lua/route.lua``) takes from ``control``, run on a real redis-server.

The script reads ``control``'s head in chunks (one LRANGE per 32 items, one LTRIM at the end, not an
LPOP per item) and routes each item by its room (``placement.lua``'s ``route_one``, which checks a room
id's plausibility once per room and step). These pin what that must not change: at most ``most``
items, each taken while fewer than ``budget`` bytes came before it, in order; what is not taken stays
at the head of ``control`` in order, also what a chunk read past the limits; every item goes to its
room's holder, and what nobody can route (not JSON, no room, a room id that is not plausible, too
big) to the routing frontend itself, to be refused there, however often its room repeats.
"""

from __future__ import annotations

import time

import ujson

from frontend import scripts
from frontend.keys import Keys

KEYS = Keys()
ME, PEER = "fe-1", "fe-2"
ROUTE = scripts.load("route")


def _fleet(r, rooms_of: dict[str, list[str]]) -> None:
    r.zadd(KEYS.leases, {fid: int(time.time() * 1000) + 600_000 for fid in rooms_of})
    for fid, rooms in rooms_of.items():
        if rooms:
            r.hset(KEYS.holder, mapping={room: fid for room in rooms})
            r.sadd(KEYS.held(fid), *rooms)


def _step(r, most: int, budget: int, max_item: int = 65536) -> list[bytes]:
    """One router step as the router sends it; the items that entered ME's ledger, in order."""
    pipe = r.pipeline(transaction=False)
    pipe.blmove(KEYS.control, KEYS.routing, 1, "LEFT", "RIGHT")
    pipe.evalsha(ROUTE.sha, 6, KEYS.control, KEYS.routing, KEYS.inbox(ME), KEYS.landing(ME), KEYS.ledger(ME),
                 KEYS.ledger_seq(ME), KEYS.prefix, ME, most, budget, max_item, 100_000, "")
    r.script_load(ROUTE.text)
    _, reply = pipe.execute()
    seqs, items = reply[0::2], reply[1::2]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    return items


def _say(i: int, room: str = "r1", pad: int = 0) -> bytes:
    return ujson.dumps({"type": "say", "room": room, "text": f"line {i}" + "x" * pad}).encode()


def test_at_most_most_items_across_chunks_the_rest_stays_in_order(redis_client):
    _fleet(redis_client, {ME: ["r1"]})
    items = [_say(i) for i in range(70)]
    redis_client.rpush(KEYS.control, *items)
    # the BLMOVE takes the first, the script 40 more: 41, across the 32-item chunks
    assert _step(redis_client, most=40, budget=1 << 22) == items[:41]
    assert redis_client.lrange(KEYS.control, 0, -1) == items[41:]
    assert _step(redis_client, most=100, budget=1 << 22) == items[41:]
    assert not redis_client.exists(KEYS.control)


def test_each_item_is_taken_while_fewer_than_budget_bytes_came_before_it(redis_client):
    _fleet(redis_client, {ME: ["r1"]})
    items = [_say(i, pad=100 - len(_say(i))) for i in range(60)]
    assert {len(item) for item in items} == {100}
    redis_client.rpush(KEYS.control, *items)
    # the script's own take: 1,000 bytes before the 11th, 1,100 before the 12th (the budget is 1,050)
    assert _step(redis_client, most=500, budget=1050) == items[:12]
    assert redis_client.lrange(KEYS.control, 0, -1) == items[12:]
    assert _step(redis_client, most=500, budget=1) == items[12:14]  # one before the budget was reached
    assert _step(redis_client, most=0, budget=1 << 22) == items[14:15]  # the BLMOVE's item only
    assert redis_client.lrange(KEYS.control, 0, -1) == items[15:]


def test_items_go_to_their_rooms_holders_in_order(redis_client):
    _fleet(redis_client, {ME: ["mine"], PEER: ["theirs"]})
    items = [_say(i, room="mine" if i % 3 else "theirs") for i in range(50)]
    redis_client.rpush(KEYS.control, *items)
    assert _step(redis_client, most=500, budget=1 << 22) == [item for item in items if b'"mine"' in item]
    assert redis_client.lrange(KEYS.inbox(PEER), 0, -1) == [item for item in items if b'"theirs"' in item]


def test_what_nobody_can_route_comes_to_the_router_however_often_its_room_repeats(redis_client):
    _fleet(redis_client, {ME: [], PEER: ["theirs"]})
    hostile = [b"not json", b'{"type":"say","room":5,"text":"x"}', b'{"type":"say","text":"no room"}',
               b'["room", "theirs"]', _say(0, room="a b"), _say(1, room="a b"), _say(2, room="bad\x01"),
               _say(3, room="\xed\xa0\x80"), _say(4, room=""), _say(5, room="x" * 801),
               _say(6, room="theirs", pad=70_000), b'{"type":"say","room":null,"text":"x"}']
    good = _say(7, room="theirs")
    redis_client.rpush(KEYS.control, *hostile, good, *hostile)
    assert _step(redis_client, most=500, budget=1 << 22) == hostile + hostile
    assert redis_client.lrange(KEYS.inbox(PEER), 0, -1) == [good]


INTAKE = scripts.load("intake")


def test_the_intake_takes_its_inbox_by_the_same_rules(redis_client):
    """``intake.lua`` reads a frontend's inbox with the same chunked take (``take_head``)."""
    items = [_say(i, pad=100 - len(_say(i))) for i in range(80)]
    redis_client.rpush(KEYS.inbox(ME), *items)

    def intake(most: int, budget: int) -> list[bytes]:
        pipe = redis_client.pipeline(transaction=False)
        pipe.blmove(KEYS.inbox(ME), KEYS.landing(ME), 1, "LEFT", "RIGHT")
        pipe.evalsha(INTAKE.sha, 4, KEYS.inbox(ME), KEYS.landing(ME), KEYS.ledger(ME), KEYS.ledger_seq(ME),
                     KEYS.prefix, most, budget, 100_000)
        redis_client.script_load(INTAKE.text)
        return pipe.execute()[1][1::2]

    assert intake(most=40, budget=1 << 22) == items[:41]  # the landed item, then 40 across the chunks
    # the landed item's 100 bytes count: 100 + 9 * 100 before the 10th taken, 1,000 before the 11th
    assert intake(most=500, budget=1000) == items[41:51]
    assert redis_client.lrange(KEYS.inbox(ME), 0, -1) == items[51:]
    assert not redis_client.exists(KEYS.landing(ME))
    assert intake(most=500, budget=1 << 22) == items[51:]
    assert not redis_client.exists(KEYS.inbox(ME))
