"""redis-server, InspIRCd and prosody for the bench: free loopback ports, temp dirs, always stopped."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.bench import procs
from tests.support.servers import ProsodyServer

ROOT = Path(__file__).resolve().parents[2]
INSPIRCD_TEMPLATE = ROOT / "configs" / "inspircd.conf.in"


def find_binary(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    for d in ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/lib/inspircd"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def version_of(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - only for the report
        return f"unknown ({exc})"


class RedisServer:
    def __init__(self, workdir: str) -> None:
        self.dir = workdir
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        binary = find_binary("redis-server")
        if not binary:
            raise RuntimeError("redis-server not found (bash tests/bench/install.sh)")
        for _ in range(5):
            self.port = procs.free_port()
            self.proc = procs.spawn(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self.dir, "--daemonize", "no", "--protected-mode", "no", "--maxclients", "10000",
                 "--logfile", os.path.join(self.dir, "redis.log")],
                log_path=os.path.join(self.dir, "redis.out"))
            try:
                procs.wait_port(self.port, timeout, self.proc)
                return self
            except RuntimeError:  # lost the port race: try another
                procs.stop(self.proc)
        raise RuntimeError(f"redis-server would not start; see {self.dir}/redis.log")

    def stop(self) -> None:
        procs.stop(self.proc, timeout=5)


class InspIRCd:
    """InspIRCd 3 from configs/inspircd.conf.in, in the foreground, pid and log in its temp dir."""

    def __init__(self, workdir: str, maxchans: int = 200_000) -> None:
        self.dir = workdir
        self.maxchans = maxchans
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "InspIRCd":
        binary = find_binary("inspircd")
        if not binary:
            raise RuntimeError("inspircd not found (bash tests/bench/install.sh)")
        template = INSPIRCD_TEMPLATE.read_text()
        Path(self.dir, "motd.txt").write_text("greenroom bench\n")
        for _ in range(5):
            self.port = procs.free_port()
            conf = Path(self.dir, "inspircd.conf")
            conf.write_text(template.replace("@PORT@", str(self.port)).replace("@DIR@", self.dir)
                            .replace("@MAXCHANS@", str(self.maxchans)).replace("@SOFTLIMIT@", "1000000"))
            argv = [binary, "--config", str(conf), "--nofork"]
            if os.geteuid() == 0:  # Debian's inspircd refuses to run as root without it
                argv.append("--runasroot")
            self.proc = procs.spawn(argv, log_path=os.path.join(self.dir, "inspircd.out"), cwd=self.dir)
            try:
                procs.wait_port(self.port, timeout, self.proc)
                return self
            except RuntimeError:
                procs.stop(self.proc)
        raise RuntimeError(f"inspircd would not start; see {self.dir}/inspircd.out and inspircd.log")

    def stop(self) -> None:
        procs.stop(self.proc, timeout=5)


class Prosody(ProsodyServer):
    """prosody for the XMPP scenario: the test suite's server (``tests/support/servers.py``, config from
    ``configs/prosody.cfg.lua.in``: plaintext c2s on loopback, no ``mod_limits`` so no c2s rate limit, a
    MUC component ``conference.localhost``) with a MUC room cache that holds every room of the run.

    prosody keeps at most ``muc_room_cache_size`` (default 100) rooms live and swaps the least recently
    used one to disk to make room for another, occupants and all; round robin over more rooms than that
    would measure prosody's disk swapping. As root it runs as user ``prosody``, so ``workdir`` and its
    parents must be traversable by that user (the bench makes its temp dir 0755).
    """

    # prosody leaves Nagle on (net.server_epoll ``nagle = true``): a small write waits for the ACK of the
    # previous one, which a client acking lazily (delayed ACK) holds for up to 40 ms (see the InspIRCd
    # notes in BENCHMARKS.md). Off here, so latency is the frontend's, not the server's socket options.
    GLOBAL = "-- bench: TCP_NODELAY on every c2s socket\nnetwork_settings = { nagle = false }\n\n"

    def __init__(self, workdir: str, rooms: int) -> None:
        super().__init__(workdir)
        self.rooms = rooms

    def _prepare(self) -> None:
        super()._prepare()
        with open(self.conf_path) as fh:
            conf = fh.read()
        with open(self.conf_path, "w") as fh:
            fh.write(self.GLOBAL + conf)  # first: the global section
            # last: the config ends in the MUC component's section
            fh.write(f"\n\t-- bench: every room stays live\n\tmuc_room_cache_size = {max(100, 2 * self.rooms)}\n")


def irc_register(port: int, nick: str, timeout: float = 30.0) -> tuple[socket.socket, bytes]:
    """A registered client connection (connects are retried: the server may be busy accepting thousands)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    sock.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
    buf = b""
    sock.settimeout(1.0)
    while b" 001 " not in buf:
        if time.monotonic() > deadline:
            sock.close()
            raise TimeoutError(f"{nick}: no 001 within {timeout}s; got {buf[-300:]!r}")
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            raise ConnectionError(f"{nick}: closed during registration: {buf[-300:]!r}")
        buf += data
        for line in data.split(b"\r\n"):
            if line.startswith(b"PING "):
                sock.sendall(b"PONG " + line[5:] + b"\r\n")
    return sock, buf
