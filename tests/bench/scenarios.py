"""The scenarios: one run of one scenario against one frontend, in a fresh Redis + InspIRCd + ticker
(XMPP: a fresh Redis + prosody).

Scenario names (``--scenario``):
  rooms:N            join N rooms, each its own connection (distinct nicks): join time, RSS per room, idle CPU
  shared:N:C         N rooms over C nicks (rooms of one nick share a connection in greenroom)
  inbound:K:M        M chat lines over K rooms -> ``messages``, as fast as possible
  inbound:K:M@R      the same, paced at R lines/s
  outbound:K:M[@R]   M ``say`` commands over K rooms -> lines seen by a listening client
  xmpp:N:M@R         N MUC rooms joined by one bot JID (one shared XMPP stream): join time, RSS per room,
                     idle CPU; then M lines inbound (a human client's groupchat messages -> ``messages``)
                     and M ``say`` commands outbound (-> the human client), both paced at R lines/s.
                     Only for frontends that speak XMPP (not the Go reference)
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
from tests.bench.servers import ROOT, InspIRCd, Prosody, RedisServer


def procs_bin(name: str):
    from pathlib import Path
    return Path(sys.executable).with_name(name)


class ScenarioFailed(Exception):
    pass


@dataclass
class Scenario:
    name: str
    kind: str            # rooms | shared | inbound | outbound | xmpp
    rooms: int
    messages: int = 0
    rate: float = 0.0    # lines per second; 0: as fast as possible
    nicks: int = 0       # shared: connections (distinct nicks)

    @classmethod
    def parse(cls, text: str) -> "Scenario":
        m = re.fullmatch(r"(rooms):(\d+)|(shared):(\d+):(\d+)|(inbound|outbound):(\d+):(\d+)(?:@(\d+))?"
                         r"|(xmpp):(\d+):(\d+)@(\d+)", text)
        if not m or (m.group(10) and int(m.group(13)) <= 0):
            raise ValueError(f"bad scenario {text!r}: rooms:N, shared:N:C, inbound:K:M[@R], outbound:K:M[@R], "
                             "xmpp:N:M@R")
        if m.group(10):
            return cls(text, "xmpp", int(m.group(11)), int(m.group(12)), float(m.group(13)))
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
        if self.kind == "xmpp":
            return (f"XMPP {self.rooms:,} MUC rooms over one stream, {self.messages:,} lines each way, "
                    f"paced {self.rate:,.0f}/s")
        how = f"paced {self.rate:,.0f}/s" if self.paced else "max speed"
        return f"{self.kind} {self.rooms:,} rooms, {self.messages:,} lines, {how}"


@dataclass
class FrontendSpec:
    label: str
    cmd: str                      # may hold {redis_url}, {redis_addr} and {free_port}
    env: dict = field(default_factory=dict)
    shares_connections: bool = True
    speaks_xmpp: bool = True      # False: xmpp:… scenarios are not run (the Go reference is IRC only)


@dataclass
class Options:
    idle_s: float = 10.0
    settle_s: float = 2.0
    keep: bool = False
    verbose: bool = True
    sender_conns: int = 4
    profile_dir: str | None = None   # py-spy raw stacks of the frontend over each measured window
    profile_native: bool = False     # ... with C frames (py-spy pauses the frontend per sample)
    profile_blocking: bool = False   # ... py-spy pausing the frontend per sample (native implies it)
    profile_rate: int = 100          # ... samples per second


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- worker processes -----------------------------------------------------------------------------------

class Worker:
    """A tests.bench.workers process: READY / GO / DONE over its stdin and stdout."""

    def __init__(self, role: str, cfg: dict, workdir: str, name: str | None = None) -> None:
        self.role = role
        self.log_path = os.path.join(workdir, f"{name or role}.log")
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
        # no connect pacing and no per-room inbound limit: the bench measures what the design costs
        # at full speed, beside a Go reference that has neither (BENCHMARKS.md, "Running it")
        env = {**os.environ, "GREENROOM_REDIS_URL": redis_srv.url, "GREENROOM_CONNECT_RATE": "0",
               "GREENROOM_ROOM_EVENT_RATE": "0",
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


XMPP_BOT = ("bot", "bench-bot-pw")        # the frontend's account on the bench's prosody
XMPP_HUMAN = ("human", "bench-human-pw")  # the human client's


def xmpp_join_spec(prosody: Prosody, k: int) -> dict:
    """Room r<k> in MUC r<k>@conference.localhost; every room has the same bot JID: one shared stream."""
    return {"protocol": "xmpp", "jid": f"{XMPP_BOT[0]}@{prosody.domain}", "password": XMPP_BOT[1],
            "muc": f"r{k}@{prosody.muc_domain}", "nick": "bot", "host": prosody.host, "port": prosody.port,
            "tls": False, "room_password": None}


def join_rooms(r: redis.Redis, fe: FrontendProcess, n: int, spec_of, timeout: float) -> dict:
    """Push n joins of rooms r<k> with spec_of(k) (pipelined) and pop events until every room is joined or
    failed (or the timeout)."""
    t0 = time.monotonic()
    pipe = r.pipeline(transaction=False)
    for start in range(0, n, 1000):
        pipe.rpush("control", *[json.dumps({"type": "join", "room": f"r{k}", "spec": spec_of(k)})
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

#: Redis commands slower than this (µs) are counted in a load window (``redis_slow_commands``)
SLOWLOG_US = 2000


def _command_calls(r: redis.Redis) -> dict[str, int]:
    """Redis's count of calls per command (``INFO commandstats``), e.g. ``{"evalsha": 1200, ...}``."""
    return {name[len("cmdstat_"):]: int(stats["calls"]) for name, stats in r.info("commandstats").items()
            if name.startswith("cmdstat_")}


