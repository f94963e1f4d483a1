"""``tls_ca``: a CA bundle (PEM) on the frontend's host, named by a room spec. Pure (``os`` only).

The path comes from ``control``, so it is hostile input: anyone who may push a ``join`` names a file
the daemon opens. What that may cost is bounded, and nothing of the file leaks:

- the path is absolute and normalized (no ``.``/``..`` parts, no ``//``), at most ``MAX_PATH``
  characters (``check_path``, at every edge that validates a spec, the SDK's included);
- the file is opened read-only, non-blocking and without becoming a controlling terminal, and only
  a regular file of at most ``MAX_BYTES`` is read (``fstat`` on the open descriptor, so a path
  swapped for a FIFO or a device between two checks is still refused); the frontend checks that on
  the ``join`` it pops (``check_file``) and reads it when it builds the TLS context (``read_bundle``);
- errors (``CaFileError``) name the path and a reason in our own words, never the file's content,
  and never an ``OSError`` text (which could carry another path).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat

#: the longest ``tls_ca`` path accepted, in characters
MAX_PATH = 1024
#: the largest CA bundle read, in bytes (Debian's whole ca-certificates.crt is about 220 KB)
MAX_BYTES = 2 * 1024 * 1024
_PEM_CERT = "-----BEGIN CERTIFICATE-----"
#: one PEM certificate; what lies between them (comments, names in UTF-8 as in curl's bundle) is dropped
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*-----END CERTIFICATE-----")


class CaFileError(ValueError):
    """A ``tls_ca`` that cannot be used; the message says why (the path and a reason, no content)."""


def check_path(path: str) -> str:
    """The syntax of a ``tls_ca`` path (no file system access): absolute, normalized, bounded."""
    if len(path) > MAX_PATH:
        raise CaFileError(f"tls_ca is {len(path)} characters long, the limit is {MAX_PATH}")
    if not path.startswith("/") or path.startswith("//") or posixpath.normpath(path) != path:
        raise CaFileError(f"tls_ca {path!r} must be an absolute, normalized path (no '.', '..' or '//')")
    return path


def _open(path: str) -> tuple[int, os.stat_result]:
    """An open descriptor of the regular file ``path`` and its ``fstat``; CaFileError otherwise."""
    check_path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise CaFileError(f"tls_ca {path!r}: {_why(exc)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CaFileError(f"tls_ca {path!r}: not a regular file")
        if info.st_size > MAX_BYTES:
            raise CaFileError(f"tls_ca {path!r}: over {MAX_BYTES} bytes, not a CA bundle")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "the frontend may not read it (permission denied)"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is not a directory"
    if exc.errno == errno.ELOOP:
        return "too many symbolic links"
    if exc.errno == errno.EISDIR:
        return "not a regular file"
    return f"cannot be opened ({errno.errorcode.get(exc.errno or 0, 'error')})"


def identity(info: os.stat_result) -> tuple:
    """What tells one version of a file from another (a rewritten or replaced bundle differs)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def current(path: str) -> tuple:
    """The identity of the file at ``path`` now (``os.stat``: no open, so cheap enough for every
    connect); CaFileError unless it is a regular file of at most ``MAX_BYTES``."""
    check_path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise CaFileError(f"tls_ca {path!r}: {_why(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CaFileError(f"tls_ca {path!r}: not a regular file")
    if info.st_size > MAX_BYTES:
        raise CaFileError(f"tls_ca {path!r}: over {MAX_BYTES} bytes, not a CA bundle")
    return identity(info)


def check_file(path: str) -> tuple:
    """``path`` is a regular file the frontend may read, of at most ``MAX_BYTES``: its identity."""
    fd, info = _open(path)
    os.close(fd)
    return identity(info)


def read_bundle(path: str) -> tuple[tuple, str]:
    """``(identity, PEM text)`` of the CA bundle at ``path`` (its certificates only, ASCII);
    CaFileError when it is none."""
    fd, info = _open(path)
    try:
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise CaFileError(f"tls_ca {path!r}: {_why(exc)}") from None
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        raise CaFileError(f"tls_ca {path!r}: over {MAX_BYTES} bytes, not a CA bundle")
    blocks = _PEM_BLOCK.findall(b"".join(chunks))
    if not blocks:
        raise CaFileError(f"tls_ca {path!r}: holds no PEM certificate ({_PEM_CERT} ...)")
    return identity(info), b"\n".join(blocks).decode("ascii")
