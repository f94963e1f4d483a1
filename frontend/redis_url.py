"""Redis URLs: what a ``redis_url`` names (one server, a Sentinel-managed primary, a Redis Cluster),
parsed without I/O, and the same URL with its secrets masked for logs.

The forms (README, "Redis for production"):

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS), ``unix://[[user]:password@]/path.sock?db=N``:
  one server, as redis-py reads them;
- ``redis+sentinel://[[user]:password@]host1[:port1],host2[:port2],.../service[/db]``, and
  ``rediss+sentinel://`` (TLS to the sentinels and the data nodes): the primary that the sentinels
  name for ``service`` (sentinel port 26379 by default). The user and password are the data nodes';
  the sentinels' own are ``?sentinel_password=...&sentinel_username=...`` (or the setting
  ``redis_sentinel_password``);
- ``redis+cluster://[[user]:password@]host1[:port1],host2[:port2],...[/0]``, ``rediss+cluster://``: a Redis
  Cluster, found from any of the seed nodes (port 6379 by default). greenroom keeps every key of a
  deployment in one hash slot, so ``key_prefix`` must hold a hash tag (``{...}``): ``check_prefix``.

TLS options in the query, for every form: ``ssl_cert_reqs`` (required, optional, none),
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname`` (true/false).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qsl, unquote

from .errors import ConfigError

SENTINEL_PORT = 26379
REDIS_PORT = 6379

#: the URL schemes and what they name: (kind, TLS)
SCHEMES = {
    "redis": ("direct", False), "rediss": ("direct", True), "unix": ("direct", False),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
SENTINEL_OPTIONS = ("sentinel_password", "sentinel_username")
#: query values that are never shown in logs
_SECRET_QUERY = re.compile(r"pass|secret|token|auth|key(?!file)", re.I)
_HOSTS = re.compile(r"^[A-Za-z0-9._:,\[\]%-]*$")


class RedisUrlError(ConfigError, ValueError):
    """A Redis URL greenroom cannot use (the message never holds a secret of it)."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names. ``kind`` is ``direct`` (one server: ``url`` goes to redis-py as it is),
    ``sentinel`` (``hosts`` are the sentinels, ``service`` the monitored name) or ``cluster``
    (``hosts`` are seed nodes)."""

    kind: str
    url: str = field(repr=False)
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    #: TLS options, as redis-py's keyword arguments
    tls_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    def node_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a connection to a data node (sentinel and cluster forms)."""
        out: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        out.update(self.tls_options)
        return out


