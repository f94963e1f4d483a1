"""InspIRCd 3 and Atheme services for tests: loopback only, free ports, files in a work dir.

``InspircdServer`` runs ``inspircd --nofork`` (``--runasroot`` as root) from
``configs/inspircd-test.conf.in``: a client port, a server port (for services) and, with ``tls=``, a
TLS client port, all on 127.0.0.1; no DNS or ident lookups (and the resolver points at loopback);
the IRCv3 modules (``cap``, ``ircv3`` for account-notify/away-notify/extended-join,
``ircv3_accounttag``, ``ircv3_servertime``, ``ircv3_msgid``, ``ircv3_ctctags`` for message-tags,
``ircv3_echomessage``, ``ircv3_batch``, ``ircv3_capnotify``, ``ircv3_labeledresponse``, ...) and
``sasl`` + ``services_account`` + ``spanningtree`` for services. Its one connect class takes the
flood and channel limits from the constructor, so a test can make it kill floods
(``InspircdServer(dir, threshold=20, commandrate=1000)``) or refuse the N+1th channel (``maxchans=N``).

``AthemeServices`` runs ``atheme-services -n`` from ``configs/atheme-test.conf.in``, linked to an
``InspircdServer``'s server port: NickServ, ChanServ and SaslServ (SASL PLAIN), no email
verification, no throttling. With it running, the ircd offers the ``sasl`` capability and
``services_account`` gives logged-in users their account (``account-tag``, ``account-notify``,
``extended-join``).

Both are ``tests.support.servers.Server`` subclasses: ``start()`` returns once they answer (an IRC
registration; for services a NickServ reply through the ircd), they are registered with the reaper,
``restart()`` keeps ports and files, a start failure raises ``RuntimeError`` with the log tail.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time
from string import Template
from typing import Any, Optional

from tests.support.ports import free_port
from tests.support.servers import CONFIGS, Server, _connect, _has_reply, find_binary, log_tail

#: What InspIRCd 3.15 says when it kills a client for flooding (fakelag off): the client gets
#: ``ERROR :Closing link: (user@host) [Excess Flood]`` and the others see ``QUIT :Excess Flood``.
FLOOD_QUIT = "Excess Flood"
#: ... and when a client's unread input passes ``recvq`` (the fate of flooders when fakelag is on).
RECVQ_QUIT = "RecvQ exceeded"
#: ... and when what the server has queued for a client passes ``hardsendq``.
SENDQ_QUIT = "SendQ exceeded"

#: "no limit" for the connect class (what the benchmark uses): InspIRCd multiplies threshold by 1000
_UNLIMITED = 2_000_000_000

_probe_seq = itertools.count(1)


def _probe_nick(stem: str) -> str:
    return f"{stem}{os.getpid() % 10000}x{next(_probe_seq)}"


def _irc_lines(sock: socket.socket, received: bytes) -> tuple[list[bytes], bytes]:
    chunk = sock.recv(4096)
    if not chunk:
        raise ConnectionError("closed")
    *lines, rest = (received + chunk).split(b"\r\n")
    for line in lines:
        if line.startswith(b"PING "):
            sock.sendall(b"PONG " + line[5:] + b"\r\n")
    return lines, rest


class InspircdServer(Server):
    """InspIRCd 3 on loopback: ``port`` (clients), ``link_port`` (servers), ``tls_port`` (with ``tls=``).

    Connect-class limits (all optional; the defaults never limit anything):
      ``threshold``, ``commandrate``: flood limits (penalty units of one command; millicommands/s);
      ``fakelag``: hold a flooder's commands back instead of killing it (default False: kill, with
      ``FLOOD_QUIT``); ``recvq``, ``softsendq``, ``hardsendq``: buffer limits in bytes;
      ``maxchans``: channels per user (advertised as ``CHANLIMIT=#:N``; the N+1th JOIN gets 405).
    ``tls``: a ``tests.support.tls.CertFiles`` (cert + key, PEM) for a TLS client port (ssl_gnutls).
    """

    name = "inspircd"
    server_name = "inspircd.test"
    network = "GreenroomTest"
    sid = "1GR"
    services_name = "services.test"

    def __init__(self, workdir: str, *, threshold: Optional[int] = None, commandrate: Optional[int] = None,
                 fakelag: bool = False, recvq: int = 65536, softsendq: int = 10_485_760,
                 hardsendq: int = 104_857_600, maxchans: int = 1000, tls: Any = None) -> None:
        super().__init__(workdir)
        self.threshold = threshold
        self.commandrate = commandrate
        self.fakelag = fakelag
        self.recvq, self.softsendq, self.hardsendq = recvq, softsendq, hardsendq
        self.maxchans = maxchans
        self.tls = tls
        self.link_port = 0
        self.tls_port = 0
        self.link_password = secrets.token_hex(12)
        self.conf_path = os.path.join(self.workdir, "inspircd.conf")
        self.ircd_log_path = os.path.join(self.workdir, "ircd.log")

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.link_port = free_port()
        self.tls_port = free_port() if self.tls is not None else 0

    def _prepare(self) -> None:
        tls_bind = tls_modules = ""
        if self.tls is not None:
            tls_bind = f'<bind address="{self.host}" port="{self.tls_port}" type="clients" ssl="tests">'
            tls_modules = ('<module name="ssl_gnutls">\n'
                           f'<sslprofile name="tests" provider="gnutls" certfile="{self.tls.cert}" '
                           f'keyfile="{self.tls.key}" hash="sha256" requestclientcert="no" priority="NORMAL">')
        template = Template((CONFIGS / "inspircd-test.conf.in").read_text())
        with open(self.conf_path, "w") as fh:
            fh.write(template.substitute(
                server_name=self.server_name, network=self.network, sid=self.sid, host=self.host,
                port=self.port, link_port=self.link_port, tls_bind=tls_bind, tls_modules=tls_modules,
                maxchans=self.maxchans, recvq=self.recvq, softsendq=self.softsendq, hardsendq=self.hardsendq,
                threshold=_UNLIMITED if self.threshold is None else self.threshold,
                commandrate=_UNLIMITED if self.commandrate is None else self.commandrate,
                fakelag="yes" if self.fakelag else "no", workdir=self.workdir,
                services_name=self.services_name, link_password=self.link_password))
        with open(os.path.join(self.workdir, "inspircd.motd"), "w") as fh:
            fh.write("greenroom test ircd\n")

    def _argv(self) -> list[str]:
        argv = [find_binary("inspircd"), "--config", self.conf_path, "--nofork", "--nopid"]
        if os.geteuid() == 0:  # Debian's inspircd refuses to run as root without it
            argv.append("--runasroot")
        return argv

    def _ready(self) -> bool:
        """A full registration gets 001."""
        with _connect(self.host, self.port, timeout=2.0) as sock:
            sock.sendall(f"NICK {_probe_nick('probe')}\r\nUSER probe 0 * :readiness probe\r\n".encode())
            rest = b""
            while True:
                lines, rest = _irc_lines(sock, rest)
                if any(_has_reply(line, b"001") for line in lines):
                    sock.sendall(b"QUIT :ready\r\n")
                    return True
                if any(line.startswith(b"ERROR") for line in lines):
                    return False

    def log_tail(self, n: int = 50) -> str:
        return f"{log_tail(self.log_path, n)}\n---- {self.ircd_log_path}:\n{log_tail(self.ircd_log_path, n)}"


class AthemeServices(Server):
    """Atheme 7.2 services (``services.test``) linked to ``ircd``'s server port on loopback.

    ``port`` is the ircd's ``link_port`` (services do not listen; they connect to it). NickServ
    (``REGISTER password email``, ``IDENTIFY``), ChanServ and SaslServ (SASL PLAIN) answer once
    ``start()`` returned; accounts live in ``services.db`` in the work dir, so they survive
    ``restart()``.
    """

    name = "atheme"
    numeric = "0SV"

    def __init__(self, workdir: str, ircd: InspircdServer) -> None:
        super().__init__(workdir)
        self.ircd = ircd
        self.services_name = ircd.services_name
        self.conf_path = os.path.join(self.workdir, "atheme.conf")
        self.services_log_path = os.path.join(self.workdir, "services.log")

    def _pick_ports(self) -> None:
        if not self.ircd.running:
            raise RuntimeError("start the InspircdServer before its AthemeServices")
        self.port = self.ircd.link_port

    def _prepare(self) -> None:
        self.port = self.ircd.link_port
        template = Template((CONFIGS / "atheme-test.conf.in").read_text())
        with open(self.conf_path, "w") as fh:
            fh.write(template.substitute(
                services_name=self.services_name, numeric=self.numeric, network=self.ircd.network,
                ircd_name=self.ircd.server_name, host=self.host, link_port=self.ircd.link_port,
                link_password=self.ircd.link_password, workdir=self.workdir))

    def _argv(self) -> list[str]:
        return [find_binary("atheme-services"), "-n", "-c", self.conf_path, "-D", self.workdir,
                "-l", os.path.join(self.workdir, "atheme-main.log"), "-p", os.path.join(self.workdir, "atheme.pid")]

    def _ready(self) -> bool:
        """Through the ircd: ``sasl`` is offered and NickServ answers a HELP."""
        with _connect(self.ircd.host, self.ircd.port, timeout=3.0) as sock:
            nick = _probe_nick("sprobe")
            sock.sendall(f"CAP LS 302\r\nNICK {nick}\r\nUSER probe 0 * :services probe\r\n".encode())
            rest, offered, registered = b"", False, False
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                lines, rest = _irc_lines(sock, rest)
                for line in lines:
                    words = line.split(b" ")
                    if words[1:3] == [b"CAP", b"*"] and words[3:4] == [b"LS"]:
                        if b"sasl" not in line.split(b" :", 1)[-1].split(b" ") and not any(
                                w.startswith(b"sasl=") for w in line.split(b" :", 1)[-1].split(b" ")):
                            if words[4:5] != [b"*"]:  # the last LS line and no sasl: not linked yet
                                sock.sendall(b"QUIT\r\n")
                                return False
                        else:
                            offered = True
                        if words[4:5] != [b"*"]:
                            sock.sendall(b"CAP END\r\n")
                    elif _has_reply(line, b"001"):
                        registered = True
                        sock.sendall(b"PRIVMSG NickServ :HELP\r\n")
                    elif registered and line.startswith(b":NickServ!") and b" NOTICE " in line:
                        sock.sendall(b"QUIT :ready\r\n")
                        return offered
                    elif _has_reply(line, b"401") or line.startswith(b"ERROR"):
                        return False
            return False

    def register(self, account: str, password: str, email: Optional[str] = None, timeout: float = 10.0) -> str:
        """Register ``account`` with NickServ, as a user would: connect with that nick, ``REGISTER``,
        wait for NickServ's "is now registered", quit. Returns NickServ's reply; a refusal raises
        AssertionError with it."""
        from tests.support.irc_client import IrcTestClient

        with IrcTestClient(self.ircd.host, self.ircd.port, account) as client:
            client.privmsg("NickServ", f"REGISTER {password} {email or account + '@example.invalid'}")
            # (a registered nick first gets "This nickname is registered. Please choose ...": not the answer)
            reply = client.expect(lambda ln: ln.command == "NOTICE" and ln.nick == "NickServ"
                                  and not ln.text.startswith("This nickname is registered"), timeout=timeout)
            if "is now registered" not in reply.text:  # e.g. "alice is already registered."
                raise AssertionError(f"NickServ REGISTER {account} refused: {reply.raw}")
            return reply.text

    def log_tail(self, n: int = 50) -> str:
        return (f"{log_tail(self.log_path, n)}\n---- {self.services_log_path}:\n{log_tail(self.services_log_path, n)}"
                f"\n---- the ircd ({self.ircd.ircd_log_path}):\n{log_tail(self.ircd.ircd_log_path, 15)}")
