"""``greenroom run --workers N``: one host, all its cores. N frontend processes under one supervisor.

Each worker is a whole frontend (``greenroom run``) with its own id, ``<base>:w<i>`` (``base`` is the
configured ``frontend_id``, or the host name), so a worker that is restarted comes back as itself and
finds its rooms at once; the workers share the rooms like any frontends on one Redis (issue 15).

The supervisor:
- restarts a worker that died (exit, signal, or silence: each worker's systemd notifications go to a
  socket of the supervisor, and a worker that stops sending WATCHDOG=1 is killed and restarted), with
  a growing delay when one keeps dying;
- speaks for the host to systemd: READY=1 once every worker said READY=1, WATCHDOG=1 while it runs,
  STOPPING=1 on the way out, so ``configs/greenroom.service`` works unchanged;
- serves the one metrics address (``metrics_addr``): ``/metrics`` is every worker's metrics with a
  ``worker`` label, ``/healthz`` and ``/readyz`` are 200 only when they are for every worker (the body
  has each worker's answer). Workers listen on free loopback ports of their own;
- passes SIGTERM/SIGINT (graceful stop: each worker hands its rooms to the others, or leaves them for
  the next start) and SIGHUP (reload) to the workers; a second SIGTERM kills them at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from .config import Settings
from .metrics import parse_addr
from .pacing import Backoff
from .systemd import notify, watchdog_interval

log = logging.getLogger(__name__)

#: a worker that sent no WATCHDOG=1 for this long is killed and restarted
WORKER_WATCHDOG = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_count(value: str) -> int:
    """``--workers``: a number, or ``auto`` (one per core)."""
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    n = int(value)
    if n < 1:
        raise ValueError("--workers must be at least 1 (or auto)")
    return n


@dataclass
class Worker:
    index: int
    frontend_id: str
    metrics_port: int
    proc: subprocess.Popen | None = None
    ready: bool = False
    last_ping: float = 0.0
    started_at: float = 0.0
    restarts: int = 0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0))


class WorkerSupervisor:
    """N frontend processes, one supervisor (this process)."""

    def __init__(self, settings: Settings, count: int, argv: Sequence[str], *, base_id: str) -> None:
        self.settings = settings
        self.argv = list(argv)  # the `greenroom run` arguments, passed to each worker
        self._dir = tempfile.mkdtemp(prefix="greenroom-workers-")
        self._notify_path = os.path.join(self._dir, "notify.sock")
        self.workers = [Worker(i, f"{base_id}:w{i}", _free_port()) for i in range(count)]
        self._by_pid: dict[int, Worker] = {}
        self._stopping = False
        self._done = gevent.event.Event()
        self._ready_sent = False
        self._server: WSGIServer | None = None
        self._wdog = watchdog_interval()

    # ------------------------------------------------------------------------------- workers
    def _spawn(self, worker: Worker) -> None:
        env = {**os.environ, "GREENROOM_FRONTEND_ID": worker.frontend_id,
               "GREENROOM_METRICS_ADDR": f"127.0.0.1:{worker.metrics_port}",
               "NOTIFY_SOCKET": self._notify_path, "WATCHDOG_USEC": str(int(WORKER_WATCHDOG / 4 * 2e6)),
               "GREENROOM_WORKER": str(worker.index)}
        env.pop("WATCHDOG_PID", None)
        worker.proc = subprocess.Popen([sys.executable, "-m", "frontend.cli", "run", *self.argv], env=env)
        worker.ready, worker.started_at = False, time.monotonic()
        worker.last_ping = worker.started_at
        self._by_pid[worker.proc.pid] = worker
        log.info("worker %d (%s) started, pid %d", worker.index, worker.frontend_id, worker.proc.pid)

    def _watch(self, worker: Worker) -> None:
        """One greenlet per worker: waits for its process to end, restarts it unless stopping."""
        while not self._stopping:
            assert worker.proc is not None
            code = worker.proc.wait()  # gevent-patched subprocess: cooperative
            self._by_pid.pop(worker.proc.pid, None)
            if self._stopping:
                return
            if time.monotonic() - worker.started_at > 60:
                worker.backoff.reset()
            delay = worker.backoff.next()
            worker.restarts += 1
            log.error("worker %d (%s) ended with status %s; restarting it in %.1fs", worker.index,
                      worker.frontend_id, code, delay)
            gevent.sleep(delay)
            if not self._stopping:
                self._spawn(worker)

    def _notifications(self) -> None:
        """The workers' sd_notify datagrams: READY=1, WATCHDOG=1, STOPPING=1."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self._notify_path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        while not self._stopping:
            try:
                data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except OSError:
                return
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], sys.byteorder)
            worker = self._by_pid.get(pid) if pid is not None else None
            if worker is None:
                continue
            for line in data.decode(errors="replace").splitlines():
                if line == "READY=1":
                    worker.ready = True
                    log.info("worker %d ready", worker.index)
                    self._maybe_ready()
                elif line == "WATCHDOG=1":
                    worker.last_ping = time.monotonic()

    def _maybe_ready(self) -> None:
        if not self._ready_sent and all(w.ready for w in self.workers):
            self._ready_sent = True
            log.info("all %d workers ready", len(self.workers))
            notify("READY=1")

    def _watchdog(self) -> None:
        """Kill a worker that stopped pinging (a hub stuck in a runaway greenlet); ping systemd."""
        while not self._stopping:
            now = time.monotonic()
            for worker in self.workers:
                proc = worker.proc
                # only once it is ready: a worker waiting for Redis at start has no watchdog yet
                if (proc is not None and proc.poll() is None and worker.ready
                        and now - worker.last_ping > WORKER_WATCHDOG):
                    log.error("worker %d sent no watchdog ping for %.0fs: killing it", worker.index,
                              now - worker.last_ping)
                    proc.kill()
            if self._wdog:
                notify("WATCHDOG=1")
            gevent.sleep(min(self._wdog or WORKER_WATCHDOG / 4, WORKER_WATCHDOG / 4))

    # ------------------------------------------------------------------------------- HTTP
    def _fetch(self, worker: Worker, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            return 0, json.dumps({"reason": f"worker not answering: {exc}"}).encode()

    def app(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = generate_latest(_Merged(self._metrics_texts()))
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path in ("/healthz", "/readyz"):
            answers = {}
            ok = True
            for worker in self.workers:
                code, body = self._fetch(worker, path)
                try:
                    doc: Any = json.loads(body or b"{}")
                except ValueError:
                    doc = {"reason": "not JSON"}
                answers[worker.frontend_id] = {"status": code, **(doc if isinstance(doc, dict) else {})}
                ok = ok and code == 200
            code = 200 if ok else 503
            start_response(f"{code} {'OK' if ok else 'Service Unavailable'}",
                           [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [json.dumps({"ok" if path == "/healthz" else "ready": ok, "workers": answers}).encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz, /readyz\n"]

    def _metrics_texts(self) -> list[tuple[str, str]]:
        jobs = [gevent.spawn(self._fetch, w, "/metrics") for w in self.workers]
        gevent.joinall(jobs, timeout=6)
        out = []
        for worker, job in zip(self.workers, jobs):
            code, body = job.value if job.successful() and job.value else (0, b"")
            if code == 200:
                out.append((str(worker.index), body.decode("utf-8", "replace")))
        return out

    # ---------------------------------------------------------------------------- lifecycle
    def run(self) -> int:
        notify_task = gevent.spawn(self._notifications)
        gevent.sleep(0)  # the socket is bound before the first worker starts
        for worker in self.workers:
            self._spawn(worker)
        watchers = [gevent.spawn(self._watch, w) for w in self.workers]
        dog = gevent.spawn(self._watchdog)
        if self.settings.metrics_addr:
            self._server = WSGIServer(parse_addr(self.settings.metrics_addr), self.app, log=None, error_log=log)
            try:
                self._server.start()
                log.info("metrics of %d workers on http://%s/metrics", len(self.workers), self.settings.metrics_addr)
            except OSError as exc:
                log.error("metrics server cannot listen on %s (%s)", self.settings.metrics_addr, exc)
                self._server = None
        signals = {"n": 0}

        def stop(signum: int) -> None:
            signals["n"] += 1
            if signals["n"] > 1:
                log.warning("second signal: killing the workers")
                for w in self.workers:
                    if w.proc is not None and w.proc.poll() is None:
                        w.proc.kill()
                os._exit(1)
            gevent.spawn(self._stop, signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, stop, signum)
        gevent.signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        self._done.wait()
        for task in (notify_task, dog, *watchers):
            task.kill(block=False)
        return 0

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signum)

    def _stop(self, signum: int) -> None:
        log.info("signal %s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        notify("STOPPING=1")
        self._stopping = True
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout + 10.0
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time: killing it", worker.index)
                proc.kill()
        if self._server is not None:
            self._server.stop(timeout=1)
        try:
            os.unlink(self._notify_path)
            os.rmdir(self._dir)
        except OSError:
            pass
        log.info("all workers stopped")
        self._done.set()


class _Merged:
    """A collector that yields every worker's metric families, each sample labelled ``worker``."""

    def __init__(self, texts: list[tuple[str, str]]) -> None:
        self._texts = texts

    def collect(self) -> Any:
        families: dict[str, Metric] = {}
        for worker, text in self._texts:
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value,
                                      sample.timestamp)
        yield from families.values()

