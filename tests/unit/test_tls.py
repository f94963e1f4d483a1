"""TLS contexts and reasons (``frontend.chat.tls``) and ``tls_ca`` paths (``frontend.cafile``,
``frontend.protocol``): real files, real handshakes over loopback.

The handshakes are against a plain ``ssl`` server of the test's own, one per certificate case
(expired, wrong name, unknown issuer, self-signed, a plaintext port), as in
``tests/test_support_networks.py``: a packaged server per case would cost a second each; the rooms'
own tests use prosody and InspIRCd (``tests/xmpp/test_xmpp_tls.py``, ``tests/e2e/test_irc_tls_reasons.py``).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import threading

import pytest

from frontend import cafile
from frontend.chat import tls
from frontend.errors import ProtocolError
from frontend.protocol import encode, parse_command, validate_command
from tests.support.tls import TestPKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return TestPKI(str(tmp_path_factory.mktemp("pki")))


def join(**spec_fields) -> dict:
    spec = {"protocol": "xmpp", "jid": "bot@localhost", "password": "pw", "muc": "r@conference.localhost",
            "nick": "bot", **spec_fields}
    return {"type": "join", "room": "r", "spec": spec}


# -- contexts --------------------------------------------------------------------------------------

def test_contexts_are_cached_per_ca_and_verify_and_follow_the_file(pki, tmp_path):
    bundle = tmp_path / "ca.pem"
    shutil.copyfile(pki.ca_file, bundle)
    first = tls.client_context(str(bundle), True)
    assert tls.client_context(str(bundle), True) is first
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    assert first.cert_store_stats()["x509"] == 1  # the bundle's CA only, not the system's
    system = tls.client_context(None, True)
    assert system is tls.client_context(None, True) and system is not first
    blind = tls.client_context(None, False)
    assert tls.client_context(str(bundle), False) is blind  # tls_ca means nothing without verification
    assert blind.verify_mode == ssl.CERT_NONE and not blind.check_hostname
    with open(pki.self_signed.cert) as src, open(bundle, "a") as dst:  # a rotated bundle is read again
        dst.write(src.read())
    rotated = tls.client_context(str(bundle), True)
    assert rotated is not first and rotated.cert_store_stats()["x509"] == 2
    os.remove(bundle)
    with pytest.raises(tls.TlsSetupFailed, match=r"no such file") as failed:
        tls.client_context(str(bundle), True)  # a vanished bundle fails the connect, with the reason
    assert failed.value.permanent


def test_the_cache_is_bounded(pki, tmp_path):
    paths = []
    for i in range(tls.MAX_CONTEXTS + 5):
        path = tmp_path / f"ca{i}.pem"
        shutil.copyfile(pki.ca_file, path)
        paths.append(str(path))
        tls.client_context(paths[-1], True)
    assert len(tls._contexts) <= tls.MAX_CONTEXTS


def test_a_bundle_keeps_its_certificates_and_drops_the_rest(pki, tmp_path):
    """Comments and UTF-8 names between the certificates (curl's cacert.pem has them) are fine; a
    file without a certificate, or with a broken one, says so without quoting it."""
    with open(pki.ca_file) as fh:
        pem = fh.read()
    commented = tmp_path / "commented.pem"
    commented.write_text("## Bundle of CA Root Certificates\n\nNetLock Arany (Class Gold) Főtanúsítvány\n"
                         "=========\n" + pem + "\ntrailing words\n", encoding="utf-8")
    assert tls.client_context(str(commented), True).cert_store_stats()["x509"] == 1
    secret = tmp_path / "secret.txt"
    secret.write_text("root:hunter2\n")
    with pytest.raises(tls.TlsSetupFailed) as failed:
        tls.client_context(str(secret), True)
    assert str(failed.value) == f"tls_ca {str(secret)!r}: holds no PEM certificate (-----BEGIN CERTIFICATE----- ...)"
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(tls.TlsSetupFailed, match=r"not a valid CA bundle \[") as failed:
        tls.client_context(str(broken), True)
    assert "AAAA" not in str(failed.value)


# -- paths -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, words", [
    ("ca.pem", "absolute, normalized"),
    ("/etc/ssl/../ssl/ca.pem", "absolute, normalized"),
    ("/etc/ssl/./ca.pem", "absolute, normalized"),
    ("//etc/ca.pem", "absolute, normalized"),
    ("/etc/ssl/", "absolute, normalized"),
    ("/etc/\nx", "control characters"),
    ("/" + "a" * cafile.MAX_PATH, "too long"),
])
def test_tls_ca_syntax_is_checked_wherever_a_spec_is(path, words):
    with pytest.raises(ProtocolError, match=words):
        validate_command(join(tls_ca=path))
    irc = {"protocol": "irc", "server": "irc.test", "channel": "#c", "nick": "bot", "tls": True, "tls_ca": path}
    with pytest.raises(ProtocolError, match=words):
        validate_command({"type": "join", "room": "r", "spec": irc})


def test_the_file_is_checked_where_the_join_is_popped(pki, tmp_path):
    """The SDK, the CLI and the dashboard check the syntax (the file is on the frontend's host);
    the frontend's ``parse_command`` checks the file."""
    missing = str(tmp_path / "missing.pem")
    assert validate_command(join(tls_ca=missing)).spec.tls_ca == missing
    with pytest.raises(ProtocolError, match=r"spec field tls_ca '.*missing.pem': no such file"):
        parse_command(encode(join(tls_ca=missing)))
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)  # opened non-blocking, then refused: it never holds the dispatcher
    with pytest.raises(ProtocolError, match="not a regular file"):
        parse_command(encode(join(tls_ca=fifo)))
    locked = tmp_path / "locked.pem"
    shutil.copyfile(pki.ca_file, locked)
    os.chmod(locked, 0)
    if os.geteuid() != 0:  # root reads it anyway
        with pytest.raises(ProtocolError, match="may not read it"):
            parse_command(encode(join(tls_ca=str(locked))))
    command = parse_command(encode(join(tls_ca=pki.ca_file, tls_verify=False)))
    assert (command.spec.tls_ca, command.spec.tls_verify) == (pki.ca_file, False)


def test_tls_settings_are_part_of_the_connection_key():
    base = validate_command(join()).spec
    keys = {validate_command(join(**extra)).spec.connection_key()
            for extra in ({}, {"tls_verify": False}, {"tls_ca": "/etc/a.pem"}, {"tls_ca": "/etc/b.pem"})}
    assert len(keys) == 4 and base.connection_key() in keys
    irc = {"protocol": "irc", "server": "irc.test", "channel": "#c", "nick": "bot", "tls": True}
    irc_keys = {validate_command({"type": "join", "room": "r", "spec": {**irc, **extra}}).spec.connection_key()
                for extra in ({}, {"tls_verify": False}, {"tls_ca": "/etc/a.pem"})}
    assert len(irc_keys) == 3


# -- reasons ---------------------------------------------------------------------------------------

def handshake_error(certs, name: str, context: ssl.SSLContext, *, plaintext: bool = False) -> ssl.SSLError:
    """The error of a real client handshake against a one-shot loopback server with ``certs``."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            try:
                if plaintext:
                    conn.sendall(b":irc.test NOTICE * :*** Looking up your hostname...\r\n" * 20)
                    conn.recv(4096)
                else:
                    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    server.load_cert_chain(certs.cert, certs.key)
                    with server.wrap_socket(conn, server_side=True):
                        pass
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as sock:
                with pytest.raises(ssl.SSLError) as raised:
                    context.wrap_socket(sock, server_hostname=name)
            return raised.value
        finally:
            thread.join(5)


def test_each_handshake_failure_has_its_reason(pki, tmp_path):
    trusting = tls.client_context(pki.ca_file, True)
    system = tls.client_context(None, True)
    cases = [
        (pki.self_signed, "localhost", trusting, "the server's certificate is not trusted (self-signed; "
         "set tls_ca or tls_verify=false) [certificate verify failed: self-signed certificate]"),
        (pki.server, "localhost", system, "the server's certificate is not trusted (its issuer is not among the "
         "system's trusted CAs; set tls_ca or tls_verify=false) [certificate verify failed: unable to get "
         "local issuer certificate]"),
        (TestPKI(str(tmp_path / "other")).server, "localhost", trusting, "the server's certificate is not "
         f"trusted (its issuer is not among the CAs of tls_ca {pki.ca_file!r}; set tls_ca or tls_verify=false)"),
        (pki.issue("expired", ["localhost"], expired=True), "localhost", trusting,
         "the server's certificate has expired (renew it on the server, or set tls_verify=false) "
         "[certificate verify failed: certificate has expired]"),
        (pki.issue("wrong", ["wrong.test"]), "localhost", trusting, "the server's certificate is not for "
         "localhost (connect by a name it carries, or set tls_verify=false) [certificate verify failed: "
         "Hostname mismatch, certificate is not valid for 'localhost'.]"),
    ]
    for certs, name, context, reason in cases:
        error = handshake_error(certs, name, context)
        said, permanent = tls.explain(error, name, ca=pki.ca_file if context is trusting else None)
        assert said.startswith(reason) and permanent, (said, reason)
    plain = handshake_error(None, "localhost", trusting, plaintext=True)
    said, permanent = tls.explain(plain, "localhost")
    assert said.startswith("the TLS handshake failed: the server does not speak TLS on this port "
                           "(a plaintext port?) [SSL: "), said
    assert permanent


def test_connect_failures_have_their_reasons():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError) as refused:
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert tls.explain_connect(refused.value, "127.0.0.1", port, 30) == (
        f"connection refused by 127.0.0.1:{port} (nothing listens there?)", False)
    # the resolver's own error, as getaddrinfo raises it (no lookup leaves the machine here)
    dns = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert tls.explain_connect(dns, "irc.example.invalid", 6697, 30) == (
        "cannot resolve irc.example.invalid (DNS: Name or service not known)", False)
    assert tls.explain_connect(TimeoutError("timed out"), "h", 1, 30)[0] == \
        "the server did not answer the connection within 30s (h:1)"
    assert tls.explain_connect(TimeoutError("timed out"), "h", 1, 30, handshake=True)[0] == \
        "the server did not answer the TLS handshake within 30s (h:1: a plaintext port?)"
