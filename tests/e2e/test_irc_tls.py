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
        upstream = socket.create_connection((ngircd.host, ngircd.port))
        gevent.joinall([gevent.spawn(pipe, client, upstream), gevent.spawn(pipe, upstream, client)])

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = StreamServer(("127.0.0.1", 0), handle, ssl_context=context)
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
