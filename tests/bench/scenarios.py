"""The scenarios: one run of one scenario against one frontend, in a fresh Redis + InspIRCd + ticker.

Scenario names (``--scenario``):
  rooms:N            join N rooms, each its own connection (distinct nicks): join time, RSS per room, idle CPU
  shared:N:C         N rooms over C nicks (rooms of one nick share a connection in greenroom)
  inbound:K:M        M chat lines over K rooms -> ``messages``, as fast as possible
  inbound:K:M@R      the same, paced at R lines/s
  outbound:K:M[@R]   M ``say`` commands over K rooms -> lines seen by a listening client
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import redis

from tests.bench import procs
from tests.bench.servers import ROOT, InspIRCd, RedisServer


def procs_bin(name: str):
    from pathlib import Path
    return Path(sys.executable).with_name(name)


class ScenarioFailed(Exception):
    pass


@dataclass
class Scenario:
    name: str
    kind: str            # rooms | shared | inbound | outbound
    rooms: int
    messages: int = 0
    rate: float = 0.0    # lines per second; 0: as fast as possible
    nicks: int = 0       # shared: connections (distinct nicks)

    @classmethod
    def parse(cls, text: str) -> "Scenario":
        m = re.fullmatch(r"(rooms):(\d+)|(shared):(\d+):(\d+)|(inbound|outbound):(\d+):(\d+)(?:@(\d+))?", text)
        if not m:
            raise ValueError(f"bad scenario {text!r}: rooms:N, shared:N:C, inbound:K:M[@R], outbound:K:M[@R]")
        if m.group(1):
            return cls(text, "rooms", int(m.group(2)))
        if m.group(3):
            return cls(text, "shared", int(m.group(4)), nicks=int(m.group(5)))
        return cls(text, m.group(6), int(m.group(7)), int(m.group(8)), float(m.group(9) or 0))

    @property
    def paced(self) -> bool:
        return self.rate > 0

    def title(self) -> str:
        if self.kind == "rooms":
            return f"{self.rooms:,} rooms, own connections"
        if self.kind == "shared":
            return f"{self.rooms:,} rooms over {self.nicks:,} connections"
        how = f"paced {self.rate:,.0f}/s" if self.paced else "max speed"
        return f"{self.kind} {self.rooms:,} rooms, {self.messages:,} lines, {how}"


@dataclass
class FrontendSpec:
    label: str
    cmd: str                      # may hold {redis_url}, {redis_addr} and {free_port}
    env: dict = field(default_factory=dict)
    shares_connections: bool = True


@dataclass
class Options:
    idle_s: float = 10.0
    settle_s: float = 2.0
    keep: bool = False
    verbose: bool = True
    sender_conns: int = 4
    profile_dir: str | None = None   # py-spy raw stacks of the frontend over each measured window


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- worker processes -----------------------------------------------------------------------------------

class Worker:
    """A tests.bench.workers process: READY / GO / DONE over its stdin and stdout."""

    def __init__(self, role: str, cfg: dict, workdir: str) -> None:
        self.role = role
        self.log_path = os.path.join(workdir, f"{role}.log")
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = procs.spawn([sys.executable, "-m", "tests.bench.workers", role, json.dumps(cfg)],
                                env=env, log_path=self.log_path, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, cwd=str(ROOT))
        self._buf = b""

    def expect(self, word: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                head, _, payload = line.decode().partition(" ")
                if head == word:
                    return json.loads(payload or "{}")
                if head == "FAILED":
                    raise ScenarioFailed(f"{self.role}: {json.loads(payload)['error']}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScenarioFailed(f"{self.role}: no {word} within {timeout:.0f}s{self._tail()}")
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                data = os.read(fd, 65536)
                if not data:
                    raise ScenarioFailed(f"{self.role} exited ({self.proc.wait()}) before {word}{self._tail()}")
                self._buf += data

    def poll_done(self, timeout: float) -> dict | None:
        try:
            return self.expect("DONE", timeout)
        except ScenarioFailed as exc:
            if "no DONE within" in str(exc):
                return None
            raise

    def go(self) -> None:
        self.proc.stdin.write(b"GO\n")
        self.proc.stdin.flush()

    def _tail(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return "; log: " + fh.read()[-600:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        procs.stop(self.proc, timeout=3)


# ---- the frontend under test ----------------------------------------------------------------------------

class FrontendProcess:
    def __init__(self, spec: FrontendSpec, redis_srv: RedisServer, workdir: str, extra_env: dict) -> None:
        self.spec = spec
        self.log_path = os.path.join(workdir, "frontend.log")
        argv = shlex.split(spec.cmd.format(redis_url=redis_srv.url, redis_addr=redis_srv.addr,
                                                free_port=procs.free_port()))
        env = {**os.environ, "GREENROOM_REDIS_URL": redis_srv.url, "GREENROOM_CONNECT_RATE": "0",
               **{k: v.replace("{free_port}", str(procs.free_port())) for k, v in spec.env.items()},
               **extra_env}
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):  # leading NAME=value: env
            name, _, value = argv.pop(0).partition("=")
            env[name] = value
        if not argv:
            raise ValueError(f"empty frontend command {spec.cmd!r}")
        self.argv = argv
        self.proc = procs.spawn(argv, env=env, log_path=self.log_path, cwd=str(ROOT))
        self.pids = [self.proc.pid]

    def wait_ready(self, r: redis.Redis, timeout: float = 60.0) -> None:
        """A ping for a room that does not exist must come back as some event for that room."""
        deadline = time.monotonic() + timeout
        probe = json.dumps({"type": "ping", "room": "_bench_ready", "cmd_id": "ready"})
        last_push = 0.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ScenarioFailed(f"frontend exited with {self.proc.returncode}{self.log_tail()}")
            if time.monotonic() - last_push > 2:
                r.rpush("control", probe)
                last_push = time.monotonic()
            # Go answers with an error event; greenroom dead-letters it (control:dead) and logs it
            item = r.blpop(["messages", "control:dead"], timeout=0.2)
            if item and b"_bench_ready" in item[1]:
                time.sleep(0.3)
                r.delete("messages", "control:dead")
                self.pids = procs.descendants(self.proc.pid)
                return
        raise ScenarioFailed(f"frontend not answering on Redis within {timeout}s{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ScenarioFailed(f"frontend exited with {self.proc.returncode}{self.log_tail()}")

    def log_tail(self, n: int = 800) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - n))
                return "; log: " + fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def stop(self) -> None:
        procs.stop(self.proc, timeout=6, sig=signal.SIGTERM)


# ---- helpers --------------------------------------------------------------------------------------------

def join_spec(port: int, nick: str, channel: str) -> dict:
    return {"protocol": "irc", "server": "127.0.0.1", "port": port, "tls": False, "nick": nick,
            "channel": channel, "key": None, "password": None, "sasl": None, "flood": False}


def join_rooms(r: redis.Redis, fe: FrontendProcess, port: int, n: int, nick_of, timeout: float) -> dict:
    """Push n joins (pipelined) and pop events until every room is joined or failed (or the timeout)."""
    t0 = time.monotonic()
    pipe = r.pipeline(transaction=False)
    for start in range(0, n, 1000):
        pipe.rpush("control", *[json.dumps({"type": "join", "room": f"r{k}",
                                            "spec": join_spec(port, nick_of(k), f"#r{k}")})
                                for k in range(start, min(n, start + 1000))])
    pipe.execute()
    joined: set[str] = set()
    failed: dict[str, str] = {}
    t_last = t0
    last_check = 0.0
    while len(joined) + len(failed) < n:
        now = time.monotonic()
        if now - t0 > timeout:
            break
        if now - last_check > 1:
            fe.check_alive()
            last_check = now
        items = r.lpop("messages", 10000)
        if not items:
            item = r.blpop(["messages"], timeout=0.2)
            items = [item[1]] if item else []
        for raw in items:
            ev = json.loads(raw)
            room = ev.get("room", "")
            if ev.get("type") == "joined" and room not in joined:
                joined.add(room)
                failed.pop(room, None)
                t_last = time.monotonic()
            elif ev.get("type") == "error" and room not in joined:
                failed[room] = f"{ev.get('code')}: {ev.get('detail')}"
    codes: dict[str, int] = {}
    for detail in failed.values():
        code = detail.split(":")[0]
        codes[code] = codes.get(code, 0) + 1
    return {"join_s": t_last - t0, "joined": len(joined), "join_failed": len(failed), "join_error_codes": codes,
            "join_error_sample": next(iter(failed.values()), None), "join_timed_out": len(joined) + len(failed) < n}


# ---- one run --------------------------------------------------------------------------------------------

class Bench:
    """Fresh servers for one run of one scenario against one frontend; everything stopped on exit."""

    def __init__(self, scenario: Scenario, fe_spec: FrontendSpec, opts: Options) -> None:
        self.sc, self.fe_spec, self.opts = scenario, fe_spec, opts
        self.dir = tempfile.mkdtemp(prefix=f"greenroom-bench-{fe_spec.label}-")
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> "Bench":
        self.stack.__enter__()
        self.stack.callback(self._cleanup_dir)
        self.redis_srv = RedisServer(self.dir).start()
        self.stack.callback(self.redis_srv.stop)
        self.ircd = InspIRCd(self.dir).start()
        self.stack.callback(self.ircd.stop)
        self.r = redis.Redis.from_url(self.redis_srv.url)
        self.ticker = self.worker("ticker", {"port": self.ircd.port})
        self.ticker.expect("READY", 30)
        return self

    def __exit__(self, *exc) -> None:
        self.stack.__exit__(*exc)

    def _cleanup_dir(self) -> None:
        if not self.opts.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log(f"kept {self.dir}")

    def worker(self, role: str, cfg: dict) -> Worker:
        w = Worker(role, cfg, self.dir)
        self.stack.callback(w.close)
        return w

    def start_frontend(self, extra_env: dict | None = None) -> FrontendProcess:
        fe = FrontendProcess(self.fe_spec, self.redis_srv, self.dir, extra_env or {})
        self.fe = fe
        self.stack.callback(fe.stop)
        fe.wait_ready(self.r)
        return fe

    @contextlib.contextmanager
    def profiled(self, fe: FrontendProcess, what: str):
        """py-spy (raw, collapsed stacks) on the frontend for the block, when --profile is given."""
        pyspy = shutil.which("py-spy") or str(procs_bin("py-spy"))
        if not self.opts.profile_dir or not os.access(pyspy, os.X_OK):
            yield None
            return
        os.makedirs(self.opts.profile_dir, exist_ok=True)
        path = os.path.join(self.opts.profile_dir, f"{self.fe_spec.label}-{self.sc.name.replace(':', '_')}"
                                                   f"-{what}-{time.strftime('%H%M%S')}.txt")
        prof = procs.spawn([pyspy, "record", "--pid", str(fe.proc.pid), "--format", "raw", "--rate", "100",
                            "--nonblocking", "--output", path], log_path=os.path.join(self.dir, "py-spy.log"))
        time.sleep(1.0)  # py-spy attaches
        try:
            yield path
        finally:
            procs.stop(prof, timeout=15, sig=signal.SIGINT)
            log(f"profile: {path}")

    def run(self) -> dict:
        kind = self.sc.kind
        if kind in ("rooms", "shared"):
            return self.run_rooms()
        return self.run_traffic()

    # rooms N / shared N:C
    def run_rooms(self) -> dict:
        sc = self.sc
        extra = {}
        if sc.kind == "shared":
            per = -(-sc.rooms // sc.nicks)
            extra["GREENROOM_CHANNELS_PER_CONNECTION"] = str(per)
            nick_of = lambda k: f"s{k % sc.nicks}"  # noqa: E731
            timeout = min(600.0, 60 + sc.rooms * 0.003)
        else:
            nick_of = lambda k: f"b{k}"  # noqa: E731
            timeout = min(600.0, 45 + sc.rooms * 0.006)
        fe = self.start_frontend(extra)
        time.sleep(1.0)
        samples = []
        for _ in range(3):
            samples.append(procs.rss_kb(fe.pids))
            time.sleep(0.1)
        base = min(samples)
        res = join_rooms(self.r, fe, self.ircd.port, sc.rooms, nick_of, timeout)
        if res["joined"] < sc.rooms:
            res["ok"] = False
            res["error"] = (f"{res['joined']}/{sc.rooms} joined"
                            + (" (timed out)" if res["join_timed_out"] else "")
                            + (f"; e.g. {res['join_error_sample']}" if res["join_error_sample"] else ""))
        time.sleep(self.opts.settle_s)
        fe.check_alive()
        rss = procs.rss_kb(fe.pids)
        with self.profiled(fe, "idle"):
            cpu0, t0 = procs.cpu_seconds(fe.pids), time.monotonic()
            time.sleep(self.opts.idle_s)
            cpu1, t1 = procs.cpu_seconds(fe.pids), time.monotonic()
        fe.check_alive()
        res.update({
            "rss_base_mb": base / 1024, "rss_mb": rss / 1024,
            "rss_kb_per_room": (rss - base) / max(1, res["joined"]),
            "idle_s": t1 - t0, "idle_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
            "connections": procs.tcp_connections_to(fe.pids, self.ircd.port),
        })
        return res

    # inbound / outbound
    def run_traffic(self) -> dict:
        sc = self.sc
        fe = self.start_frontend()
        res = join_rooms(self.r, fe, self.ircd.port, sc.rooms, lambda k: f"b{k}", 45 + sc.rooms * 0.006)
        if res["joined"] < sc.rooms:
            raise ScenarioFailed(f"only {res['joined']}/{sc.rooms} rooms joined; "
                                 f"e.g. {res['join_error_sample']}")
        time.sleep(1.0)
        duration = sc.messages / sc.rate if sc.paced else 0
        deadline_s = (duration + 60) if sc.paced else (60 + sc.messages / 10_000)
        idle_s = 10.0
        if sc.kind == "inbound":
            sink = self.worker("collector", {"redis_url": self.redis_srv.url, "messages": sc.messages,
                                             "idle_s": idle_s, "deadline_s": deadline_s})
            source = self.worker("sender", {"port": self.ircd.port, "rooms": sc.rooms, "messages": sc.messages,
                                            "rate": sc.rate, "conns": self.opts.sender_conns})
        else:
            sink = self.worker("listener", {"port": self.ircd.port, "rooms": sc.rooms, "messages": sc.messages,
                                            "idle_s": idle_s, "deadline_s": deadline_s})
            source = self.worker("pusher", {"redis_url": self.redis_srv.url, "rooms": sc.rooms,
                                            "messages": sc.messages, "rate": sc.rate})
        sink.expect("READY", 180)
        source.expect("READY", 180)
        time.sleep(0.5)
        self.r.delete("messages")  # e.g. user_joined events for the listener
        fe.check_alive()
        events_out = 0
        with self.profiled(fe, "load"), procs.Sampler(fe.pids) as smp:
            sink.go()
            source.go()
            wait_until = time.monotonic() + deadline_s + idle_s + 30
            src = snk = None
            while snk is None:
                if time.monotonic() > wait_until:
                    raise ScenarioFailed("load generators did not finish in time")
                if src is None:
                    src = source.poll_done(0.2)
                snk = sink.poll_done(0.3)
                if sc.kind == "outbound":  # a backend would consume these: keep `messages` from piling up
                    pipe = self.r.pipeline()
                    pipe.llen("messages")
                    pipe.delete("messages")
                    events_out += pipe.execute()[0]
            if src is None:
                src = source.expect("DONE", 30)
        fe.check_alive()
        if sc.kind == "outbound":
            events_out += self.r.llen("messages")
        t_start, t_last = src["t_start"], snk["t_last"] or snk.get("t_first") or src["t_end"]
        window = max(1e-9, (t_last - t_start) / 1e9)
        cpu = smp.cpu_at(t_last) - smp.cpu_at(t_start)
        count = snk["count"]
        res.update({
            "sent": src["sent"], "received": count, "lost": src["sent"] - count, "stop": snk["stop"],
            "window_s": window, "msgs_per_s": count / window,
            "fe_cpu_s": cpu, "cpu_us_per_msg": cpu / max(1, count) * 1e6, "fe_cpu_pct": cpu / window * 100,
            "fe_peak_rss_mb": smp.peak_rss_kb(t_start) / 1024,
            # a preloaded pusher only RENAMEs at GO: no generator runs while the frontend works
            "source_cpu_pct": None if src.get("preloaded") else src["cpu_s"] / max(1e-9, src["wall_s"]) * 100,
            "sink_cpu_pct": snk["cpu_s"] / max(1e-9, (snk["t_last"] or t_last) / 1e9 - t_start / 1e9) * 100,
        })
        for k in ("lat_p50_ms", "lat_p99_ms", "lat_max_ms", "lat_mean_ms"):
            if k in snk and not (sc.kind == "outbound" and not sc.paced):  # preloaded: no per-line send time
                res[k] = snk[k]
        if sc.kind == "inbound":
            res["error_events"] = snk.get("errors", 0)
            if snk.get("error_samples"):
                res["error_samples"] = snk["error_samples"]
            if src.get("server_notes"):
                res["server_notes"] = src["server_notes"]
        else:
            res["events_out"] = events_out
        if count < src["sent"]:
            res["ok"] = False
            res["error"] = f"{count}/{src['sent']} lines arrived (stopped: {snk['stop']})"
        return res


def run_one(scenario: Scenario, fe_spec: FrontendSpec, opts: Options) -> dict:
    started = time.time()
    row = {"type": "result", "frontend": fe_spec.label, "scenario": scenario.name, "kind": scenario.kind,
           "title": scenario.title(), "rooms": scenario.rooms, "messages": scenario.messages,
           "rate": scenario.rate, "ok": True}
    bench = Bench(scenario, fe_spec, opts)
    try:
        with bench:
            try:
                row.update(bench.run())
            finally:
                fe = getattr(bench, "fe", None)
                if fe is not None:
                    row["frontend_rc"] = fe.proc.poll()
                    row["_log"] = fe.log_tail(2000)
    except ScenarioFailed as exc:
        row.update(ok=False, error=str(exc)[:2000])
    except Exception as exc:  # noqa: BLE001 - a failure row, never a hang or a crash of the whole bench
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
    log_tail = row.pop("_log", None)
    if not row["ok"] and log_tail:
        row["frontend_log_tail"] = log_tail
    row["duration_s"] = round(time.time() - started, 1)
    row["started"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))
    return row
