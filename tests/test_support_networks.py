"""The real-network test servers work: InspIRCd with IRCv3 and flood limits, Atheme services (accounts,
SASL), channel limits (InspIRCd and ngircd), TLS with a private CA or a self-signed certificate for
prosody (STARTTLS required or not) and InspIRCd. Raw sockets and the raw IRC test client only."""

from __future__ import annotations

import base64
import re
import socket
import ssl
import threading

import pytest

from tests.support.inspircd import FLOOD_QUIT
from tests.support.irc_client import IrcTestClient, parse_line
from tests.support.names import uniq
from tests.support.tls import TestPKI


IRCV3 = ("account-tag", "extended-join", "account-notify", "server-time", "message-tags", "echo-message",
         "batch", "cap-notify", "multi-prefix", "userhost-in-names", "chghost")



# -- InspIRCd: IRCv3 ----------------------------------------------------------------------------------

def test_inspircd_offers_the_ircv3_capabilities(inspircd, inspircd_client):
    client = inspircd_client(uniq("caps"), caps=IRCV3)
    assert set(IRCV3) <= set(client.cap_ls), client.cap_ls
    assert client.caps == set(IRCV3)  # all acknowledged
    isupport = " ".join(line for line in client.lines if " 005 " in line)
    assert "CHANLIMIT=#:1000" in isupport and "CASEMAPPING=rfc1459" in isupport
    assert inspircd.host == "127.0.0.1" and client.nick.startswith("caps")


def test_tags_are_parsed_and_unescaped():
    line = parse_line(r"@time=2026-01-01T00:00:00.000Z;msgid=1GR~1;account=alice;x=a\sb\:c\\d;flag "
                      ":alice!a@h PRIVMSG #c :hi")
    assert line.tags == {"time": "2026-01-01T00:00:00.000Z", "msgid": "1GR~1", "account": "alice",
                         "x": "a b;c\\d", "flag": ""}
    assert (line.nick, line.command, line.params) == ("alice", "PRIVMSG", ["#c", "hi"])
    assert parse_line(":irc.test 001 me :Welcome").tags == {}


# -- Atheme: accounts and SASL -------------------------------------------------------------------------

def test_nickserv_register_then_sasl_plain_login(atheme, inspircd_client):
    account, password = uniq("acct"), "pw-" + uniq("s")
    assert "is now registered" in atheme.register(account, password)
    with pytest.raises(AssertionError, match="already registered"):
        atheme.register(account, "other")
    client = inspircd_client(uniq("other"), sasl=(account, password))  # logs in under another nick
    assert [ln.command for ln in client.sasl_replies] == ["900", "903"]
    assert client.sasl_replies[0].params[2] == account  # 900 <nick> <mask> <account> :You are now logged in
    assert "sasl" in client.caps and client.cap_ls["sasl"] == "PLAIN"
    with pytest.raises(AssertionError, match=" 904 "):
        inspircd_client(uniq("bad"), sasl=(account, password + "x"))
    with pytest.raises(AssertionError, match=" 904 "):
        inspircd_client(uniq("none"), sasl=(uniq("nosuch"), password))


def test_account_msgid_and_time_tags_reach_a_client_that_asked(irc_account, inspircd_client):
    account, password = irc_account("alice")
    chan = "#" + uniq("tags")
    watcher = inspircd_client(uniq("watch"), caps=IRCV3)
    plain = inspircd_client(uniq("plain"))  # asked for nothing: gets no tags
    alice = inspircd_client(uniq("alice"), caps=IRCV3, sasl=(account, password))
    stranger = inspircd_client(account + "_")  # no account at all
    for client in (watcher, plain):
        client.join(chan)
    alice.join(chan)
    joined = watcher.expect(rf":{alice.nick}!\S+ JOIN ")
    assert joined.params[:2] == [chan, account]  # extended-join: channel, account, realname
    assert joined.tags["account"] == account
    stranger.join(chan)
    assert watcher.expect(rf":{stranger.nick}!\S+ JOIN ").params[1] == "*"  # extended-join: no account
    alice.privmsg(chan, "deploy web")
    got = watcher.expect(rf"PRIVMSG {re.escape(chan)} :deploy web")
    assert got.tags["account"] == account and got.tags["msgid"] and re.match(r"\d{4}-\d\d-\d\dT", got.tags["time"])
    echoed = alice.expect(rf"PRIVMSG {re.escape(chan)} :deploy web")  # echo-message, same msgid
    assert echoed.tags["msgid"] == got.tags["msgid"]
    assert plain.expect(rf"PRIVMSG {re.escape(chan)} :deploy web").tags == {}
    stranger.privmsg(chan, "deploy prod")
    assert "account" not in watcher.expect(r":deploy prod$").tags
    alice.privmsg("NickServ", "LOGOUT")  # account-notify
    assert watcher.expect(rf":{alice.nick}!\S+ ACCOUNT ").params == ["*"]
    alice.privmsg("NickServ", f"IDENTIFY {account} {password}")
    assert watcher.expect(rf":{alice.nick}!\S+ ACCOUNT ").params == [account]


