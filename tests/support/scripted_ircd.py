"""A scripted IRC server of the test suite's own, for what no packaged server will do.

ngircd (and every other packaged server) sends well-formed lines of sane length, answers NICK with
001 eventually and never echoes a NUL in a PING: the hostile servers of issue 13 exist only as
scripts. ``ScriptedIrcd`` is a gevent ``StreamServer`` on 127.0.0.1 that speaks just enough IRC for
greenroom to register and join (CAP LS with nothing offered, 001, JOIN echoed, PONG), records every
line each client sent, and runs the test's ``script(conn)`` in the connection's greenlet once the
client registered (or, with ``register=False``, at once). Nothing here is a mock of greenroom: it is
the other end of a real TCP connection.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import gevent
import gevent.event
from gevent.server import StreamServer


class Conn:
    """One client connection as the script sees it."""

    def __init__(self, server: "ScriptedIrcd", sock) -> None:
        self.server = server
        self.sock = sock
        self.lines: list[str] = []      # what the client sent, CRLF stripped, decoded leniently
        self.raw: list[bytes] = []      # the same, as bytes
        self.nick = "*"
        self.closed = False
        self.registered = gevent.event.Event()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8") + b"\r\n")

    def wait_for(self, pred: Callable[[str], bool], timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            while index < len(self.lines):
                if pred(self.lines[index]):
                    return self.lines[index]
                index += 1
            if time.monotonic() > deadline or self.closed:
                raise AssertionError(f"no such line from the client; got {self.lines[-10:]}")
            gevent.sleep(0.02)


class ScriptedIrcd:
    """``ScriptedIrcd(script).start()``; ``port``, ``conns`` (every connection, in order), ``stop()``.

    ``join_delay``: answer a JOIN only after that many seconds (a slow server). ``register``: answer NICK/USER with 001 (False: only the script talks). ``answer_nick``: a
    function nick -> bytes to send instead of 001 (e.g. a 433 for every NICK). ``answer_join``: a
    function (conn, channel) -> bytes to send instead of the JOIN echo (e.g. a 405 for every channel).
    """

    def __init__(self, script: Optional[Callable[[Conn], None]] = None, *, register: bool = True,
                 answer_nick: Optional[Callable[[Conn, str], Optional[bytes]]] = None,
                 join_delay: float = 0.0,
                 answer_join: Optional[Callable[[Conn, str], Optional[bytes]]] = None) -> None:
        self.script = script
        self.answer_join = answer_join
        self.join_delay = join_delay
        self.register = register
        self.answer_nick = answer_nick
        self.conns: list[Conn] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)

    def start(self) -> "ScriptedIrcd":
        self.server.start()
        return self

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.stop(timeout=1)
        for conn in self.conns:
            try:
                conn.sock.close()
            except OSError:
                pass

    def wait_conns(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.conns) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.conns)} connections, {n} expected within {timeout}s")
            gevent.sleep(0.02)

    def _handle(self, sock, address) -> None:
        conn = Conn(self, sock)
        self.conns.append(conn)
        runner: Optional[gevent.Greenlet] = None
        if self.script is not None and not self.register:
            runner = gevent.spawn(self.script, conn)
        buf = b""
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                buf += data
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    raw = raw.rstrip(b"\r")
                    conn.raw.append(raw)
                    line = raw.decode("utf-8", "replace")
                    conn.lines.append(line)
                    verb, _, rest = line.partition(" ")
                    verb = verb.upper()
                    try:
                        if verb == "CAP" and rest.startswith("LS"):
                            conn.line(":scripted CAP * LS :")
                        elif verb == "NICK":
                            conn.nick = rest.lstrip(":")
                            if self.answer_nick is not None:
                                reply = self.answer_nick(conn, conn.nick)
                                if reply:
                                    conn.send(reply)
                            elif self.register and not conn.registered.is_set():
                                conn.line(f":scripted 001 {conn.nick} :Welcome")
                                conn.registered.set()
                                if self.script is not None:
                                    runner = gevent.spawn(self.script, conn)
                        elif verb == "JOIN" and self.register and self.answer_join is not None:
                            for channel in rest.split()[0].split(","):
                                conn.send(self.answer_join(conn, channel) or b"")
                        elif verb == "JOIN" and self.register:
                            echo = "".join(f":{conn.nick}!u@127.0.0.1 JOIN {channel}\r\n"
                                           for channel in rest.split()[0].split(","))
                            if self.join_delay:
                                gevent.spawn_later(self.join_delay, _send_quietly, conn, echo.encode())
                            else:
                                conn.send(echo.encode())
                        elif verb == "PING":
                            conn.line(f":scripted PONG scripted :{rest.partition(':')[2]}")
                        elif verb == "QUIT":
                            return
                    except OSError:
                        return
        finally:
            conn.closed = True
            if runner is not None:
                runner.kill(block=False)
            try:
                sock.close()
            except OSError:
                pass


def _send_quietly(conn: Conn, data: bytes) -> None:
    try:
        conn.send(data)
    except OSError:
        pass


def irc_stub_spec(ircd: ScriptedIrcd, channel: str, nick: str, **extra) -> dict:
    return {"protocol": "irc", "server": "127.0.0.1", "port": ircd.port, "nick": nick, "channel": channel,
            "flood": False, **extra}
