"""Real redis-server, ngircd and prosody for tests: loopback only, free ports, files in a work dir.

Every server is a child process started in the foreground with its log in its work dir. ``start()``
returns once the server answers (not merely once the port is open) and raises ``RuntimeError`` with
the log tail when it does not within ``START_TIMEOUT``. ``restart()`` keeps the port and the files.
Children are registered so ``kill_all()`` (conftest's ``atexit`` safety net) can SIGKILL strays, and
with a watchdog process that SIGKILLs them when this process dies without running ``atexit``
(SIGKILL, SIGTERM, a crash). Servers run in their own session: a Ctrl-C reaches only pytest.
Works with and without gevent monkey-patching.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from string import Template
from typing import Any, Optional, TypeVar

import redis

from tests.support.ports import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

S = TypeVar("S", bound="Server")

_children: list[subprocess.Popen] = []


def find_binary(name: str) -> str:
    """The path of a server binary (``/usr/sbin`` is not always on a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"{name} is not installed (`make servers` installs redis-server, ngircd, prosody)")


def kill_all() -> None:
    """SIGKILL every server child still running (the at-exit safety net)."""
    for proc in list(_children):
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(5)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        _reaper.tell("-", proc.pid)
    _children.clear()


_REAPER_CODE = """
import os, signal, sys
pids = set()
for line in sys.stdin:  # ends when the test process closes the pipe: it exited or was killed
    sign, _, pid = line.partition(" ")
    (pids.add if sign == "+" else pids.discard)(int(pid))
for pid in pids:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


class _Reaper:
    """A watchdog process that SIGKILLs the servers still running when this process dies, however.

    It reads "+ PID" / "- PID" lines from a pipe; EOF (we exited, even by SIGKILL) means "kill the rest".
    PR_SET_PDEATHSIG would not do: ngircd changes its uid to nobody, which clears it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None

    def _pipe(self) -> Any:
        if self._proc is None or self._proc.poll() is not None:
            argv = [sys.executable, "-I", "-S", "-c", _REAPER_CODE, "greenroom-test-reaper"]
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, start_new_session=True)
        return self._proc.stdin

    def tell(self, sign: str, pid: int) -> None:
        try:
            with self._lock:
                pipe = self._pipe()
                pipe.write(f"{sign} {pid}\n".encode())
                pipe.flush()
        except (OSError, ValueError):  # best effort: the safety net must never break a test
            pass


_reaper = _Reaper()


def log_tail(path: str, n: int = 40) -> str:
    """The last ``n`` lines of a log file (a note instead when there is none)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-n:])
    except OSError as exc:
        return f"(no log: {exc})"


def _connect(host: str, port: int, timeout: float = 0.5) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


class Server:
    """A server child process in the foreground; subclasses say how to run it and when it is ready."""

    name = "server"

    def __init__(self, workdir: str) -> None:
        self.workdir = os.path.abspath(str(workdir))
        os.makedirs(self.workdir, exist_ok=True)
        self.host = LOOPBACK
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(self.workdir, f"{self.name}.log")
        self.paused = False

    # -- what subclasses provide --------------------------------------------------------------------
    def _prepare(self) -> None:
        """Write config files for the current ports (called before every start)."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _popen_extra(self) -> dict[str, Any]:
        return {}

    def _ready(self) -> bool:
        """One short readiness probe; False (or an OSError) means "not yet"."""
        raise NotImplementedError

    def _pick_ports(self) -> None:
        self.port = free_port()

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self: S, timeout: float = START_TIMEOUT) -> S:
        """Start (a no-op when running) and return once the server answers."""
        if self.running:
            return self
        self._reap(signal.SIGKILL)  # forget a process that died on its own
        first = self.port == 0
        for attempt in range(3 if first else 1):
            if first:
                self._pick_ports()  # a new port only on the first start: restart() keeps it
            self._spawn()
            if self._wait_ready(timeout, give_up_on_exit=first and attempt < 2):
                return self
            self._reap(signal.SIGKILL)
        code = self.proc.returncode if self.proc is not None else None
        why = f"it exited with status {code}" if code is not None else f"not ready within {timeout:.0f}s"
        raise RuntimeError(f"{self.name} on {self.host}:{self.port} did not start: {why}; "
                           f"last lines of {self.log_path}:\n{self.log_tail()}")

    def _spawn(self) -> None:
        self._prepare()
        with open(self.log_path, "ab") as log:
            log.write(f"---- {time.strftime('%H:%M:%S')} starting {self.name} on port {self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
                                         **self._popen_extra())
        _children.append(self.proc)
        _reaper.tell("+", self.proc.pid)
        self.paused = False

    def _wait_ready(self, timeout: float, give_up_on_exit: bool) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                if give_up_on_exit:
                    return False  # most likely lost the race for the port: the caller tries another
                break
            try:
                if self._ready():
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL."""
        self._reap(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all (Redis saves nothing)."""
        self._reap(signal.SIGKILL)

    def restart(self: S, timeout: float = START_TIMEOUT) -> S:
        """Stop and start again on the same port with the same files."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the process hangs, its sockets stay open."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            self.paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        self.paused = False

    def _reap(self, sig: int, timeout: float = STOP_TIMEOUT) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                if sig != signal.SIGKILL:
                    proc.send_signal(signal.SIGCONT)  # a paused process handles SIGTERM only once resumed
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
            except ProcessLookupError:
                pass
        if proc in _children:
            _children.remove(proc)
            _reaper.tell("-", proc.pid)
        self.paused = False

    def log_tail(self, n: int = 50) -> str:
        """The last ``n`` lines of the server's log."""
        return log_tail(self.log_path, n)

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} in {self.workdir}>"


