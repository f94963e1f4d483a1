"""The fail-over scenario both HA test files run: traffic both ways through a real frontend process and a
real ``backend_sdk`` process, a kill of the Redis primary in the middle, and what it cost.

- Outbound: a producer pushes ``say`` commands (chunks of 100, unique texts, over ``rooms`` rooms) with
  its own ``DirectLink`` that WAITs for one replica, so a chunk is *confirmed* once it is on a replica;
  a chunk whose round trip failed is *unconfirmed* (it may or may not be in Redis) and the next chunk
  has new texts. It goes on until ``says`` texts are confirmed. An observer in every channel receives
  what the bot sends.
- Inbound: the observer writes ``lines`` lines into the channels (100 every 0.1 s); the frontend turns
  each into a ``message`` event, the backend process (``backend_proc.py``) records each it handles in a
  file.
- Once a third of both flowed, ``kill()`` SIGKILLs the primary; a greenlet waits for the promotion
  (``promoted()``) and then restarts the killed node as a replica (``heal()``), as an operator's
  supervisor would.
- Then everything settles (every confirmed say arrived, nothing left in the frontend's ledger and
  lists, no arrival for 1.5 s) and the figures are returned.
"""

from __future__ import annotations

import os
import sys
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import gevent
import redis

from frontend.config import load_settings
from frontend.redis_conn import DirectLink, shared_client
from tests.support.frontend import FrontendProcess, irc_spec, proc_alive
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.report import count_dups, report
from tests.support.servers import log_tail
from tests.support.waiting import wait_until
import ujson

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 100
TICK = 0.1


