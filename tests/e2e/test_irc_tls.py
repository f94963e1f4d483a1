"""IRC over TLS: a real TLS handshake in front of the real ngircd.

Debian's ngircd needs its own certificate set-up per instance; instead a TLS terminator (gevent's
StreamServer with a self-signed certificate made by openssl) sits in front of the ngircd fixture and
pipes bytes both ways, so the frontend's TLS client code and certificate checks run for real.
"""

import re
import socket
import ssl
import subprocess

import gevent
import pytest
from gevent.server import StreamServer

from tests.support.events import EventLog
from tests.support.frontend import push, running_frontend
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def tls_front(ngircd, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=irc.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    def pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle(client, address):
        accepted.append(client)  # the server's side of each TLS connection, for tests that break one
        upstream = socket.create_connection((ngircd.host, ngircd.port))
        gevent.joinall([gevent.spawn(pipe, client, upstream), gevent.spawn(pipe, upstream, client)])

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    accepted: list = []
    server = StreamServer(("127.0.0.1", 0), handle, ssl_context=context)
    server.accepted = accepted
    server.start()
    yield server
    server.stop(timeout=1)


def spec(port, nick, channel, verify):
    return {"protocol": "irc", "server": "127.0.0.1", "port": port, "tls": True, "tls_verify": verify,
            "nick": nick, "channel": channel, "flood": False}


def test_tls_room_joins_and_talks(redis_url, redis_client, tls_front, irc_client):
    events = EventLog(redis_client)
    watcher = irc_client("tlswatch")
    watcher.join("#tls")
    with running_frontend(redis_url):
        push(redis_client, {"type": "join", "room": "tls", "spec": spec(tls_front.server_port, "tlsbot", "#tls", False)})
        events.wait(type="joined", room="tls")
        push(redis_client, {"type": "say", "room": "tls", "text": "over tls"})
        watcher.expect(r":tlsbot!\S+ PRIVMSG #tls :over tls$")
        watcher.privmsg("#tls", "back through tls")
        assert events.wait(type="message", room="tls")["text"] == "back through tls"


def test_an_unverifiable_certificate_is_refused(redis_url, redis_client, tls_front):
    with running_frontend(redis_url) as fe:
        push(redis_client, {"type": "join", "room": "tlsbad", "spec": spec(tls_front.server_port, "tlsbad", "#tlsbad", True)})
        with gevent.Timeout(10):
            while b"backoff" not in (redis_client.hget("rooms:state", "tlsbad") or b""):
                gevent.sleep(0.05)
        state = redis_client.hget("rooms:state", "tlsbad").decode()
        assert re.search(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed", state), state
        assert fe.rooms["tlsbad"].state == "backoff"


def test_a_tls_connection_is_read_from_the_hub_and_holds_no_greenlet(redis_url, redis_client, tls_front,
                                                                      irc_client):
    """TLS is read by an io watcher callback through the TLS layer's non-blocking read, as a plain
    connection is (a parked reader greenlet cost about 8 KB): connected and joined, the session's main
    greenlet has ended and its writer lingers out; 2,000 lines (220 KB of TLS records) arrive in
    order; and a read that must write first (what the TLS layer asks for when it has to answer before
    it reads on) waits for the socket to be writable, then reads on."""
    events = EventLog(redis_client)
    watcher = irc_client("tlshubw")
    watcher.join("#tlshub")
    with running_frontend(redis_url) as fe:
        push(redis_client, {"type": "join", "room": "tlshub",
                            "spec": spec(tls_front.server_port, "tlshubbot", "#tlshub", False)})
        events.wait(type="joined", room="tlshub")
        session = fe.registry.get("tlshub").session
        wait_until(lambda: session._main.dead and session._reading is not None and session._reading.active,
                   5, what="the TLS connection read from the hub")
        assert session._tls is not None
        wait_until(lambda: session._writer is None, 8, what="the writer lingered out: no greenlet left")
        for i in range(2000):
            watcher.send_raw(f"PRIVMSG #tlshub :line {i:05d} " + "x" * 90)
        got = [e["text"] for e in events.wait_many(2000, timeout=60, type="message", room="tlshub")]
        assert got == [f"line {i:05d} " + "x" * 90 for i in range(2000)]
        # each read takes a whole record, so the layer holds nothing decrypted between reads and the
        # descriptor's watcher sees all there is (``_more_later`` reads on where that would not hold)
        assert session._tls.pending() == 0
        session._read_when_writable(session._sock)
        assert not session._reading.active and session._turn is not None
        watcher.privmsg("#tlshub", "after waiting to write")
        assert events.wait(type="message", room="tlshub")["text"] == "after waiting to write"
        assert session._turn is None and session._reading.active
        push(redis_client, {"type": "say", "room": "tlshub", "text": "still talking"})
        watcher.expect(r":tlshubbot!\S+ PRIVMSG #tlshub :still talking$")


def test_a_tls_connection_that_ends_or_breaks_is_read_from_the_hub_again(redis_url, redis_client, tls_front,
                                                                         irc_client, caplog):
    """The two ends a TLS connection read from the hub can meet, each made by the terminator: the TCP
    connection ends without a close_notify (the TLS layer's ragged end, read as the end), and bytes
    that are no TLS record arrive (the layer's error ends the connection). Each time the session
    backs off, reconnects, rejoins, and the new connection is read from the hub again."""
    events = EventLog(redis_client)
    watcher = irc_client("tlsbrkw")
    watcher.join("#tlsbrk")
    with running_frontend(redis_url) as fe:
        push(redis_client, {"type": "join", "room": "tlsbrk",
                            "spec": spec(tls_front.server_port, "tlsbrkbot", "#tlsbrk", False)})
        events.wait(type="joined", room="tlsbrk")
        session = fe.registry.get("tlsbrk").session

        def served() -> bool:
            return session._main.dead and session._reading is not None and session._reading.active

        wait_until(served, 5, what="the TLS connection read from the hub")
        socket.socket.shutdown(tls_front.accepted[-1], socket.SHUT_RDWR)  # TCP's end, no close_notify
        events.wait(timeout=15, type="joined", room="tlsbrk")
        wait_until(served, 5, what="the new TLS connection read from the hub")
        socket.socket.send(tls_front.accepted[-1], b"this is no TLS record\r\n")  # under the TLS layer
        events.wait(timeout=15, type="joined", room="tlsbrk")
        wait_until(served, 5, what="the third TLS connection read from the hub")
        assert len(tls_front.accepted) == 3
        lost = [r.getMessage() for r in caplog.records
                if "tlsbrkbot" in r.getMessage() and "reconnecting" in r.getMessage()]
        assert len(lost) == 2 and "the server closed the connection" in lost[0] and "SSL" in lost[1], lost
        watcher.privmsg("#tlsbrk", "after two breaks")
        assert events.wait(type="message", room="tlsbrk")["text"] == "after two breaks"
