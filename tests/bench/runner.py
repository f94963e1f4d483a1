"""``python -m tests.bench``: every scenario, for greenroom and the Go reference back to back, N runs each.

Examples:
  python -m tests.bench                       # everything, greenroom and (if Go is there) the Go reference
  python -m tests.bench --quick               # small sizes, one run: a smoke run in a minute or two
  python -m tests.bench --frontends go --scenario rooms:1000 --runs 1
  python -m tests.bench --frontends greenroom --scenario xmpp:20:2000@200 --runs 1   # XMPP (prosody)
  python -m tests.bench --frontend-cmd 'REDIS_ADDR={redis_addr} /tmp/go-reference' --label go2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.bench import procs
from tests.bench.report import summarize
from tests.bench.scenarios import FrontendSpec, Options, Scenario, log, run_one
from tests.bench.servers import ROOT, find_binary, version_of

FULL = [
    "rooms:1000", "rooms:5000", "rooms:10000",
    "inbound:100:1000000", "inbound:1000:1000000", "inbound:100:200000@20000", "inbound:1000:20000@2000",
    "outbound:100:1000000", "outbound:1000:1000000", "outbound:100:200000@20000", "outbound:1000:20000@2000",
    "shared:100000:100",
    "xmpp:200:5000@500",
]
QUICK = [
    "rooms:500",
    "inbound:20:100000", "inbound:100:40000@20000", "inbound:200:4000@2000",
    "outbound:20:100000", "outbound:100:40000@20000", "outbound:200:4000@2000",
    "shared:5000:10",
    "xmpp:20:2000@200",
]
GO_SRC = ROOT.parent / "shared" / "go-reference"
GO_BIN = Path("/tmp/go-reference")


def greenroom_cmd() -> str | None:
    exe = Path(sys.executable).with_name("greenroom")
    if exe.exists():
        return f"{exe} run --redis-url {{redis_url}}"
    if (ROOT / "frontend" / "cli.py").exists():
        return f"{sys.executable} -m frontend.cli run --redis-url {{redis_url}}"
    return None


def go_binary(src: Path, out: Path) -> Path | None:
    """The Go reference, built when Go and its source are there and the binary is missing or older."""
    main_go = src / "main.go"
    if out.exists() and (not main_go.exists() or out.stat().st_mtime >= main_go.stat().st_mtime):
        return out
    go = shutil.which("go")
    if not go or not main_go.exists():
        return out if out.exists() else None
    log(f"building the Go reference: {src} -> {out}")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode",
           "GOCACHE": os.environ.get("GOCACHE", "/tmp/go-build-cache")}
    res = subprocess.run([go, "build", "-o", str(out), "."], cwd=str(src), env=env, capture_output=True,
                         text=True, timeout=600)
    if res.returncode != 0:
        log(f"Go build failed: {res.stderr.strip()[-500:]}")
        return None
    return out


def prosody_version() -> str | None:
    """The installed prosody's version from dpkg (``prosody --version`` may wait on a terminal)."""
    if not find_binary("prosody"):
        return None
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "prosody"], capture_output=True, text=True,
                             timeout=10, stdin=subprocess.DEVNULL)
        return f"prosody {out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else "prosody"
    except (OSError, subprocess.SubprocessError):
        return "prosody"


