"""CPU of one ``DirectLink`` round trip (``frontend/redis_conn.py``), on its ``Wire`` and on redis-py's path.

    .venv/bin/python -m tests.bench.redis_wire_cost

The batch is the router's: a BLMOVE that finds an item (``control`` is filled first, so nothing
blocks) and an EVALSHA with the route script's six keys and seven arguments (a stand-in script that
returns a few of them), against a redis-server of its own on a free loopback port in a temp dir. At a
paced load every line takes round trips like this one (the router's, the outgoing dispatcher's), so
this is the part of a line's CPU the Redis client costs. ``redis-py`` is the same link with its
``Wire`` turned off (``_wire_capable = False``: what Sentinel and Cluster connections use).

Process time of this process (the server's work is not in it), best of 5 runs of 3,000 round trips.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402

from frontend.config import Settings  # noqa: E402
from frontend.redis_conn import DirectLink  # noqa: E402
from tests.bench.servers import RedisServer  # noqa: E402

ROUNDS = 3000


def per_round_trip(link: DirectLink, commands: list[tuple], rounds: int = ROUNDS) -> float:
    t0 = time.process_time()
    for _ in range(rounds):
        link.round_trip(commands)
    return (time.process_time() - t0) / rounds * 1e6


def main() -> None:
    workdir = tempfile.mkdtemp(prefix="greenroom-wire-cost-")
    server = RedisServer(workdir).start()
    try:
        r = redis.Redis.from_url(server.url)
        sha = r.script_load("return {KEYS[1], ARGV[1], ARGV[2]}")
        commands = [("BLMOVE", "control", "control:routing", "LEFT", "RIGHT", 1.0),
                    ("EVALSHA", sha, 6, "control", "control:routing", "inbox", "landing", "ledger", "seq",
                     "gr:", "fe-1", 500, 4194304, 65536, 20000, "")]
        r.rpush("control", *([b"x" * 100] * (2 * 5 * 2 * ROUNDS + 10)))
        results: dict[str, list[float]] = {"Wire": [], "redis-py": []}
        links = {}
        for name in results:
            link = DirectLink(Settings(redis_url=server.url), name=name)
            link._wire_capable = name == "Wire"
            link.round_trip(commands)
            links[name] = link
        for _ in range(5):
            for name, link in links.items():
                results[name].append(per_round_trip(link, commands))
        for name, runs in results.items():
            print(f"{name:10s} {min(runs):7.1f} µs CPU per round trip (runs: {', '.join(f'{v:.1f}' for v in runs)})")
        for link in links.values():
            link.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
