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
- xmpp:      a human XMPP client (slixmpp on a plain asyncio loop, no gevent in this process) joined to
             the N MUCs ``r<k>@<muc domain>`` without history. ``"mode": "send"`` (inbound): groupchat
             messages ``bench:<send ns>:<seq> <pad>`` round robin over the MUCs, paced (1 ms ticks);
             ``"mode": "listen"`` (outbound): timestamps the bot's groupchat messages as they arrive.
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


TICK_NS = 1_000_000  # paced senders send what is due once a millisecond


def lines_due(t0_ns: int, now_ns: int, rate: float, total: int) -> int:
    """How many of ``total`` lines paced at ``rate``/s from ``t0_ns`` should have gone by ``now_ns``."""
    return min(total, int((now_ns - t0_ns) * rate / 1e9) + 1)


def paced_ticks(t0_ns: int, rate: float, total: int):
    """Yield ``(range of line numbers due, tick start ns)`` once per tick until ``total`` are due.

    The caller sends the range, then sleeps ``tick_left(tick start)``."""
    seq = 0
    while seq < total:
        now = time.monotonic_ns()
        due = lines_due(t0_ns, now, rate, total)
        yield range(seq, due), now
        seq = max(seq, due)


def tick_left(tick_start_ns: int) -> float:
    """Seconds left of the tick that started at ``tick_start_ns`` (0 when it is over)."""
    return max(0.0, (tick_start_ns + TICK_NS - time.monotonic_ns()) / 1e9)


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
    while seq < total or any(pend):
        now = time.monotonic_ns()
        if seq < total:
            if rate:
                due = lines_due(t0, now, rate, total)
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
            wait = tick_left(now)
            if blocked:
                poller.poll(wait * 1000)
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
    for batch, now in paced_ticks(t0, rate, total):
        if batch:
            ts = b"%d" % now
            r.rpush(key, *[_say_cmd(i % k_rooms, ts, i) for i in batch])
        wait = tick_left(now)
        if wait > 0:
            time.sleep(wait)
    t_end = time.monotonic_ns()
    say("DONE", {"t_start": t0, "t_end": t_end, "sent": total, "cpu_s": cpu_self() - cpu0,
                 "wall_s": (t_end - t0) / 1e9, "preloaded": False})


# ---- XMPP: the human in the MUCs ------------------------------------------------------------------------

STAMP_TEXT = re.compile(r"^bench:(\d+):")


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _stdin_line() -> str:
    """One line from stdin without blocking the asyncio loop ('' on EOF)."""
    import asyncio
    loop = asyncio.get_running_loop()
    got: asyncio.Future = loop.create_future()
    buf = bytearray()

    def readable() -> None:
        data = os.read(STDIN, 4096)
        buf.extend(data)
        if (not data or b"\n" in buf) and not got.done():
            got.set_result(buf.split(b"\n", 1)[0].decode() if data else "")

    loop.add_reader(STDIN, readable)
    try:
        return await got
    finally:
        loop.remove_reader(STDIN)


async def _xmpp_client(cfg: dict):
    """A connected slixmpp client (plaintext on loopback, PLAIN auth), joined to the N MUCs."""
    import asyncio

    import slixmpp
    client = slixmpp.ClientXMPP(f"{cfg['jid']}/{cfg['nick']}{os.getpid()}", cfg["password"])
    client.enable_direct_tls = client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_plain = True
    for name in ("xep_0030", "xep_0004", "xep_0045"):
        client.register_plugin(name)
    started = asyncio.Event()
    client.add_event_handler("session_start", lambda _: started.set())
    failed: list[str] = []
    client.add_event_handler("failed_auth", lambda _: failed.append("authentication failed"))
    client.connect(cfg["host"], cfg["port"])
    try:
        await asyncio.wait_for(started.wait(), cfg.get("connect_timeout", 30))
    except asyncio.TimeoutError:
        raise TimeoutError(f"{cfg['jid']}: no XMPP session within {cfg.get('connect_timeout', 30)}s"
                           + (f" ({failed[0]})" if failed else "")) from None
    plugin = client.plugin["xep_0045"]
    mucs = [f"r{k}@{cfg['muc_domain']}" for k in range(cfg["rooms"])]
    timeout = cfg.get("join_timeout", 120)

    async def join(muc: str) -> None:
        result = await plugin.join_muc_wait(muc, cfg["nick"], maxstanzas=0, timeout=timeout)
        if 201 in result[0]["muc"]["status_codes"]:  # we created it: unlock it ("instant room")
            await plugin.set_room_config(muc, client.plugin["xep_0004"].make_form(ftype="submit"))

    for start in range(0, len(mucs), 50):  # 50 joins in flight at a time
        await asyncio.gather(*[join(m) for m in mucs[start:start + 50]])
    return client, mucs