def test_services_restart_keeps_accounts_and_relinks(atheme, irc_account, inspircd_client):
    account, password = irc_account("keep")
    atheme.restart()  # SIGTERM: atheme writes its database; the new process links again
    assert [ln.command for ln in inspircd_client(uniq("back"), sasl=(account, password)).sasl_replies] == \
        ["900", "903"]


# -- flood and channel limits ---------------------------------------------------------------------------

def test_inspircd_kills_a_flooder_with_excess_flood(make_inspircd):
    server = make_inspircd(threshold=20, commandrate=1000)
    chan = "#" + uniq("flood")
    watcher = IrcTestClient(server.host, server.port, uniq("w")).connect()
    flooder = IrcTestClient(server.host, server.port, uniq("f")).connect()
    try:
        watcher.join(chan)
        flooder.join(chan)
        for i in range(5):  # within the limit: delivered
            flooder.privmsg(chan, f"calm {i}")
        watcher.wait_for_count(r":calm \d$", 5, timeout=5)
        try:
            for i in range(100):
                flooder.privmsg(chan, f"{'x' * 200} {i}")
        except OSError:
            pass  # the server may have closed the socket under us
        error = flooder.expect(r"^ERROR", timeout=5)
        assert error.text == f"Closing link: ({flooder.username}@127.0.0.1) [{FLOOD_QUIT}]"
        quit_line = watcher.expect(rf":{flooder.nick}!\S+ QUIT ")
        assert quit_line.text == FLOOD_QUIT == "Excess Flood"
        got = len([ln for ln in watcher.lines if " :" + "x" * 200 in ln])
        assert 5 <= got < 30, got  # about threshold lines arrive, then the kill
    finally:
        watcher.close()
        flooder.close()


def test_inspircd_channel_limit(make_inspircd):
    server = make_inspircd(maxchans=3)
    with IrcTestClient(server.host, server.port, uniq("lim")) as client:
        assert any("CHANLIMIT=#:3" in line for line in client.lines)
        for i in range(3):
            client.join("#" + uniq("c"))
        with pytest.raises(AssertionError, match=r" 405 .*too many channels"):
            client.join("#" + uniq("c"))


def test_ngircd_max_joins(make_ngircd):
    server = make_ngircd(max_joins=3)
    with IrcTestClient(server.host, server.port, uniq("lim")) as client:
        assert any("CHANLIMIT=#&+:3" in line for line in client.lines)
        for i in range(3):
            client.join("#" + uniq("c"))
        with pytest.raises(AssertionError, match=r" 405 .*too many channels"):
            client.join("#" + uniq("c"))


# -- TLS -------------------------------------------------------------------------------------------

def tls_handshake(host: str, port: int, context: ssl.SSLContext, server_hostname: str) -> dict:
    with socket.create_connection((host, port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=server_hostname) as tls:
            return tls.getpeercert() or {"version": tls.version()}


def test_pki_verifies_by_the_ca_and_names(tls_pki, tmp_path):
    """A plain ``ssl`` server of our own: CA-signed verifies (by IP and by name), the rest does not."""
    others = TestPKI(str(tmp_path / "other"))
    cases = {
        "ca": (tls_pki.server, "localhost", None),
        "ca-ip": (tls_pki.server, "127.0.0.1", None),
        "self-signed": (tls_pki.self_signed, "localhost", "self-signed certificate"),
        "other-ca": (others.server, "localhost", "unable to get local issuer certificate"),
        "wrong-name": (tls_pki.issue("wrong", ["wrong.test"]), "localhost", "Hostname mismatch"),
        "expired": (tls_pki.issue("expired", ["localhost"], expired=True), "localhost", "certificate has expired"),
    }
    for case, (certs, name, error) in cases.items():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs.cert, certs.key)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            def serve() -> None:
                conn, _ = listener.accept()
                try:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    pass

            thread = threading.Thread(target=serve)
            thread.start()
            try:
                if error is None:
                    assert tls_handshake("127.0.0.1", listener.getsockname()[1], tls_pki.client_context(), name)
                else:
                    with pytest.raises(ssl.SSLCertVerificationError, match=error):
                        tls_handshake("127.0.0.1", listener.getsockname()[1], tls_pki.client_context(), name)
            finally:
                thread.join(5)
    assert tls_pki.server.ca == tls_pki.ca_file and tls_pki.self_signed.ca is None