def machine_info() -> dict:
    info = {"type": "meta", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
            "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
        with open("/proc/meminfo") as fh:
            info["mem_gb"] = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        from importlib.metadata import version
        for pkg in ("gevent", "greenlet", "redis", "hiredis", "irc", "ujson", "slixmpp"):
            try:
                info[pkg] = version(pkg)
            except Exception:  # noqa: BLE001
                pass
    except ImportError:
        pass
    rs = find_binary("redis-server")
    info["redis_server"] = version_of([rs, "--version"]) if rs else None
    ircd = find_binary("inspircd")
    info["inspircd"] = version_of([ircd, "--version"]) if ircd else None
    info["prosody"] = prosody_version()
    go = shutil.which("go")
    info["go"] = version_of([go, "version"]) if go else None
    info["nofile"] = list(procs.raise_nofile())
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frontend-cmd", action="append", default=[],
                   help="frontend command ({redis_url}, {redis_addr}, {free_port}; leading NAME=value set env); repeatable. "
                        "Default: greenroom and the Go reference")
    p.add_argument("--label", action="append", default=[], help="label for each --frontend-cmd, in order")
    p.add_argument("--frontends", default="greenroom,go",
                   help="built-in frontends when no --frontend-cmd: greenroom, go (default both)")
    p.add_argument("--scenario", action="append", default=[], metavar="NAME",
                   help="rooms:N, shared:N:C, inbound:K:M[@R], outbound:K:M[@R], xmpp:N:M@R (N MUC rooms on "
                        "one XMPP stream, then M lines each way at R/s; only frontends that speak XMPP); "
                        "repeatable (default: all)")
    p.add_argument("--runs", type=int, default=None, help="runs per scenario and frontend (default 3, quick 1)")
    p.add_argument("--quick", action="store_true", help="small sizes and a 3 s idle window")
    p.add_argument("--idle", type=float, default=None, help="idle CPU window, s (default 10, quick 3)")
    p.add_argument("--out", default=None, help="JSON lines output (default tests/bench/results/<time>.jsonl)")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, configs)")
    p.add_argument("--go-src", default=str(GO_SRC))
    p.add_argument("--go-bin", default=str(GO_BIN))
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="run py-spy on the frontend over each measured window; collapsed stacks to DIR")
    p.add_argument("--profile-native", action="store_true",
                   help="with --profile: C frames too (gevent, hiredis, the interpreter); py-spy then pauses "
                        "the frontend for each sample (accurate stacks, slower frontend)")
    p.add_argument("--profile-blocking", action="store_true",
                   help="with --profile: py-spy pauses the frontend for each sample (whole stacks, never torn)")
    p.add_argument("--profile-rate", type=int, default=100, help="with --profile: samples per second")
    p.add_argument("--report", metavar="JSONL", default=None,
                   help="only print the table of an earlier run's JSON lines")
    p.add_argument("--sender-conns", type=int, default=4, help="IRC connections of the inbound sender")
    return p.parse_args(argv)


