"""Memory per room, broken down: an in-process Frontend against its own redis-server + ngircd on loopback.

    .venv/bin/python -m tests.bench.memory_probe --rooms 1000             # own connections
    .venv/bin/python -m tests.bench.memory_probe --rooms 10000 --nicks 10  # shared connections
    .venv/bin/python -m tests.bench.memory_probe --rooms 1000 --trace      # + tracemalloc by file/line
    .venv/bin/python -m tests.bench.memory_probe --rooms 2000 --tls        # over TLS (InspIRCd's own)
    MEMPROBE_CODE=/path/to/other/checkout ...                              # measure another build

``--nicks 0``: every room its own connection (nick b<k>); C>0: rooms over C nicks (s<k mod C>),
``channels_per_connection`` = ceil(N/C). Prints one JSON line (RSS per room, the live greenlets added
and their saved C stacks), then the tracemalloc tables with ``--trace``. tracemalloc does not see a
greenlet's Python data stack (one 4 KB page per greenlet that ran Python code), so its total is below
the RSS figure. Not a pytest module; ngircd is fine here (no traffic is measured). ``--tls``: InspIRCd
with its TLS client port (ssl_gnutls) and a private test CA instead, each room's spec ``tls`` with
``tls_ca``.
"""
from gevent import monkey
monkey.patch_all()

import argparse
import collections
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

CODE = os.environ.get("MEMPROBE_CODE", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, CODE)
import gevent  # noqa: E402
import greenlet  # noqa: E402
import redis  # noqa: E402

from tests.support.inspircd import InspircdServer
from tests.support.servers import NgircdServer, RedisServer, kill_all
from tests.support.tls import TestPKI
from frontend.config import Settings
from frontend.app import Frontend

ap = argparse.ArgumentParser()
ap.add_argument("--rooms", type=int, required=True)
ap.add_argument("--nicks", type=int, default=0)
ap.add_argument("--trace", action="store_true")
ap.add_argument("--tls", action="store_true", help="InspIRCd's TLS port, a private CA (instead of ngircd)")
ap.add_argument("--frames", type=int, default=6)
ap.add_argument("--connect-rate", type=float, default=200.0)
ap.add_argument("--top", type=int, default=25)
ap.add_argument("--dump", default="")
args = ap.parse_args()


def rss_kb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def greenlet_census(stacks=None):
    c = collections.Counter()
    for o in gc.get_objects():
        if isinstance(o, greenlet.greenlet) and not o.dead and o:
            name = (getattr(o, "name", None) or type(o).__name__).split(" ")[0]
            c[name] += 1
            if stacks is not None:
                stacks[name] += o._stack_saved
    return dict(c)


workdir = tempfile.mkdtemp(prefix="memprobe-")
os.chmod(workdir, 0o755)
redis_srv = RedisServer(os.path.join(workdir, "redis")).start()
if args.tls:
    pki = TestPKI(os.path.join(workdir, "pki"))
    irc = InspircdServer(os.path.join(workdir, "inspircd"), tls=pki.server).start()
    tls_fields = {"tls": True, "tls_ca": pki.ca_file, "port": irc.tls_port}
else:
    irc = NgircdServer(os.path.join(workdir, "ngircd")).start()
    tls_fields = {"tls": False, "port": irc.port}