async def _xmpp_send(cfg: dict, client, mucs: list[str]) -> None:
    import asyncio
    total, rate = cfg["messages"], float(cfg["rate"])
    pad, n = PAD.decode(), len(mucs)
    say("READY", {"rooms": n})
    if (await _stdin_line()).strip() != "GO":
        return
    cpu0 = cpu_self()
    t0 = time.monotonic_ns()
    for batch, now in paced_ticks(t0, rate, total):
        for i in batch:
            client.send_message(mto=mucs[i % n], mbody=f"bench:{time.monotonic_ns()}:{i} {pad}",
                                mtype="groupchat")
        await asyncio.sleep(tick_left(now))
    while not client.waiting_queue.empty():  # slixmpp writes from its own task: wait until it wrote all
        await asyncio.sleep(0.001)
    t_end = time.monotonic_ns()
    say("DONE", {"t_start": t0, "t_end": t_end, "sent": total, "cpu_s": cpu_self() - cpu0,
                 "wall_s": (t_end - t0) / 1e9, "max_rss_mb": max_rss_mb()})
    await _stdin_line()  # stay in the rooms until told to stop: leaving could drop what is in flight


async def _xmpp_listen(cfg: dict, client, mucs: list[str]) -> None:
    import asyncio
    expected, nick = cfg["messages"], cfg["nick"]
    batches: list[tuple[int, list[str]]] = []
    state = {"count": 0, "t_first": 0, "t_last": 0}

    def on_groupchat(msg) -> None:
        now = time.monotonic_ns()
        if msg["from"].resource == nick:
            return
        m = STAMP_TEXT.match(msg["body"])
        if m:
            batches.append((now, [m.group(1)]))
            state["count"] += 1
            state["t_last"] = now
            state["t_first"] = state["t_first"] or now

    client.add_event_handler("groupchat_message", on_groupchat)
    say("READY", {"rooms": len(mucs)})
    if (await _stdin_line()).strip() != "GO":
        return
    cpu0 = cpu_self()
    t_go = time.monotonic_ns()
    idle_ns = int(cfg.get("idle_s", 10) * 1e9)
    end_ns = t_go + int(cfg.get("deadline_s", 120) * 1e9)
    reason = "complete"
    while state["count"] < expected:
        await asyncio.sleep(0.05)
        now = time.monotonic_ns()
        if now > end_ns:
            reason = "deadline"
            break
        if now - (state["t_last"] or t_go) > idle_ns:
            reason = "idle"
            break
    cpu = cpu_self() - cpu0
    say("DONE", {"count": state["count"], "t_first": state["t_first"], "t_last": state["t_last"],
                 "stop": reason, "cpu_s": cpu, "max_rss_mb": max_rss_mb(),
                 "wall_s": ((state["t_last"] or time.monotonic_ns()) - t_go) / 1e9,
                 **latency_summary(batches)})


def xmpp(cfg: dict) -> None:
    import asyncio

    async def run() -> None:
        client, mucs = await _xmpp_client(cfg)
        try:
            await (_xmpp_send if cfg["mode"] == "send" else _xmpp_listen)(cfg, client, mucs)
        finally:
            client.disconnect(wait=0.5)
            await asyncio.sleep(0.2)

    asyncio.run(run())


ROLES = {"ticker": ticker, "sender": sender, "listener": listener, "collector": collector, "pusher": pusher,
         "xmpp": xmpp}


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
