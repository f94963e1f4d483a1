"""Child processes and /proc figures: every child the bench starts dies with it, and has a raised fd limit."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from typing import Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not glibc
    _libc = None


def raise_nofile(want: int = 1_048_576) -> tuple[int, int]:
    """Soft open-file limit up to ``want`` (the hard limit too when allowed); returns the new limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want, want
        except (ValueError, OSError):
            pass  # no CAP_SYS_RESOURCE: the soft limit can still go up to the hard one
    new_soft = hard if hard == resource.RLIM_INFINITY or hard < want else want
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def child_setup() -> None:
    """preexec_fn: raise RLIMIT_NOFILE, die with the bench (SIGKILL on parent death)."""
    raise_nofile()
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv: list[str], *, env: dict | None = None, log_path: str | None = None,
          stdin=None, stdout=None, cwd: str | None = None) -> subprocess.Popen:
    """Popen in its own session (a terminal's Ctrl-C reaches only the bench, which then cleans up)."""
    log = open(log_path, "ab") if log_path else None
    try:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else (log or subprocess.DEVNULL),
                                stderr=log or subprocess.DEVNULL, preexec_fn=child_setup,
                                start_new_session=True)
    finally:
        if log:
            log.close()


def stop(proc: subprocess.Popen | None, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Signal one child by pid (its session too: nothing it started survives), then SIGKILL if needed."""
    if proc is None or proc.poll() is not None:
        return
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, s)
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(s)
            except ProcessLookupError:
                return
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")
            time.sleep(0.05)


# ---- /proc figures -------------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """pid and all its descendants (a frontend command may be a wrapper that starts the real daemon)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the processes (all their threads, living and ended), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / CLK_TCK


def rss_kb(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def tcp_connections_to(pids: Iterable[int], port: int) -> int:
    """Established TCP connections the processes hold to 127.0.0.1:port (their sockets vs /proc/net/tcp)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    want = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    f = line.split()
                    if f[3] == "01" and f[2].endswith(want) and f[9] in inodes:
                        count += 1
        except OSError:
            continue
    return count


class Sampler:
    """Samples CPU seconds and RSS of a process set every ``interval`` s in a thread, so a window's CPU
    can be read afterwards for any two instants (linear interpolation between samples)."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: list[tuple[int, float, int]] = []  # (monotonic ns, cpu s, rss kB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, float, int]:
        s = (time.monotonic_ns(), cpu_seconds(self.pids), rss_kb(self.pids))
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "Sampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sample()

    def cpu_at(self, t_ns: int) -> float:
        s = self.samples
        if not s:
            return 0.0
        if t_ns <= s[0][0]:
            return s[0][1]
        for (t0, c0, _), (t1, c1, _) in zip(s, s[1:]):
            if t0 <= t_ns <= t1:
                return c0 + (c1 - c0) * (t_ns - t0) / max(1, t1 - t0)
        return s[-1][1]

    def peak_rss_kb(self, t0_ns: int = 0, t1_ns: int | None = None) -> int:
        vals = [r for t, _, r in self.samples if t >= t0_ns and (t1_ns is None or t <= t1_ns)]
        return max(vals) if vals else 0