def frontends(args: argparse.Namespace) -> list[FrontendSpec]:
    if args.frontend_cmd:
        out = []
        for i, cmd in enumerate(args.frontend_cmd):
            label = args.label[i] if i < len(args.label) else ("go" if "go-reference" in cmd else f"frontend{i + 1}")
            out.append(FrontendSpec(label, cmd, shares_connections=label != "go", speaks_xmpp=label != "go"))
        return out
    out = []
    for name in [n.strip() for n in args.frontends.split(",") if n.strip()]:
        if name == "greenroom":
            cmd = greenroom_cmd()
            if cmd:
                # the metrics server on, as in production, but on a free port (its default may be taken)
                out.append(FrontendSpec("greenroom", cmd,
                                        env={"GREENROOM_METRICS_ADDR": "127.0.0.1:{free_port}"}))
            else:
                log("greenroom is not installed (no greenroom script / frontend.cli): skipped")
        elif name == "go":
            binary = go_binary(Path(args.go_src), Path(args.go_bin))
            if binary:
                out.append(FrontendSpec("go", f"REDIS_ADDR={{redis_addr}} {binary}", shares_connections=False,
                                        speaks_xmpp=False))
            else:
                log("Go reference not available (no Go toolchain or source): skipped")
        else:
            raise SystemExit(f"unknown frontend {name!r}")
    return out


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM: the same clean-up as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        rows = [json.loads(line) for line in open(args.report) if line.strip()]
        meta = next((r for r in rows if r.get("type") == "meta"), {})
        labels = list(meta.get("frontends") or dict.fromkeys(r["frontend"] for r in rows if r.get("type") == "result"))
        print(summarize(rows, labels)[0])
        return 0
    runs = args.runs or (1 if args.quick else 3)
    names = args.scenario or (QUICK if args.quick else FULL)
    scenarios = [Scenario.parse(n) for n in names]
    fes = frontends(args)
    if not fes:
        log("no frontend to run")
        return 2
    opts = Options(idle_s=args.idle or (3.0 if args.quick else 10.0), keep=args.keep,
                   sender_conns=args.sender_conns, profile_dir=args.profile,
                   profile_native=args.profile_native, profile_blocking=args.profile_blocking,
                   profile_rate=args.profile_rate)
    out = Path(args.out) if args.out else ROOT / "tests" / "bench" / "results" / time.strftime("%Y%m%d-%H%M%S.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even when started with SIGINT ignored (a background job)
    procs.raise_nofile()
    meta = machine_info()
    meta.update(argv=sys.argv[1:], frontends={f.label: f.cmd for f in fes}, runs=runs, scenarios=names,
                idle_s=opts.idle_s)
    log(f"{len(scenarios)} scenarios x {runs} runs x {[f.label for f in fes]} -> {out}")
    rows: list[dict] = [meta]
    interrupted = False
    with open(out, "w") as fh:
        fh.write(json.dumps(meta) + "\n")
        try:
            for sc in scenarios:
                for run in range(1, runs + 1):
                    for fe in fes:  # back to back: the frontends alternate within each run
                        if sc.kind == "shared" and not fe.shares_connections:
                            continue  # one connection per room: 100,000 rooms would not fit its fd limit
                        if sc.kind == "xmpp" and not fe.speaks_xmpp:
                            continue  # IRC only (the Go reference): reported as "not run"
                        log(f"{fe.label}: {sc.name} run {run}/{runs} ...")
                        row = run_one(sc, fe, opts)
                        row["run"] = run
                        rows.append(row)
                        fh.write(json.dumps(row) + "\n")
                        fh.flush()
                        log(f"{fe.label}: {sc.name} run {run}: " + brief(row))
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: servers and workers stopped; writing what was measured")
        text, summaries = summarize(rows, [f.label for f in fes])
        for s in summaries:
            fh.write(json.dumps(s) + "\n")
    command = "python -m tests.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    xmpp = (f", {meta.get('prosody')}, slixmpp {meta.get('slixmpp')}"
            if any(sc.kind == "xmpp" for sc in scenarios) else "")
    header = (f"{meta.get('cores')} cores, {meta.get('cpu')}; Python {meta['python']}, gevent {meta.get('gevent')}, "
              f"{meta.get('redis_server')}, {meta.get('inspircd')}, {meta.get('go') or 'no Go'}{xmpp}\n"
              f"command: {command}; runs: {runs}; idle window {opts.idle_s:.0f} s\n")
    table_path = out.with_suffix(".md")
    table_path.write_text(header + "\n" + text + "\n")
    print(header)
    print(text)
    print(f"\nJSON lines: {out}\ntable: {table_path}")
    return 130 if interrupted else 0


def brief(row: dict) -> str:
    if not row.get("ok"):
        return f"FAILED ({row.get('duration_s')} s): {str(row.get('error'))[:300]}"
    traffic = ["msgs_per_s", "cpu_us_per_msg", "lat_p50_ms", "lat_p99_ms", "source_cpu_pct", "sink_cpu_pct",
               "server_cpu_pct", "redis_cpu_us_per_msg", "redis_slowest_ms", "redis_slowest"]
    keys = (["join_s", "rss_kb_per_room", "idle_cpu_pct", "connections"] + traffic
            + [p + k for p in ("in_", "out_") for k in traffic])
    parts = [f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys
             if row.get(k) is not None]
    return " ".join(parts) + f" ({row.get('duration_s')} s)"


if __name__ == "__main__":
    sys.exit(main())
