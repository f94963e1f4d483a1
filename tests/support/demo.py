"""`make demo`: Redis, ngircd and prosody on loopback, the frontend, the echo backend, two demo rooms.

Everything runs in the foreground of this process and stops cleanly on Ctrl-C (or SIGTERM):
backend, frontend (graceful), then the servers; the temp dir is removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import ujson

from tests.support.ports import free_port
from tests.support.servers import NgircdServer, ProsodyServer, RedisServer

PORTS = {"redis": 16379, "irc": 16667, "xmpp": 15222}


def _port(name: str) -> int:
    """The demo's usual port (overridable by DEMO_<NAME>_PORT), or a free one when it is taken."""
    wanted = int(os.environ.get(f"DEMO_{name.upper()}_PORT", PORTS[name]))
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", wanted))
            return wanted
        except OSError:
            return free_port()


def greenroom_command(executable: str = sys.executable, cwd: str | None = None) -> str:
    """How a new shell runs this venv's ``greenroom``: the script beside the interpreter (the venv's
    bin is not on a new shell's PATH), as ``.venv/bin/greenroom`` when it is under the working
    directory, else by its full path; ``python -m frontend.cli`` when there is no script."""
    script = os.path.join(os.path.dirname(os.path.abspath(executable)), "greenroom")
    if not os.path.exists(script):
        return f"{executable} -m frontend.cli"
    relative = os.path.relpath(script, cwd or os.getcwd())
    return script if relative.startswith("..") else relative


def _spawn(argv: list[str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="greenroom-demo-", dir="/tmp")
    os.chmod(workdir, 0o755)
    servers: list = []
    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        redis_server = RedisServer(os.path.join(workdir, "redis"))
        redis_server.port = _port("redis")
        servers.append(redis_server.start())
        ircd = NgircdServer(os.path.join(workdir, "ngircd"))
        ircd.port = _port("irc")
        servers.append(ircd.start())
        prosody = ProsodyServer(os.path.join(workdir, "prosody"))
        prosody.port = _port("xmpp")
        xmpp_ok = True
        try:
            servers.append(prosody.start())
            prosody.create_user("greenbot", "greenbot-demo")
            prosody.create_user("alice", "alice-demo")
        except (RuntimeError, OSError) as exc:
            xmpp_ok = False
            print(f"prosody did not start ({exc}); the demo goes on with IRC only", file=sys.stderr)

        url = redis_server.url
        frontend_log = os.path.join(workdir, "frontend.log")
        procs.append(_spawn([sys.executable, "-m", "frontend.cli", "run", "--redis-url", url,
                             "--frontend-id", "demo"], frontend_log))
        procs.append(_spawn([sys.executable, "-m", "backend_sdk.examples.echo", "--redis-url", url],
                            os.path.join(workdir, "backend.log")))
        client = redis_server.client()
        client.delete("rooms")
        join = {"type": "join", "room": "demo", "spec": {
            "protocol": "irc", "server": ircd.host, "port": ircd.port, "tls": False, "nick": "greenbot",
            "channel": "#demo", "flood": False}}
        commands = [join]
        if xmpp_ok:
            commands.append({"type": "join", "room": "demo-xmpp", "spec": {
                "protocol": "xmpp", "jid": f"greenbot@{prosody.domain}", "password": "greenbot-demo",
                "muc": f"demo@{prosody.muc_domain}", "nick": "greenbot", "host": prosody.host,
                "port": prosody.port, "tls": False}})
        client.rpush("control", *[ujson.dumps(c) for c in commands])

        print(f"""
greenroom demo is running (logs in {workdir}).

  IRC:   connect any client to 127.0.0.1 port {ircd.port}, e.g.
           irssi -c 127.0.0.1 -p {ircd.port} -n you      then   /join #demo
  XMPP:  {"log in as alice@localhost (password alice-demo) on 127.0.0.1 port " + str(prosody.port)
          + " without TLS," if xmpp_ok else "(prosody is not available)"}
         {"join demo@" + prosody.muc_domain if xmpp_ok else ""}
  Say:   !echo hello     !ping     !help
  Redis: redis-cli -p {redis_server.port} LRANGE messages 0 -1   (the echo backend consumes them)
         {greenroom_command()} rooms --redis-url {url}

Ctrl-C stops everything.""", flush=True)
        while not stop.is_set():
            if any(p.poll() is not None for p in procs):
                print("a demo process exited; see the logs in " + workdir, file=sys.stderr)
                break
            stop.wait(1.0)
    finally:
        print("\nstopping the demo ...", flush=True)
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print("stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
