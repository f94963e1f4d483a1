"""Redis's time for one router step (``frontend/lua/route.lua``), by the number of commands it takes.

    .venv/bin/python -m tests.bench.route_cost [--rooms 100] [--sizes 500,2000] [--script PATH]

A redis-server of its own (free loopback port, temp dir) holds what a running fleet of one frontend
holds: its lease, the holder of every room (``--rooms``, all held by it) and an empty ledger. For each
step size N, ``control`` gets N ``say`` commands spread over the rooms (as the benchmark's generator
writes them), and the router's BLMOVE + ``route.lua`` run as the router sends them. Redis's own time
for the script is read from its ``INFO commandstats`` (``usec`` of ``evalsha``): what the step holds
Redis for, during which it serves no other client. Best and median of 20 steps per size.

``--script`` and ``--placement`` run other versions of ``route.lua`` and of the library it includes (files)
in their place, for a before/after.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import redis
import ujson

from frontend import scripts
from frontend.keys import Keys
from tests.bench.servers import RedisServer

STEPS = 20


def _evalsha_usec(r: redis.Redis) -> tuple[int, int]:
    stats = r.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def measure(r: redis.Redis, source: str, rooms: int, size: int, keys: Keys, me: str) -> list[float]:
    sha = r.script_load(source)
    ledger, seq = keys.ledger(me), keys.ledger_seq(me)
    out = []
    for step in range(STEPS):
        items = [ujson.dumps({"type": "say", "room": f"r{(step * size + i) % rooms}", "text": f"bench:{i} " + "x" * 60})
                 for i in range(size)]
        r.rpush(keys.control, *items)
        calls0, usec0 = _evalsha_usec(r)
        pipe = r.pipeline(transaction=False)
        pipe.blmove(keys.control, keys.routing, 1, "LEFT", "RIGHT")
        pipe.evalsha(sha, 6, keys.control, keys.routing, keys.inbox(me), keys.landing(me), ledger, seq,
                     keys.prefix, me, size, 4 * 1024 * 1024, 65536, 10 * size + 10, "")
        _, reply = pipe.execute()
        calls1, usec1 = _evalsha_usec(r)
        assert calls1 - calls0 == 1 and len(reply) == 2 * size, (calls1 - calls0, len(reply))
        out.append((usec1 - usec0) / 1000)
        r.delete(ledger)  # acknowledged: the next step starts from an empty ledger again
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--sizes", default="500,2000")
    parser.add_argument("--script", help="a route.lua file to run instead of the package's")
    parser.add_argument("--placement", help="a placement.lua file to include instead of the package's")
    args = parser.parse_args()
    source = scripts.load("route").text
    if args.script or args.placement:  # assembled as scripts.load does: the placement library in front
        library = open(args.placement).read() if args.placement else scripts.load_source("placement")
        route = open(args.script).read() if args.script else scripts.load_source("route")
        source = library + "\n" + route
    workdir = tempfile.mkdtemp(prefix="greenroom-route-cost-")
    server = RedisServer(workdir).start()
    try:
        r = redis.Redis.from_url(server.url)
        keys, me = Keys(), "fe-1"
        r.zadd(keys.leases, {me: int(time.time() * 1000) + 3_600_000})
        r.hset(keys.holder, mapping={f"r{i}": me for i in range(args.rooms)})
        r.sadd(keys.held(me), *[f"r{i}" for i in range(args.rooms)])
        print(f"route.lua, {args.rooms} rooms held by one frontend: Redis's time per step (ms)")
        for size in (int(s) for s in args.sizes.split(",")):
            times = measure(r, source, args.rooms, size, keys, me)
            print(f"  {size:5d} commands: best {min(times):6.2f}, median {statistics.median(times):6.2f} ms"
                  f"  ({statistics.median(times) / size * 1000:5.2f} µs a command)")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
