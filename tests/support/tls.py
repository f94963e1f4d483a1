"""Certificates for TLS tests, made with ``cryptography``: a private test CA, server certificates it
signs, and self-signed ones. Keys are EC P-256 (fast to make); files are PEM, mode 0644 (test keys:
the servers' own users must read them), in a directory of the caller's.

    pki = TestPKI("/tmp/x")                 # ca.pem + a CA-signed server cert + a self-signed cert
    pki.ca_file                             # the CA certificate (what a client trusts: ``tls_ca``)
    pki.server                              # CertFiles(cert, key, ca=pki.ca_file): 127.0.0.1, localhost, ...
    pki.self_signed                         # CertFiles(cert, key, ca=None): the same names, signed by itself
    pki.issue("other", ["wrong.test"])      # another CA-signed cert (a name mismatch, ``expired=True``, ...)
    pki.client_context()                    # an ``ssl.SSLContext`` that trusts only the test CA

Every certificate names ``localhost``, ``127.0.0.1`` (an IP SAN) and the test servers' names
(``DEFAULT_NAMES``), so clients verify the host they connect to, as in production.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from typing import Iterable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: what the test servers are called: prosody's domain and MUC, InspIRCd's and ngircd's server names
DEFAULT_NAMES = ("localhost", "127.0.0.1", "conference.localhost", "inspircd.test", "irc.test")


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its key (PEM files); ``ca``: the CA file that verifies it (None: self-signed)."""

    cert: str
    key: str
    ca: Optional[str] = None
    names: tuple[str, ...] = ()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: str, key: ec.EllipticCurvePrivateKey) -> None:
    with open(path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()))
    os.chmod(path, 0o644)


def _write_cert(path: str, cert: x509.Certificate) -> None:
    with open(path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "greenroom tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class TestPKI:
    """A private CA in ``directory`` and the certificates it (and nobody) signs; see the module doc."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: str, names: Iterable[str] = DEFAULT_NAMES) -> None:
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        os.chmod(self.directory, 0o755)
        self.names = tuple(names)
        now = datetime.datetime.now(datetime.timezone.utc)
        self._ca_key = _key()
        subject = _name("greenroom test CA")
        self._ca_cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()), critical=False)
            .sign(self._ca_key, hashes.SHA256()))
        self.ca_file = os.path.join(self.directory, "ca.pem")
        _write_cert(self.ca_file, self._ca_cert)
        self.server = self.issue("server", self.names)
        self.self_signed = self.issue("self-signed", self.names, self_signed=True)

    def issue(self, stem: str, names: Iterable[str], *, self_signed: bool = False, expired: bool = False,
              days: int = 365) -> CertFiles:
        """A server certificate for ``names`` as ``<stem>.pem`` / ``<stem>.key``: signed by the test CA,
        or by itself; ``expired=True`` makes one that expired yesterday."""
        names = tuple(names)
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = ((now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)) if expired
                      else (now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)))
        subject = _name(names[0] if names else stem)
        issuer = subject if self_signed else self._ca_cert.subject
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if not self_signed:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()), critical=False)
        cert = builder.sign(key if self_signed else self._ca_key, hashes.SHA256())
        cert_path = os.path.join(self.directory, f"{stem}.pem")
        key_path = os.path.join(self.directory, f"{stem}.key")
        _write_cert(cert_path, cert)
        _write_key(key_path, key)
        return CertFiles(cert=cert_path, key=key_path, ca=None if self_signed else self.ca_file, names=names)

    def client_context(self, *, verify: bool = True, cafile: Optional[str] = None) -> ssl.SSLContext:
        """A client context that trusts only ``cafile`` (the test CA by default) and checks host names;
        ``verify=False``: no checks at all."""
        if not verify:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=cafile or self.ca_file)

    def __repr__(self) -> str:
        return f"<TestPKI {self.directory} names={self.names}>"