def run_failover(name: str, *, url: str, prefix: str, ngircd: Any, workdir: Path, wait_replicas: int,
                 kill: Callable[[], Any], promoted: Callable[[], float], heal: Callable[[], Any],
                 says: int = 5000, lines: int = 5000, rooms: int = 10) -> dict[str, Any]:
    fid = uniq("ha-fe-")
    nick = uniq("habot")
    channels = {f"r{i}": "#" + uniq(f"ha{i}-") for i in range(rooms)}
    room_ids = list(channels)
    settings = load_settings(env={}, overrides={"redis_url": url, "key_prefix": prefix, "frontend_id": "ha-producer",
                                                "redis_wait_replicas": 1, "redis_wait_timeout": 0.5})
    client = shared_client(settings)
    producer_link = DirectLink(settings, name="producer")
    observer = Observer(ngircd.host, ngircd.port, uniq("haobs"), channels.values())
    record_path = workdir / "records.txt"
    record_path.touch()
    fe_log = str(workdir / "frontend.log")
    fe = FrontendProcess(url, fe_log, frontend_id=fid, key_prefix=prefix, redis_wait_replicas=wait_replicas,
                         recovery_interval=1.0).start()
    backend = subprocess.Popen([sys.executable, "-m", "tests.ha.backend_proc", url, prefix, str(record_path)],
                               cwd=ROOT, stdout=open(workdir / "backend.log", "ab"), stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    control = prefix + "control"
    try:
        client.rpush(control, *[ujson.dumps({"type": "join", "room": r, "spec": irc_spec(ngircd, c, nick=nick)})
                                for r, c in channels.items()])
        wait_until(lambda: {ln.target.lower() for ln in observer.from_nick(nick) if ln.cmd == "JOIN"}
                   >= {c.lower() for c in channels.values()}, 30, what="the bot in every channel")
        wait_until(lambda: client.exists(prefix + "messages:consumer:ha-recorder"), 20, what="the backend running")
        base = len(observer.lines)

        # ---------------------------------------------------------------------------- traffic
        confirmed: list[str] = []
        unconfirmed: list[str] = []
        attempted_at: dict[str, float] = {}  # chunk stem -> monotonic time its round trip started
        sent_at: list[float] = []  # per inbound line index: monotonic time it was written
        clock = {"kill": None, "kill_unix": None, "promoted": None, "healed": None}

        def produce() -> None:
            chunk_no = 0
            while len(confirmed) < says:
                stem = f"o{chunk_no:04d}"
                chunk_no += 1
                texts = [f"{stem}-{j:03d}" for j in range(CHUNK)]
                items = [ujson.dumps({"type": "say", "room": room_ids[j % rooms], "text": t})
                         for j, t in enumerate(texts)]
                attempted_at[stem] = time.monotonic()
                try:
                    producer_link.round_trip([("RPUSH", control, *items)])
                    confirmed.extend(texts)
                except redis.RedisError:
                    unconfirmed.extend(texts)
                    gevent.sleep(0.3)
                    continue
                gevent.sleep(TICK)

        def speak() -> None:
            room_channels = list(channels.values())
            for start in range(0, lines, CHUNK):
                batch = []
                for i in range(start, min(lines, start + CHUNK)):
                    batch.append(f"PRIVMSG {room_channels[i % rooms]} :i{i:05d}".encode())
                    sent_at.append(time.monotonic())
                observer.send_many(batch)
                gevent.sleep(TICK)

        def recover() -> None:
            clock["promoted"] = promoted()
            heal()
            clock["healed"] = time.monotonic()

        workers = [gevent.spawn(produce), gevent.spawn(speak)]
        wait_until(lambda: len(confirmed) >= says // 3 and len(sent_at) >= lines // 3, 30, step=0.01,
                   what="a third of the traffic")
        kill()
        clock["kill"], clock["kill_unix"] = time.monotonic(), time.time()
        healer = gevent.spawn(recover)
        gevent.joinall(workers + [healer], timeout=90, raise_error=True)
        assert all(w.dead for w in workers + [healer]), "the traffic did not finish"

        # ---------------------------------------------------------------------------- settling
        def arrived() -> list[Any]:
            return [ln for ln in observer.lines[base:] if ln.cmd == "PRIVMSG" and ln.nick.lower() == nick.lower()]

        def records() -> list[tuple[float, str]]:
            with open(record_path, encoding="utf-8") as fh:
                return [(float(t), text) for t, _, text in (line.rstrip("\n").partition(" ") for line in fh) if text]

        wanted = set(confirmed)
        wait_until(lambda: wanted <= {ln.text for ln in arrived()}, 60, step=0.2, what="every confirmed say")
        ledger = f"{prefix}control:ledger:{fid}"
        lists = [control, prefix + "control:routing", prefix + "messages", f"{prefix}control:inbox:{fid}"]
        last = {"n": -1, "at": time.monotonic()}

        def quiet() -> bool:
            n = len(arrived()) + len(records())
            if n != last["n"]:
                last.update(n=n, at=time.monotonic())
                return False
            try:
                empty = client.hlen(ledger) == 0 and all(client.llen(key) == 0 for key in lists)
            except redis.RedisError:
                return False
            return empty and time.monotonic() - last["at"] >= 1.5

        wait_until(quiet, 40, step=0.2, what="the frontend and the backend idle")
        out = arrived()
        got = records()
        out_counts, out_dups = count_dups(ln.text for ln in out)
        in_counts, in_dups = count_dups(text for _, text in got)
        inbound = {f"i{i:05d}" for i in range(lines)}
        kill_at = clock["kill"]
        after_kill_out = [ln.t for ln in out if attempted_at.get(ln.text.partition("-")[0], 0) > kill_at]
        after_kill_in = [t for t, text in got if text in inbound and sent_at[int(text[1:])] > kill_at]
        figures = {
            "wait_replicas": wait_replicas,
            "failover_s": round(clock["promoted"], 2),
            "replica_back_s": round(clock["healed"] - kill_at, 2),
            "says_confirmed": len(confirmed), "says_unconfirmed": len(unconfirmed),
            "says_lost": len(wanted - out_counts.keys()),
            "says_unconfirmed_arrived": len(set(unconfirmed) & out_counts.keys()),
            "says_duplicated": out_dups,
            "lines_sent": lines, "lines_lost": len(inbound - in_counts.keys()), "lines_duplicated": in_dups,
            "outbound_resumed_s": round(min(after_kill_out) - kill_at, 2) if after_kill_out else None,
            "inbound_resumed_s": round(min(after_kill_in) - clock["kill_unix"], 2) if after_kill_in else None,
            "frontend_alive": proc_alive(fe.proc), "backend_alive": backend.poll() is None,
            "loops_restarted": fe.log().count("restarting"),
        }
        report(name, **figures)
        figures.update(lost_sample=sorted(wanted - out_counts.keys())[:5],
                       lines_lost_sample=sorted(inbound - in_counts.keys())[:5], frontend_log=fe_log)
        return figures
    except BaseException:
        print(log_tail(fe_log, 60))
        raise
    finally:
        try:
            if proc_alive(fe.proc):
                fe.terminate(timeout=10)
        except Exception:
            fe.kill()
        if backend.poll() is None:
            backend.terminate()
            try:
                backend.wait(10)
            except subprocess.TimeoutExpired:
                backend.kill()
                backend.wait(5)
        observer.close()
        producer_link.close()
        client.close()
