"""Load generators and listeners, each run as its own process: ``python -m tests.bench.workers ROLE JSON``.

Protocol with the bench (tests/bench/scenarios.py, class Worker): the worker prints ``READY {json}`` once set
up, waits for ``GO`` on stdin, does its work and prints ``DONE {json}``; EOF on stdin stops it. Everything
measured uses CLOCK_MONOTONIC (time.monotonic_ns), which is the same clock in every process.

Roles
- ticker:    one registered IRC client that sends ``PONG :t`` every millisecond (InspIRCd 3 needs the
             wake-ups to finish pending reads of fast clients; see configs/inspircd.conf.in).
- sender:    chat users: ``PRIVMSG #r<k> :bench:<send ns>:<seq> <pad>`` round robin over K channels, from a
             few raw sockets, many lines per write; as fast as possible or paced (1 ms ticks).
- listener:  a client joined to the K channels that timestamps the bots' lines as they arrive.
- collector: pops ``messages`` in batches (LPOP count) and timestamps the bench lines in them.
- pusher:    ``say`` commands to ``control``: paced RPUSHes (1 ms ticks), or for "as fast as possible"
             preloaded into a side list and RENAMEd to ``control`` at GO, so no generator runs while the
             frontend works.
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import select
import socket
import sys
import time

PAD = b"x" * 30  # text is about 64 bytes: "bench:<19 digits>:<seq> " + PAD
STAMP_IRC = re.compile(rb"PRIVMSG \S+ :bench:(\d+):")
STAMP_JSON = re.compile(rb"bench:(\d+):")
ERROR_EVENT = re.compile(rb'"type":\s*"error"')
STDIN = sys.stdin.fileno()


def say(word: str, payload: dict | None = None) -> None:
    sys.stdout.write(f"{word} {json.dumps(payload or {})}\n")
    sys.stdout.flush()


def wait_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "GO":
        sys.exit(0)


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def stdin_closed() -> bool:
    r, _, _ = select.select([STDIN], [], [], 0)
    return bool(r) and not os.read(STDIN, 4096)


def latency_summary(batches: list[tuple[int, list[bytes]]]) -> dict:
    dump = os.environ.get("BENCH_LATENCY_DUMP")  # debugging: one line per batch (arrival ns, n, max latency)
    if dump:
        with open(f"{dump}.{os.getpid()}", "w") as fh:
            for now, stamps in batches:
                fh.write(f"{now} {len(stamps)} {max(now - int(t) for t in stamps)}\n")
    lats = sorted(now - int(ts) for now, stamps in batches for ts in stamps)
    if not lats:
        return {}
    n = len(lats)
    return {"lat_p50_ms": lats[n // 2] / 1e6, "lat_p99_ms": lats[min(n - 1, int(n * 0.99))] / 1e6,
            "lat_max_ms": lats[-1] / 1e6, "lat_mean_ms": sum(lats) / n / 1e6}


def register(port: int, nick: str, timeout: float = 60.0) -> socket.socket:
    from tests.bench.servers import irc_register
    sock, _ = irc_register(port, nick, timeout)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def drain(sock: socket.socket, notes: list[bytes]) -> None:
    """Read what the server sent us; answer PINGs; keep a few unexpected numerics for the report."""
    while True:
        try:
            data = sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise ConnectionError("server closed the connection")
        for line in data.split(b"\r\n"):
            if line.startswith(b"PING "):
                sock.sendall(b"PONG " + line[5:] + b"\r\n")
            elif line[:1] == b":" and len(notes) < 5 and b" PONG " not in line:
                parts = line.split(b" ", 2)
                if len(parts) > 1 and parts[1].isdigit() and parts[1][:1] in (b"4", b"5"):
                    notes.append(line[:200])


# ---- roles ----------------------------------------------------------------------------------------------

def ticker(cfg: dict) -> None:
    sock = register(cfg["port"], cfg.get("nick", "ticker"))
    say("READY")
    period = cfg.get("period_s", 0.001)
    line, notes = b"PONG :t\r\n", []
    nxt = time.monotonic()
    n = 0
    while True:
        nxt += period
        delay = nxt - time.monotonic()
        if delay < -0.1:
            nxt = time.monotonic()
        r, _, _ = select.select([STDIN, sock], [], [], max(0.0, delay))
        if STDIN in r and not os.read(STDIN, 4096):
            return
        if sock in r:
            drain(sock, notes)
        try:
            sock.send(line)
        except BlockingIOError:
            pass
        n += 1


def sender(cfg: dict) -> None:
    port, k_rooms, total, rate = cfg["port"], cfg["rooms"], cfg["messages"], float(cfg.get("rate") or 0)
    nconn = max(1, min(cfg.get("conns", 4), k_rooms))
    socks = [register(port, f"lg{i}x{os.getpid() % 10000}") for i in range(nconn)]
    chans = [b"#r%d" % k for k in range(k_rooms)]
    pend = [bytearray() for _ in socks]
    notes: list[bytes] = []
    say("READY", {"conns": nconn})
    wait_go()
    cpu0 = cpu_self()
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLOUT)
    t0 = time.monotonic_ns()
    seq, loops = 0, 0
    chunk = int(cfg.get("chunk", 1024))
    high = 256 * 1024
    tick_ns = 1_000_000
    while seq < total or any(pend):
        now = time.monotonic_ns()
        if seq < total:
            if rate:
                due = min(total, int((now - t0) * rate / 1e9) + 1)
            else:
                due = min(total, seq + chunk) if sum(map(len, pend)) < high * nconn else seq
            if due > seq:
                ts = b"%d" % now
                for i in range(seq, due):
                    k = i % k_rooms
                    pend[k % nconn] += b"PRIVMSG %s :bench:%s:%d %s\r\n" % (chans[k], ts, i, PAD)
                seq = due
        blocked = False
        for j, s in enumerate(socks):
            if pend[j]:
                try:
                    sent = s.send(pend[j])
                    del pend[j][:sent]
                except BlockingIOError:
                    pass
                if pend[j]:
                    blocked = True
        loops += 1
        if loops % 256 == 0:
            for s in socks:
                drain(s, notes)
        if rate:
            wait = (now + tick_ns - time.monotonic_ns()) / 1e9
            if blocked:
                poller.poll(max(0.0, wait) * 1000)
            elif wait > 0:
                time.sleep(wait)
        elif blocked and seq >= total or sum(map(len, pend)) >= high * nconn:
            poller.poll(10)
    t_end = time.monotonic_ns()
    cpu = cpu_self() - cpu0
    time.sleep(0.2)  # replies to the last lines (e.g. 404 cannot send to channel) for the report
    for s in socks:
        drain(s, notes)
    say("DONE", {"t_start": t0, "t_end": t_end, "sent": seq, "cpu_s": cpu,
                 "wall_s": (t_end - t0) / 1e9, "server_notes": [n.decode("utf-8", "replace") for n in notes]})
    # keep the connections open until told to stop: closing them would make the server drop queued lines
    sys.stdin.readline()


def listener(cfg: dict) -> None:
    port, k_rooms, expected = cfg["port"], cfg["rooms"], cfg["messages"]
    nconn = max(1, min(cfg.get("conns", 1), k_rooms))
    socks = [register(port, f"ls{i}x{os.getpid() % 10000}") for i in range(nconn)]
    deadline = time.monotonic() + cfg.get("join_timeout", 120)
    for j, s in enumerate(socks):  # join the channels, then wait for each end of NAMES
        mine = range(j, k_rooms, nconn)
        s.setblocking(True)
        s.sendall(b"".join(b"JOIN #r%d\r\n" % k for k in mine))
        s.settimeout(1.0)
        buf, seen = b"", 0
        while seen < len(mine):
            if time.monotonic() > deadline:
                raise TimeoutError(f"listener joined {seen}/{len(mine)} channels")
            try:
                data = s.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError(f"closed while joining: {buf[-300:]!r}")
            buf = buf[-4096:] + data
            seen += data.count(b" 366 ")
            if b"PING " in data:
                for line in data.split(b"\r\n"):
                    if line.startswith(b"PING "):
                        s.sendall(b"PONG " + line[5:] + b"\r\n")
        s.setblocking(False)
    say("READY", {"conns": nconn})
    wait_go()
    cpu0 = cpu_self()
    t_go = time.monotonic_ns()
    idle_ns = int(cfg.get("idle_s", 10) * 1e9)
    end_ns = t_go + int(cfg.get("deadline_s", 120) * 1e9)
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    by_fd = {s.fileno(): s for s in socks}
    tails = {s.fileno(): b"" for s in socks}
    quickack = cfg.get("quickack", True) and hasattr(socket, "TCP_QUICKACK")
    batches: list[tuple[int, list[bytes]]] = []
    count, t_first, t_last = 0, 0, 0
    reason = "complete"
    while count < expected:
        events = poller.poll(100)
        now = time.monotonic_ns()
        for fd, _ in events:
            s = by_fd[fd]
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("server closed the listener connection")
            if quickack:  # ack at once: a delayed ACK would hold the server's next small write (Nagle)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            buf = tails[fd] + data
            cut = buf.rfind(b"\n") + 1
            tails[fd] = buf[cut:]
            part = buf[:cut]
            stamps = STAMP_IRC.findall(part)
            if stamps:
                batches.append((now, stamps))
                count += len(stamps)
                t_last = now
                t_first = t_first or now
            if b"PING " in part:
                for line in part.split(b"\r\n"):
                    if line.startswith(b"PING "):
                        s.sendall(b"PONG " + line[5:] + b"\r\n")
        if now > end_ns:
            reason = "deadline"
            break
        if now - (t_last or t_go) > idle_ns:
            reason = "idle"
            break
    cpu = cpu_self() - cpu0
    say("DONE", {"count": count, "t_first": t_first, "t_last": t_last, "stop": reason, "cpu_s": cpu,
                 "wall_s": ((t_last or time.monotonic_ns()) - t_go) / 1e9, **latency_summary(batches)})


def collector(cfg: dict) -> None:
    import redis
    r = redis.Redis.from_url(cfg["redis_url"])
    key, expected = cfg.get("key", "messages"), cfg["messages"]
    r.ping()
    say("READY")
    wait_go()
    cpu0 = cpu_self()
    t_go = time.monotonic_ns()
    idle_ns = int(cfg.get("idle_s", 10) * 1e9)
    end_ns = t_go + int(cfg.get("deadline_s", 120) * 1e9)
    batches: list[tuple[int, list[bytes]]] = []
    count, t_first, t_last, errors, events = 0, 0, 0, 0, 0
    error_samples: list[str] = []
    reason = "complete"
    while count < expected:
        # one round trip per batch: block up to 0.1 s, then take up to 8192 items at once
        reply = r.execute_command("BLMPOP", 0.1, 1, key, "LEFT", "COUNT", 8192)
        items = reply[1] if reply else None
        now = time.monotonic_ns()
        if items:
            events += len(items)
            data = b"\n".join(items)
            stamps = STAMP_JSON.findall(data)
            if stamps:
                batches.append((now, stamps))
                count += len(stamps)
                t_last = now
                t_first = t_first or now
            if len(stamps) != len(items):
                n_err = len(ERROR_EVENT.findall(data))
                errors += n_err
                if n_err and len(error_samples) < 3:
                    error_samples += [i.decode("utf-8", "replace")[:300] for i in items
                                      if ERROR_EVENT.search(i)][:3 - len(error_samples)]
        if now > end_ns:
            reason = "deadline"
            break
        if now - (t_last or t_go) > idle_ns:
            reason = "idle"
            break
    cpu = cpu_self() - cpu0
    say("DONE", {"count": count, "events": events, "errors": errors, "error_samples": error_samples,
                 "t_first": t_first, "t_last": t_last, "stop": reason, "cpu_s": cpu,
                 "wall_s": ((t_last or time.monotonic_ns()) - t_go) / 1e9, **latency_summary(batches)})


def _say_cmd(k: int, ts: bytes, seq: int) -> bytes:
    return b'{"type":"say","room":"r%d","text":"bench:%s:%d %s"}' % (k, ts, seq, PAD)


def pusher(cfg: dict) -> None:
    import redis
    r = redis.Redis.from_url(cfg["redis_url"])
    k_rooms, total, rate = cfg["rooms"], cfg["messages"], float(cfg.get("rate") or 0)
    key, staging = cfg.get("key", "control"), cfg.get("staging", "bench:staging")
    if not rate:  # preload: the frontend sees the whole backlog appear at once (RENAME wakes its pop)
        r.delete(staging)
        ts = b"%d" % time.monotonic_ns()
        pipe = r.pipeline(transaction=False)
        for start in range(0, total, 1000):
            pipe.rpush(staging, *[_say_cmd(i % k_rooms, ts, i) for i in range(start, min(total, start + 1000))])
            if start % 50_000 == 0:
                pipe.execute()
        pipe.execute()
        say("READY", {"preloaded": r.llen(staging)})
        wait_go()
        cpu0 = cpu_self()
        t0 = time.monotonic_ns()
        r.rename(staging, key)
        t_end = time.monotonic_ns()
        say("DONE", {"t_start": t0, "t_end": t_end, "sent": total, "cpu_s": cpu_self() - cpu0,
                     "wall_s": (t_end - t0) / 1e9, "preloaded": True})
        return
    say("READY")
    wait_go()
    cpu0 = cpu_self()
    t0 = time.monotonic_ns()
    seq = 0
    tick_ns = 1_000_000
    while seq < total:
        now = time.monotonic_ns()
        due = min(total, int((now - t0) * rate / 1e9) + 1)
        if due > seq:
            ts = b"%d" % now
            r.rpush(key, *[_say_cmd(i % k_rooms, ts, i) for i in range(seq, due)])
            seq = due
        wait = (now + tick_ns - time.monotonic_ns()) / 1e9
        if wait > 0:
            time.sleep(wait)
    t_end = time.monotonic_ns()
    say("DONE", {"t_start": t0, "t_end": t_end, "sent": seq, "cpu_s": cpu_self() - cpu0,
                 "wall_s": (t_end - t0) / 1e9, "preloaded": False})


ROLES = {"ticker": ticker, "sender": sender, "listener": listener, "collector": collector, "pusher": pusher}


def main() -> None:
    role, cfg = sys.argv[1], json.loads(sys.argv[2])
    gc.disable()  # short-lived: no collector pauses in the middle of a latency measurement
    try:
        ROLES[role](cfg)
    except BrokenPipeError:
        pass
    except Exception as exc:  # the bench reads this line and reports the failure
        import traceback
        traceback.print_exc()
        say("FAILED", {"error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)


if __name__ == "__main__":
    main()