class RedisServer(Server):
    """redis-server without persistence."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        """A client for db 0 (bytes replies unless ``decode_responses=True`` is passed)."""
        options.setdefault("decode_responses", False)
        return redis.Redis(host=self.host, port=self.port, db=0, **options)

    def _argv(self) -> list[str]:
        return [find_binary("redis-server"), "--port", str(self.port), "--bind", self.host,
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                "--dir", self.workdir, "--logfile", "", "--maxclients", "10000"]

    def _ready(self) -> bool:
        with _connect(self.host, self.port) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")


class NgircdServer(Server):
    """ngircd named ``irc.test`` from ``configs/ngircd.conf.in``: no flood penalties, no lookups.

    Started as root, ngircd switches to user ``nobody`` by itself (it refuses to run as root).
    ``max_joins=N`` limits the channels per user (``MaxJoins``; ISUPPORT ``CHANLIMIT=#&+:N``, the N+1th
    JOIN gets 405); 0, the default here, is no limit.
    """

    name = "ngircd"
    server_name = "irc.test"

    def __init__(self, workdir: str, password: Optional[str] = None, max_joins: int = 0) -> None:
        super().__init__(workdir)
        self.password = password
        self.max_joins = max_joins
        self.conf_path = os.path.join(self.workdir, "ngircd.conf")

    def _prepare(self) -> None:
        motd = os.path.join(self.workdir, "ngircd.motd")
        include_dir = os.path.join(self.workdir, "ngircd.conf.d")
        os.makedirs(include_dir, exist_ok=True)
        with open(motd, "w") as fh:
            fh.write("greenroom test ircd\n")
        template = Template((CONFIGS / "ngircd.conf.in").read_text())
        with open(self.conf_path, "w") as fh:
            fh.write(template.substitute(port=self.port, motd_file=motd, include_dir=include_dir,
                                         password=self.password or "", max_joins=self.max_joins))
        for path in (self.workdir, include_dir):
            os.chmod(path, 0o755)
        for path in (motd, self.conf_path):
            os.chmod(path, 0o644)

    def _argv(self) -> list[str]:
        return [find_binary("ngircd"), "-n", "-f", self.conf_path]

    def _ready(self) -> bool:
        """A full registration gets 001."""
        with _connect(self.host, self.port) as sock:
            nick = f"probe{os.getpid() % 100000}{int(time.monotonic() * 1000) % 100000}"
            hello = f"PASS {self.password}\r\n" if self.password else ""
            sock.sendall(f"{hello}NICK {nick}\r\nUSER probe 0 * :readiness probe\r\n".encode())
            received = b""
            while b"\n" not in received or not _has_reply(received, b"001"):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                received += chunk
            sock.sendall(b"QUIT :ready\r\n")
            return True


def _has_reply(data: bytes, numeric: bytes) -> bool:
    return any(line.split(b" ")[1:2] == [numeric] for line in data.split(b"\r\n"))


class ProsodyServer(Server):
    """prosody from ``configs/prosody.cfg.lua.in``: plaintext c2s on loopback, a MUC component.

    ``tls=`` a ``tests.support.tls.CertFiles`` (e.g. ``TestPKI.server`` or ``.self_signed``) turns on
    mod_tls: STARTTLS on the c2s ``port`` and direct TLS (XEP-0368) on ``tls_port``, with that
    certificate; ``require_encryption=True`` sets ``c2s_require_encryption`` (no login before STARTTLS).

    The ``prosody`` binary refuses to run as root; as root we start it (and ``prosodyctl``, which would
    switch anyway) as user ``prosody``, which then needs to reach the work dir: each parent directory
    must be world-traversable (``tempfile.mkdtemp(dir="/tmp")`` chmod 0o755 is; pytest's ``tmp_path``
    is not). When it is not, or no ``prosody`` user exists, it runs as root with ``run_as_root``.
    """

    name = "prosody"
    domain = "localhost"
    muc_domain = "conference.localhost"

    def __init__(self, workdir: str, tls: Any = None, require_encryption: bool = False) -> None:
        if require_encryption and tls is None:
            raise ValueError("require_encryption needs tls= (a certificate to offer STARTTLS with)")
        super().__init__(workdir)
        self.tls = tls
        self.require_encryption = require_encryption
        self.tls_port = 0
        self.s2s_port = 0
        self.conf_path = os.path.join(self.workdir, "prosody.cfg.lua")
        self.data_dir = os.path.join(self.workdir, "data")
        self._user = self._run_as()

    def _run_as(self) -> Optional[pwd.struct_passwd]:
        """The account prosody must run as: None for "as we are", or the ``prosody`` user."""
        if os.geteuid() != 0:
            return None
        try:
            user = pwd.getpwnam("prosody")
        except KeyError:
            return None
        os.chmod(self.workdir, 0o755)
        return user if _world_traversable(self.workdir) else None

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.s2s_port = free_port()
        self.tls_port = free_port() if self.tls is not None else 0

    def _prepare(self) -> None:
        certs_dir = os.path.join(self.workdir, "certs")
        for path in (self.data_dir, certs_dir):
            os.makedirs(path, exist_ok=True)
        os.chmod(self.data_dir, 0o750)
        os.chmod(certs_dir, 0o755)
        if self._user is not None:  # what prosody and prosodyctl create in it is theirs already
            os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
        tls_settings = tls_module = direct_tls_ports = ""
        if self.tls is not None:  # copies prosody's own user can read (the key 0640, group prosody)
            cert, key = os.path.join(certs_dir, "server.crt"), os.path.join(certs_dir, "server.key")
            for src, dst, mode in ((self.tls.cert, cert, 0o644), (self.tls.key, key, 0o640)):
                shutil.copyfile(src, dst)
                os.chmod(dst, mode)
                if self._user is not None:
                    os.chown(dst, 0, self._user.pw_gid)
            tls_settings = f'ssl = {{ certificate = "{cert}"; key = "{key}"; }}'
            tls_module = '\t"tls"; -- STARTTLS on c2s_ports, and direct TLS on c2s_direct_tls_ports\n'
            direct_tls_ports = str(self.tls_port)
        template = Template((CONFIGS / "prosody.cfg.lua.in").read_text())
        with open(self.conf_path, "w") as fh:
            fh.write(template.substitute(
                c2s_port=self.port, s2s_port=self.s2s_port, host=self.host, domain=self.domain,
                muc_domain=self.muc_domain, data_dir=self.data_dir, certs_dir=certs_dir,
                pidfile=os.path.join(self.data_dir, "prosody.pid"), tls_settings=tls_settings,
                tls_module=tls_module, direct_tls_ports=direct_tls_ports,
                require_encryption="true" if self.require_encryption else "false",
                run_as_root="true" if os.geteuid() == 0 and self._user is None else "false"))
        os.chmod(self.conf_path, 0o644)

    def _popen_extra(self) -> dict[str, Any]:
        env = {**os.environ, "HOME": self.data_dir}
        if self._user is None:
            return {"env": env}
        return {"env": env, "user": self._user.pw_uid, "group": self._user.pw_gid,
                "extra_groups": [self._user.pw_gid]}

    def _argv(self) -> list[str]:
        return [find_binary("prosody"), "-F", "--config", self.conf_path]

    def _ready(self) -> bool:
        """The c2s port answers a stream header with stream features."""
        with _connect(self.host, self.port) as sock:
            sock.sendall(f"<?xml version='1.0'?><stream:stream to='{self.domain}' xmlns='jabber:client' "
                         "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode())
            received = b""
            while b"features" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                received += chunk
            sock.sendall(b"</stream:stream>")
            return True

    def create_user(self, username: str, password: str) -> str:
        """Register ``username@domain`` (the server may be running or not); returns the JID."""
        if not os.path.exists(self.conf_path):
            if self.port == 0:
                self._pick_ports()
            self._prepare()
        argv = [find_binary("prosodyctl"), "--config", self.conf_path, "register", username, self.domain,
                password]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                env={**os.environ, "HOME": self.data_dir})
        if result.returncode != 0:
            raise RuntimeError(f"prosodyctl register {username} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")
        return f"{username}@{self.domain}"


def _world_traversable(path: str) -> bool:
    """True when every directory from / to ``path`` has o+x."""
    current = os.path.abspath(path)
    while True:
        if not os.stat(current).st_mode & 0o001:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent
