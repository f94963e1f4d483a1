"""TLS for every chat connection: one client-context builder for IRC and XMPP, and failures in words
an operator acts on.

``client_context(ca, verify)`` is the context a connection uses for a spec's ``tls_ca`` and
``tls_verify``:

- ``verify`` false: no certificate or name check at all (``tls_ca`` is then irrelevant);
- ``ca`` None: the system's trusted CAs (``ssl.create_default_context``), names checked;
- ``ca`` a path: only the certificates of that PEM bundle are trusted (instead of the system's),
  names checked. The file is read through ``frontend.cafile`` (bounded, regular files only).

Building a context costs about 50 ms of CPU with the system's CAs (1 ms for a one-CA bundle) while
every greenlet waits, so contexts are cached per ``(ca, verify)``, at most ``MAX_CONTEXTS``; a
bundle's cached context is used while the file is the same (its ``stat`` identity: device, inode,
size, times; one ``stat`` per connect), so a rotated bundle is read again and a vanished one fails
the connect, with the reason (``TlsSetupFailed``).

``explain(exc, name)`` turns an ``ssl.SSLError`` of a handshake into the reason a room hears in its
``join_failed``, e.g. "the server's certificate is not trusted (self-signed; set tls_ca or
tls_verify=false) [certificate verify failed: self-signed certificate]"; ``explain_connect(exc,
host, port, timeout)`` does the same for the ``OSError`` of a connect (DNS, refused, unreachable,
timeout). Both also say whether retrying soon can help (``permanent``).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections import OrderedDict
from typing import Optional

from .. import cafile
from .base import ConnectionLost

log = logging.getLogger(__name__)

#: how many distinct (ca, verify) contexts are kept
MAX_CONTEXTS = 64

_contexts: "OrderedDict[tuple[Optional[str], bool], tuple[Optional[tuple], ssl.SSLContext]]" = OrderedDict()

# OpenSSL's X509_V_ERR_* codes (``SSLCertVerificationError.verify_code``)
_NOT_YET_VALID, _EXPIRED = 9, 10
_SELF_SIGNED, _SELF_SIGNED_IN_CHAIN = 18, 19
_UNKNOWN_ISSUER = (2, 20, 21)  # unable to get (local) issuer certificate, unable to verify the first one
_NAME_MISMATCH = (62, 64)  # hostname mismatch, IP address mismatch
_TRUST_HINT = "set tls_ca or tls_verify=false"


class TlsSetupFailed(ConnectionLost):
    """The spec's TLS settings cannot be used (its ``tls_ca`` vanished, is no bundle, ...): retrying
    soon will not help."""

    permanent = True


def client_context(ca: Optional[str], verify: bool) -> ssl.SSLContext:
    """The client context for ``tls_ca=ca, tls_verify=verify`` (cached; see the module docstring).
    Raises ``TlsSetupFailed`` when the bundle cannot be used."""
    key = (ca, True) if verify else (None, False)
    current = None
    if key[0] is not None:
        try:
            current = cafile.current(key[0])
        except cafile.CaFileError as exc:
            raise TlsSetupFailed(str(exc)) from None
    cached = _contexts.get(key)
    if cached is not None and cached[0] == current:
        _contexts.move_to_end(key)
        return cached[1]
    ident, context = _build(key[0], verify)
    _contexts[key] = (ident, context)
    _contexts.move_to_end(key)
    while len(_contexts) > MAX_CONTEXTS:
        _contexts.popitem(last=False)
    return context


def _build(ca: Optional[str], verify: bool) -> tuple[Optional[tuple], ssl.SSLContext]:
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return None, context
    if ca is None:
        return None, ssl.create_default_context()
    try:
        ident, pem = cafile.read_bundle(ca)
    except cafile.CaFileError as exc:
        raise TlsSetupFailed(str(exc)) from None
    try:
        context = ssl.create_default_context(cadata=pem)
    except ssl.SSLError as exc:  # the text is OpenSSL's own (library and reason), never the file's
        raise TlsSetupFailed(f"tls_ca {ca!r}: not a valid CA bundle [{_ssl_words(exc)}]") from None
    log.info("loaded the CA bundle %r for TLS connections", ca)
    return ident, context


def distrust_all() -> ssl.SSLContext:
    """A context that verifies and trusts nothing: what a client holds until a connect sets its real
    one, so that a path that forgot to would fail closed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# --------------------------------------------------------------------------------------- reasons