def _shown_command(command: bytes | str) -> str:
    """The slowest command as the slow log has it, cut short (a script's SHA and its first keys)."""
    text = command.decode("utf-8", "replace") if isinstance(command, bytes) else str(command)
    return text[:120]


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
        self.r = redis.Redis.from_url(self.redis_srv.url)
        if self.sc.kind == "xmpp":  # prosody only: no IRC server, no ticker
            os.chmod(self.dir, 0o755)  # prosody runs as user prosody (when we are root): it must reach its dir
            self.prosody = Prosody(os.path.join(self.dir, "prosody"), self.sc.rooms)
            self.stack.callback(self.prosody.stop)
            self.prosody.start(timeout=20)
            for user, password in (XMPP_BOT, XMPP_HUMAN):
                self.prosody.create_user(user, password)
            return self
        self.ircd = InspIRCd(self.dir).start()
        self.stack.callback(self.ircd.stop)
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

    def worker(self, role: str, cfg: dict, name: str | None = None) -> Worker:
        w = Worker(role, cfg, self.dir, name)
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
        how = (["--native"] if self.opts.profile_native else
               [] if self.opts.profile_blocking else ["--nonblocking"])
        prof = procs.spawn([pyspy, "record", "--pid", str(fe.proc.pid), "--format", "raw", "--rate",
                            str(self.opts.profile_rate), *how, "--output", path],
                           log_path=os.path.join(self.dir, "py-spy.log"))
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
        if kind == "xmpp":
            return self.run_xmpp()
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
        port = self.ircd.port
        return self.measure_rooms(fe, lambda k: join_spec(port, nick_of(k), f"#r{k}"), timeout, port)

    def measure_rooms(self, fe: FrontendProcess, spec_of, timeout: float, port: int) -> dict:
        """Join time, RSS per room, idle CPU and connections to ``port`` for sc.rooms joins of spec_of(k)."""
        sc = self.sc
        time.sleep(1.0)
        samples = []
        for _ in range(3):
            samples.append(procs.rss_kb(fe.pids))
            time.sleep(0.1)
        base = min(samples)
        res = join_rooms(self.r, fe, sc.rooms, spec_of, timeout)
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
            "connections": procs.tcp_connections_to(fe.pids, port),
        })
        return res

    # inbound / outbound
    def run_traffic(self) -> dict:
        sc = self.sc
        fe = self.start_frontend()
        port = self.ircd.port
        res = join_rooms(self.r, fe, sc.rooms, lambda k: join_spec(port, f"b{k}", f"#r{k}"),
                         45 + sc.rooms * 0.006)
        if res["joined"] < sc.rooms:
            raise ScenarioFailed(f"only {res['joined']}/{sc.rooms} rooms joined; "
                                 f"e.g. {res['join_error_sample']}")
        time.sleep(1.0)
        deadline_s, idle_s = self.load_deadline()
        if sc.kind == "inbound":
            sink = self.worker("collector", {"redis_url": self.redis_srv.url, "messages": sc.messages,
                                             "idle_s": idle_s, "deadline_s": deadline_s})
            source = self.worker("sender", {"port": port, "rooms": sc.rooms, "messages": sc.messages,
                                            "rate": sc.rate, "conns": self.opts.sender_conns})
        else:
            sink = self.worker("listener", {"port": port, "rooms": sc.rooms, "messages": sc.messages,
                                            "idle_s": idle_s, "deadline_s": deadline_s})
            source = self.worker("pusher", {"redis_url": self.redis_srv.url, "rooms": sc.rooms,
                                            "messages": sc.messages, "rate": sc.rate})
        res.update(self.measure_load(fe, sc.kind, sink, source, deadline_s, idle_s))
        return res

    def load_deadline(self) -> tuple[float, float]:
        """(deadline for the sink after GO, idle time after which the sink stops waiting), in seconds."""
        sc = self.sc
        duration = sc.messages / sc.rate if sc.paced else 0
        return ((duration + 60) if sc.paced else (60 + sc.messages / 10_000)), 10.0

    def measure_load(self, fe: FrontendProcess, direction: str, sink: Worker, source: Worker,
                     deadline_s: float, idle_s: float, ready_timeout: float = 180,
                     server_pid: int | None = None) -> dict:
        """GO to both workers (READY first), wait for their DONE; lines/s, CPU per line, latency, loss
        (and the chat server's CPU over the same window when ``server_pid`` is given)."""
        sc = self.sc
        sink.expect("READY", ready_timeout)
        source.expect("READY", ready_timeout)
        time.sleep(0.5)
        self.r.delete("messages")  # e.g. user_joined events for the listener
        fe.check_alive()
        events_out = 0
        server = procs.Sampler([server_pid], interval=0.25) if server_pid else contextlib.nullcontext()
        # Redis's side of the same window: its CPU (the generators' commands are in it too, the same for
        # every frontend) and its slowest commands (a long script stalls every other client of Redis)
        self.r.config_set("slowlog-log-slower-than", SLOWLOG_US)
        self.r.config_set("slowlog-max-len", 1024)
        self.r.slowlog_reset()
        calls_before = _command_calls(self.r)
        with self.profiled(fe, "load" if direction == sc.kind else direction), procs.Sampler(fe.pids) as smp, \
                server, procs.Sampler([self.redis_srv.proc.pid], interval=0.25) as redis_smp:
            sink.go()
            source.go()
            wait_until = time.monotonic() + deadline_s + idle_s + 30
            src = snk = None
            while snk is None:
                if time.monotonic() > wait_until:
                    raise ScenarioFailed(f"load generators did not finish in time ({direction})")
                if src is None:
                    src = source.poll_done(0.2)
                snk = sink.poll_done(0.3)
                if direction == "outbound":  # a backend would consume these: keep `messages` from piling up
                    pipe = self.r.pipeline()
                    pipe.llen("messages")
                    pipe.delete("messages")
                    events_out += pipe.execute()[0]
            if src is None:
                src = source.expect("DONE", 30)
        fe.check_alive()
        if direction == "outbound":
            events_out += self.r.llen("messages")
        t_start, t_last = src["t_start"], snk["t_last"] or snk.get("t_first") or src["t_end"]
        window = max(1e-9, (t_last - t_start) / 1e9)
        cpu = smp.cpu_at(t_last) - smp.cpu_at(t_start)
        count = snk["count"]
        res = {
            "sent": src["sent"], "received": count, "lost": src["sent"] - count, "stop": snk["stop"],
            "window_s": window, "msgs_per_s": count / window,
            "fe_cpu_s": cpu, "cpu_us_per_msg": cpu / max(1, count) * 1e6, "fe_cpu_pct": cpu / window * 100,
            "fe_peak_rss_mb": smp.peak_rss_kb(t_start) / 1024,
            # a preloaded pusher only RENAMEs at GO: no generator runs while the frontend works
            "source_cpu_pct": None if src.get("preloaded") else src["cpu_s"] / max(1e-9, src["wall_s"]) * 100,
            "sink_cpu_pct": snk["cpu_s"] / max(1e-9, (snk["t_last"] or t_last) / 1e9 - t_start / 1e9) * 100,
        }
        calls = _command_calls(self.r)
        res["redis_calls_per_msg"] = {name: round((n - calls_before.get(name, 0)) / max(1, count), 3)
                                      for name, n in sorted(calls.items()) if n - calls_before.get(name, 0) > 0}
        slow = sorted(self.r.slowlog_get(1024), key=lambda entry: entry["duration"])
        res.update(redis_cpu_us_per_msg=(redis_smp.cpu_at(t_last) - redis_smp.cpu_at(t_start)) / max(1, count) * 1e6,
                   redis_slowest_ms=slow[-1]["duration"] / 1000 if slow else 0.0, redis_slow_commands=len(slow),
                   redis_slowest=_shown_command(slow[-1]["command"]) if slow else None)
        if server_pid:  # e.g. prosody: is the chat server the bottleneck?
            res["server_cpu_pct"] = (server.cpu_at(t_last) - server.cpu_at(t_start)) / window * 100
        for who, done in (("source", src), ("sink", snk)):
            if "max_rss_mb" in done:  # the XMPP human client: slixmpp's memory with the GC off
                res[f"{who}_max_rss_mb"] = done["max_rss_mb"]
        for k in ("lat_p50_ms", "lat_p99_ms", "lat_max_ms", "lat_mean_ms"):
            if k in snk and not (direction == "outbound" and not sc.paced):  # preloaded: no per-line send time
                res[k] = snk[k]
        if direction == "inbound":
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

    # xmpp N:M@R
    def run_xmpp(self) -> dict:
        """The rooms figures for N MUC rooms on one bot JID, then M lines inbound and M outbound."""
        sc, prosody = self.sc, self.prosody
        fe = self.start_frontend()
        res = self.measure_rooms(fe, lambda k: xmpp_join_spec(prosody, k), min(600.0, 60 + sc.rooms * 0.05),
                                 prosody.port)
        if res["joined"] < sc.rooms:
            return res  # a failure row already (measure_rooms): no traffic without every room
        deadline_s, idle_s = self.load_deadline()
        human = {"host": prosody.host, "port": prosody.port, "jid": f"{XMPP_HUMAN[0]}@{prosody.domain}",
                 "password": XMPP_HUMAN[1], "muc_domain": prosody.muc_domain, "rooms": sc.rooms,
                 "messages": sc.messages, "rate": sc.rate, "idle_s": idle_s, "deadline_s": deadline_s,
                 "join_timeout": 60 + sc.rooms * 0.05}
        ready_timeout = 90 + sc.rooms * 0.1
        for direction in ("inbound", "outbound"):
            if direction == "inbound":
                sink = self.worker("collector", {"redis_url": self.redis_srv.url, "messages": sc.messages,
                                                 "idle_s": idle_s, "deadline_s": deadline_s})
                source = self.worker("xmpp", {**human, "mode": "send", "nick": "hin"}, name="xmpp-send")
            else:
                sink = self.worker("xmpp", {**human, "mode": "listen", "nick": "hout"}, name="xmpp-listen")
                source = self.worker("pusher", {"redis_url": self.redis_srv.url, "rooms": sc.rooms,
                                                "messages": sc.messages, "rate": sc.rate})
            part = self.measure_load(fe, direction, sink, source, deadline_s, idle_s, ready_timeout,
                                     server_pid=prosody.proc.pid)
            sink.close()
            source.close()
            prefix = "in_" if direction == "inbound" else "out_"
            if part.pop("ok", True) is False:
                res["ok"] = False
                res["error"] = "; ".join(filter(None, [res.get("error"), f"{direction}: {part.pop('error')}"]))
            res.update({prefix + k: v for k, v in part.items()})
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