def parse_url(url: str, *, sentinel_password: str | None = None) -> RedisTarget:
    """Parse ``url`` (see the module's doc); ``sentinel_password`` (a setting) wins over the query's.

    Raises ``RedisUrlError`` with a message that names what is wrong and never the password."""
    if not isinstance(url, str) or "://" not in url:
        raise RedisUrlError("the Redis URL must look like redis://host:port/db (README: Redis for production)")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise RedisUrlError(f"unknown Redis URL scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    kind, tls = SCHEMES[scheme]
    if kind == "direct":
        return RedisTarget(kind="direct", url=url, tls=tls)
    creds, at, tail = _split_userinfo(rest)
    if not at:
        tail = rest
    hostpart, pathquery = _split_first(tail, "/?")
    path, _, query = pathquery.partition("?")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = _hosts(hostpart, SENTINEL_PORT if kind == "sentinel" else REDIS_PORT, scheme)
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    allowed = TLS_OPTIONS + (SENTINEL_OPTIONS if kind == "sentinel" else ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise RedisUrlError(f"{scheme}:// URL: unknown option {unknown[0]!r} (known: {', '.join(allowed)})")
    tls_options = _tls_options(options, tls)
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if kind == "sentinel":
        if not parts or not parts[0]:
            raise RedisUrlError(f"{scheme}:// URL: name the monitored service, e.g. "
                                f"{scheme}://host1:26379,host2:26379/mymaster/0")
        if len(parts) > 2:
            raise RedisUrlError(f"{scheme}:// URL: the path is /service/db, not {path!r}")
        db = _db(parts[1] if len(parts) == 2 else "0", scheme)
        return RedisTarget(kind="sentinel", url=url, tls=tls, hosts=hosts, service=parts[0], db=db,
                           username=username, password=password,
                           sentinel_username=options.get("sentinel_username") or None,
                           sentinel_password=sentinel_password or options.get("sentinel_password") or None,
                           tls_options=tls_options)
    if len(parts) > 1 or (parts and _db(parts[0], scheme) != 0):
        raise RedisUrlError(f"{scheme}:// URL: a Redis Cluster has only database 0")
    return RedisTarget(kind="cluster", url=url, tls=tls, hosts=hosts, username=username, password=password,
                       tls_options=tls_options)


def check_prefix(target: RedisTarget, key_prefix: str) -> None:
    """On a cluster every key of a deployment must hash to one slot (the scripts read and write keys
    they build from the prefix): ``key_prefix`` must hold a complete, non-empty hash tag."""
    if target.kind != "cluster":
        return
    if hash_tag(key_prefix) is None:
        raise RedisUrlError(
            f"on a Redis Cluster, key_prefix must hold a hash tag so that every greenroom key lives in one "
            f"slot, e.g. key_prefix = \"{{greenroom}}:\" (it is {key_prefix!r})")


def hash_tag(key_prefix: str) -> str | None:
    """The hash tag every key starting with ``key_prefix`` hashes by, or None when the prefix alone
    does not decide it (Redis hashes the text between the first ``{`` and the first ``}`` after it)."""
    start = key_prefix.find("{")
    if start < 0:
        return None
    end = key_prefix.find("}", start + 1)
    if end <= start + 1:
        return None
    return key_prefix[start + 1:end]


def redact_url(url: str) -> str:
    """``url`` with its password (and any secret query value) masked, for logs and errors.

    Never reveals a secret, also for URLs that are not well-formed: when in doubt it masks more."""
    if not isinstance(url, str):
        return "<not a URL>"
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url and ":" not in url else "***"
    creds, at, tail = _split_userinfo(rest)
    if at:
        user = creds.split(":", 1)[0] if ":" in creds else ""
        shown = f"{scheme}://{user}:***@"
    else:
        shown, tail = f"{scheme}://", rest
    head, q, query = tail.partition("?")
    if q:
        masked = []
        for part in query.split("&"):
            key, eq, _ = part.partition("=")
            if eq and _SECRET_QUERY.search(key):
                masked.append(f"{key}=***")
                break  # a secret may hold an unescaped '&': nothing after it is shown
            masked.append(part if eq else "***")
        head += "?" + "&".join(masked)
    return shown + head


# ------------------------------------------------------------------------------------------ helpers
def _split_userinfo(rest: str) -> tuple[str, str, str]:
    """(credentials, "@", the rest) at the last ``@`` that is followed by a plausible host list, or
    ("", "", rest) when there is none (a password may hold ``@``, ``/`` or ``?`` unescaped)."""
    at = len(rest)
    while True:
        at = rest.rfind("@", 0, at)
        if at < 0:
            return "", "", rest
        after = rest[at + 1:]
        host, _ = _split_first(after, "/?")
        if _HOSTS.match(host):
            return rest[:at], "@", after


def _split_first(text: str, chars: str) -> tuple[str, str]:
    """``text`` cut before the first of ``chars``: (head, the rest with that character)."""
    cut = min((i for i in (text.find(c) for c in chars) if i >= 0), default=len(text))
    return text[:cut], text[cut:]


def _hosts(text: str, default_port: int, scheme: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [::1]:26379
            host, _, port = item[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
            raise RedisUrlError(f"{scheme}:// URL: {item!r} is not host:port")
        hosts.append((host, int(port) if port else default_port))
    if not hosts:
        raise RedisUrlError(f"{scheme}:// URL: name at least one host:port")
    return tuple(hosts)


def _db(text: str, scheme: str) -> int:
    if not text.isdigit():
        raise RedisUrlError(f"{scheme}:// URL: the database must be a number, not {text!r}")
    return int(text)


def _tls_options(options: Mapping[str, str], tls: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    given = {k: v for k, v in options.items() if k in TLS_OPTIONS}
    if given and not tls:
        raise RedisUrlError(f"TLS options ({', '.join(sorted(given))}) need a rediss scheme")
    if not tls:
        return out
    out["ssl"] = True
    for key, value in given.items():
        if key == "ssl_check_hostname":
            out[key] = value.strip().lower() in ("1", "true", "yes", "on")
        elif key == "ssl_cert_reqs":
            if value not in ("required", "optional", "none"):
                raise RedisUrlError("ssl_cert_reqs must be required, optional or none")
            out[key] = value
        else:
            out[key] = value
    return out