def _ssl_words(exc: ssl.SSLError) -> str:
    """``LIBRARY: REASON`` of an SSLError (OpenSSL's fixed words), without the ``(_ssl.c:...)``."""
    if exc.library or exc.reason:
        return ": ".join(part for part in (exc.library, exc.reason) if part)
    text = str(exc.args[1] if len(exc.args) > 1 else exc)
    return text.split(" (_ssl.c:")[0][:200]


def explain(exc: ssl.SSLError, name: str, *, ca: Optional[str] = None) -> tuple[str, bool]:
    """(the reason a handshake failed, whether it is permanent), for a server verified as ``name``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        said = f"[certificate verify failed: {(exc.verify_message or 'unknown')[:200]}]"
        if code == _SELF_SIGNED:
            why = f"the server's certificate is not trusted (self-signed; {_TRUST_HINT})"
        elif code == _SELF_SIGNED_IN_CHAIN:
            why = f"the server's certificate is not trusted (a self-signed certificate in its chain; {_TRUST_HINT})"
        elif code in _UNKNOWN_ISSUER:
            among = f"the CAs of tls_ca {ca!r}" if ca else "the system's trusted CAs"
            why = f"the server's certificate is not trusted (its issuer is not among {among}; {_TRUST_HINT})"
        elif code == _EXPIRED:
            why = "the server's certificate has expired (renew it on the server, or set tls_verify=false)"
        elif code == _NOT_YET_VALID:
            why = "the server's certificate is not valid yet (check the clocks, or set tls_verify=false)"
        elif code in _NAME_MISMATCH:
            why = (f"the server's certificate is not for {name} (connect by a name it carries, "
                   "or set tls_verify=false)")
        else:
            why = f"the server's certificate is not trusted ({_TRUST_HINT})"
        return f"{why} {said}", True
    words = _ssl_words(exc)
    if exc.reason in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"):
        return ("the TLS handshake failed: the server does not speak TLS on this port (a plaintext port?) "
                f"[{words}]"), True
    if exc.reason and ("ALERT" in exc.reason or "NO_PROTOCOLS" in exc.reason or "NO_SHARED_CIPHER" in exc.reason):
        return f"the TLS handshake failed: the server refused it [{words}]", True
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return f"the server closed the connection during the TLS handshake [{words}]", False
    return f"the TLS handshake failed [{words}]", False


def explain_connect(exc: OSError, host: str, port: int, timeout: float, *,
                    ca: Optional[str] = None, handshake: bool = False) -> tuple[str, bool]:
    """(the reason a connect failed, whether it is permanent) for the ``OSError`` it raised (a TLS
    handshake's included: ``explain``, the server verified as ``host``); ``handshake``: it was
    raised after the TCP connection was made, during the TLS handshake."""
    if isinstance(exc, ssl.SSLError):
        return explain(exc, host, ca=ca)
    if handshake and isinstance(exc, (TimeoutError, socket.timeout)):
        return (f"the server did not answer the TLS handshake within {timeout:g}s ({host}:{port}: "
                "a plaintext port?)"), False
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host} (DNS: {exc.strerror or 'no address'})", False
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {host}:{port} (nothing listens there?)", False
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"the server did not answer the connection within {timeout:g}s ({host}:{port})", False
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{host}:{port} is unreachable ({exc.strerror})", False
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return f"the server closed the connection at once ({host}:{port})", False
    return f"could not connect to {host}:{port} ({exc.strerror or str(exc)[:200] or type(exc).__name__})", False