def test_inspircd_tls_port_with_the_ca_signed_certificate(inspircd, tls_pki):
    with socket.create_connection((inspircd.host, inspircd.tls_port), timeout=5) as sock:
        with tls_pki.client_context().wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"NICK tlsuser\r\nUSER tls 0 * :tls\r\n")
            received = b""
            while b" 001 " not in received:
                chunk = tls.recv(4096)
                assert chunk, received
                received += chunk
            tls.sendall(b"QUIT\r\n")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(inspircd.host, inspircd.tls_port,
                      tls_pki.client_context(cafile=tls_pki.self_signed.cert), "127.0.0.1")


XMPP_NS = ("xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'")


class RawXmpp:
    """Just enough XMPP over a socket: stream headers, STARTTLS, SASL PLAIN."""

    def __init__(self, server) -> None:
        self.server = server
        self.sock = socket.create_connection((server.host, server.port), timeout=5)

    def open_stream(self) -> bytes:
        self.sock.sendall(f"<?xml version='1.0'?><stream:stream to='{self.server.domain}' {XMPP_NS}>".encode())
        return self.read_until(b"</stream:features>")

    def read_until(self, *ends: bytes) -> bytes:
        received = b""
        while not any(end in received for end in ends):
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received

    def starttls(self, context: ssl.SSLContext) -> None:
        self.sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        assert b"<proceed" in self.read_until(b"<proceed", b"<failure")
        self.sock = context.wrap_socket(self.sock, server_hostname=self.server.domain)

    def auth_plain(self, user: str, password: str) -> bytes:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.sock.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        return self.read_until(b"<success", b"</failure>", b"</stream:stream>", b"</stream:error>")

    def close(self) -> None:
        try:
            self.sock.sendall(b"</stream:stream>")
        except OSError:
            pass
        self.sock.close()


def test_prosody_requires_starttls_and_refuses_plaintext_login(prosody_tls, tls_pki):
    prosody_tls.create_user("tlsuser", "pw")
    client = RawXmpp(prosody_tls)
    try:
        features = client.open_stream()
        assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>" in features
        assert b"<mechanism>" not in features  # nothing to log in with before TLS
        refused = client.auth_plain("tlsuser", "pw")
        assert b"<success" not in refused and (b"encryption-required" in refused or b"not-authorized" in refused
                                               or b"<failure" in refused or b"stream:error" in refused), refused
    finally:
        client.close()
    client = RawXmpp(prosody_tls)
    try:
        client.open_stream()
        client.starttls(tls_pki.client_context())  # verified against the test CA, for "localhost"
        features = client.open_stream()
        assert b"<mechanism>PLAIN</mechanism>" in features and b"starttls" not in features
        assert b"<success" in client.auth_plain("tlsuser", "pw")
    finally:
        client.close()
    assert tls_handshake(prosody_tls.host, prosody_tls.tls_port, tls_pki.client_context(), "localhost")


def test_prosody_self_signed_fails_verification(prosody_self_signed, tls_pki):
    client = RawXmpp(prosody_self_signed)
    try:
        assert b"<required/>" in client.open_stream()
        with pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate"):
            client.starttls(tls_pki.client_context())
    finally:
        client.close()
    with pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate"):
        tls_handshake(prosody_self_signed.host, prosody_self_signed.tls_port, tls_pki.client_context(), "localhost")
    # ... and trusting that very certificate (a tls_ca of it) verifies
    trusted = tls_pki.client_context(cafile=tls_pki.self_signed.cert)
    assert tls_handshake(prosody_self_signed.host, prosody_self_signed.tls_port, trusted, "localhost")


def test_prosody_starttls_offered_but_not_required(make_prosody, tls_pki):
    server = make_prosody(tls=tls_pki.server)
    server.create_user("optional", "pw")
    client = RawXmpp(server)
    try:
        features = client.open_stream()
        assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" in features  # offered, not required
        assert b"<mechanism>PLAIN</mechanism>" in features
        assert b"<success" in client.auth_plain("optional", "pw")  # plaintext login allowed
    finally:
        client.close()