out = {"code": CODE, "rooms": args.rooms, "nicks": args.nicks, "trace": args.trace, "tls": args.tls}
try:
    per = -(-args.rooms // args.nicks) if args.nicks else 50
    settings = Settings(redis_url=redis_srv.url, frontend_id="memprobe", metrics_addr="",
                        connect_rate=args.connect_rate, channels_per_connection=per,
                        log_level="WARNING")
    fe = Frontend(settings)
    starter = gevent.spawn(fe.start)
    while not fe.registry.loaded:
        gevent.sleep(0.05)
    gevent.sleep(1.0)
    gc.collect()
    if args.trace:
        tracemalloc.start(args.frames)
    samples = []
    for _ in range(3):
        gevent.sleep(0.3)
        samples.append(rss_kb())
    rss0 = min(samples)
    snap0 = tracemalloc.take_snapshot() if args.trace else None
    traced0 = tracemalloc.get_traced_memory()[0] if args.trace else 0
    g0 = greenlet_census()

    r = redis.Redis(host=redis_srv.host, port=redis_srv.port)
    t0 = time.monotonic()
    for start in range(0, args.rooms, 1000):
        pipe = r.pipeline(transaction=False)
        for k in range(start, min(args.rooms, start + 1000)):
            nick = f"s{k % args.nicks}" if args.nicks else f"b{k}"
            spec = {"protocol": "irc", "server": irc.host, **tls_fields, "nick": nick, "channel": f"#r{k}"}
            pipe.rpush("control", json.dumps({"type": "join", "room": f"r{k}", "spec": spec}))
        pipe.execute()
    deadline = time.monotonic() + 60 + args.rooms / args.connect_rate * 1.5
    while True:
        states = collections.Counter(rm.state for rm in list(fe.rooms.values()))
        if states.get("joined", 0) >= args.rooms:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"timeout: {dict(states)}; IRC server log: {irc.log_tail(5)}")
        gevent.sleep(0.2)
    out["join_s"] = round(time.monotonic() - t0, 2)
    gevent.sleep(2.0)  # settle, as the bench does
    rss1 = rss_kb()
    out["rss_kb_before"], out["rss_kb_after"] = rss0, rss1
    out["rss_kb_per_room"] = round((rss1 - rss0) / args.rooms, 2)
    gc.collect()
    out["rss_kb_per_room_after_gc"] = round((rss_kb() - rss0) / args.rooms, 2)
    out["sessions"] = len(fe.sessions)
    stacks = collections.Counter()
    g1 = greenlet_census(stacks)
    out["c_stack_saved_B_per_greenlet"] = {k: round(stacks[k] / v) for k, v in g1.items() if v}
    out["greenlets_added"] = {k: v - g0.get(k, 0) for k, v in g1.items() if v != g0.get(k, 0)}
    out["gc_objects"] = len(gc.get_objects())
    out["live_timeouts"] = sum(1 for o in gc.get_objects() if isinstance(o, gevent.Timeout))
    print(json.dumps(out), flush=True)

    if args.trace:
        traced1 = tracemalloc.get_traced_memory()[0]
        snap1 = tracemalloc.take_snapshot()
        n = args.rooms
        print(f"\ntracemalloc: traced delta {(traced1 - traced0) / n / 1024:.2f} KB/room "
              f"(RSS delta incl. tracemalloc's own overhead {out['rss_kb_per_room']} KB/room)")
        filt = [tracemalloc.Filter(False, tracemalloc.__file__)]
        snap0f, snap1f = snap0.filter_traces(filt), snap1.filter_traces(filt)
        if args.dump:
            snap0f.dump(args.dump + ".before")
            snap1f.dump(args.dump + ".after")
        print(f"\n== top {args.top} by filename (B/room) ==")
        for st in snap1f.compare_to(snap0f, "filename")[:args.top]:
            print(f"{st.size_diff / n:9.0f} B  {st.count_diff / n:7.2f} blk  {st.traceback[0].filename}")
        print(f"\n== top {args.top} by lineno (B/room) ==")
        for st in snap1f.compare_to(snap0f, "lineno")[:args.top]:
            print(f"{st.size_diff / n:9.0f} B  {st.count_diff / n:7.2f} blk  {st.traceback[0]}")
        print(f"\n== top {args.top} by traceback ({args.frames} frames, B/room) ==")
        for st in snap1f.compare_to(snap0f, "traceback")[:args.top]:
            frames = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(st.traceback))
            print(f"{st.size_diff / n:9.0f} B  {st.count_diff / n:7.2f} blk  {frames}")
        tracemalloc.stop()

finally:
    try:
        fe.incoming.stop()
    except Exception:
        pass
    import logging
    logging.disable(logging.CRITICAL)
    irc.kill()
    redis_srv.kill()
    kill_all()
    shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.flush()
    os._exit(0)
