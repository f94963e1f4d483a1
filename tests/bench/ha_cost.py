"""What ``redis_wait_replicas`` costs, and how much of Redis greenroom uses (issue 17).

    python -m tests.bench.ha_cost                     # the default scenarios, wait 0 and 1, 3 runs each
    python -m tests.bench.ha_cost --scenario outbound:100:200000@20000 --wait 1 --runs 1

Each run is a ``tests.bench`` run (``scenarios.Bench``: InspIRCd, the ticker, the load generators, a
``greenroom run`` process) on a Redis with one replica attached, and the frontend started with
``GREENROOM_REDIS_WAIT_REPLICAS`` set. Besides the bench's figures (lines/s, CPU per line, latency)
each row has the primary's CPU over the same window (``redis_cpu_pct``, sampled from /proc like the
frontend's), the commands it ran (``INFO stats``) and so its CPU per command and per line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import redis

from tests.bench import procs
from tests.bench.runner import greenroom_cmd
from tests.bench.scenarios import Bench, FrontendSpec, Options, Scenario, ScenarioFailed, log
from tests.bench.servers import find_binary

DEFAULT = ["inbound:100:300000", "outbound:100:200000", "inbound:1000:20000@2000", "outbound:1000:20000@2000"]


class ReplicatedBench(Bench):
    """A bench run whose Redis has a replica (WAIT needs one to answer)."""

    def __enter__(self) -> "ReplicatedBench":
        super().__enter__()
        port = procs.free_port()
        workdir = os.path.join(self.dir, "replica")
        os.makedirs(workdir, exist_ok=True)
        self.replica = procs.spawn(
            [find_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", workdir, "--daemonize", "no", "--protected-mode", "no",
             "--replicaof", "127.0.0.1", str(self.redis_srv.port), "--repl-diskless-sync-delay", "0",
             "--logfile", os.path.join(workdir, "redis.log")], log_path=os.path.join(workdir, "redis.out"))
        self.stack.callback(procs.stop, self.replica, 5)
        procs.wait_port(port, 20, self.replica)
        deadline = time.monotonic() + 20
        while self.r.info("replication").get("connected_slaves", 0) < 1:
            if time.monotonic() > deadline:
                raise ScenarioFailed("the replica did not attach")
            time.sleep(0.05)
        return self

    def measure_load(self, fe, direction, sink, source, deadline_s, idle_s, ready_timeout=180, server_pid=None):
        before = _redis_figures(self.r)
        res = super().measure_load(fe, direction, sink, source, deadline_s, idle_s, ready_timeout,
                                   server_pid=self.redis_srv.proc.pid)
        after = _redis_figures(self.r)
        commands = after["commands"] - before["commands"] - 2  # our own two INFOs
        cpu = after["cpu_s"] - before["cpu_s"]
        res.update(redis_cpu_pct=res.pop("server_cpu_pct"), redis_commands=commands,
                   redis_cpu_s=cpu, redis_us_per_command=cpu / max(1, commands) * 1e6,
                   redis_commands_per_line=commands / max(1, res["received"]),
                   redis_us_per_line=cpu / max(1, res["received"]) * 1e6)
        return res


def _redis_figures(r: redis.Redis) -> dict:
    info = r.info()
    return {"commands": int(info["total_commands_processed"]),
            "cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"])}


def run(scenario: Scenario, wait: int, opts: Options) -> dict:
    cmd = greenroom_cmd()
    if cmd is None:
        raise SystemExit("greenroom is not installed")
    # room_event_rate 0: the inbound limit per room (a protection, default 100 lines/s per room) would
    # drop most of a max-speed run over 100 rooms; this measures the pipeline
    spec = FrontendSpec(f"greenroom-wait{wait}", cmd, env={"GREENROOM_METRICS_ADDR": "127.0.0.1:{free_port}",
                                                           "GREENROOM_ROOM_EVENT_RATE": "0",
                                                           "GREENROOM_REDIS_WAIT_REPLICAS": str(wait)})
    row = {"scenario": scenario.name, "wait_replicas": wait, "ok": True}
    started = time.time()
    try:
        with ReplicatedBench(scenario, spec, opts) as bench:
            row.update(bench.run())
    except ScenarioFailed as exc:
        row.update(ok=False, error=str(exc)[:1000])
    row["duration_s"] = round(time.time() - started, 1)
    return row


COLUMNS = [("scenario", "{}"), ("wait_replicas", "{}"), ("runs", "{}"), ("msgs_per_s", "{:,.0f}"), ("cpu_us_per_msg", "{:.1f}"),
           ("lat_p50_ms", "{:.2f}"), ("lat_p99_ms", "{:.2f}"), ("redis_cpu_pct", "{:.1f}"),
           ("redis_us_per_command", "{:.2f}"), ("redis_commands_per_line", "{:.3f}"), ("redis_us_per_line", "{:.2f}"),
           ("lost", "{}")]


def medians(rows: list[dict]) -> list[dict]:
    """One row per (scenario, wait): the median of each figure over the runs that passed."""
    out = []
    keys = list(dict.fromkeys((r["scenario"], r["wait_replicas"]) for r in rows))
    for scenario, wait in keys:
        runs = [r for r in rows if (r["scenario"], r["wait_replicas"]) == (scenario, wait)]
        good = [r for r in runs if r.get("ok")]
        row = {"scenario": scenario, "wait_replicas": wait, "runs": f"{len(good)}/{len(runs)}", "ok": bool(good)}
        for name, _ in COLUMNS[3:]:
            values = sorted(r[name] for r in good if r.get(name) is not None)
            if values:
                row[name] = statistics.median(values)
        if not good:
            row["error"] = runs[-1].get("error")
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    out = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for name, fmt in COLUMNS:
            value = row.get(name)
            cells.append("" if value is None else fmt.format(value))
        out.append("| " + " | ".join(cells) + " |" + ("" if row.get("ok") else f" FAILED: {row.get('error')}"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.ha_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", action="append", default=[])
    p.add_argument("--wait", action="append", type=int, default=[], help="redis_wait_replicas (default 0 and 1)")
    p.add_argument("--runs", type=int, default=3, help="runs of each (scenario, wait), alternating; medians")
    p.add_argument("--out", default=None, help="JSON lines output")
    args = p.parse_args(argv)
    procs.raise_nofile()
    opts = Options(idle_s=1.0)
    rows = []
    for n in range(args.runs):
        for name in args.scenario or DEFAULT:
            for wait in args.wait or [0, 1]:
                log(f"run {n + 1}/{args.runs}: {name} with redis_wait_replicas={wait}")
                row = run(Scenario.parse(name), wait, opts)
                rows.append(row)
                log(json.dumps({k: row.get(k) for k, _ in COLUMNS}))
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    print(table(medians(rows)))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
