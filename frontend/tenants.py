"""Tenants: the customers of a hosted greenroom, their quotas, and their own intakes.

The registry is the Redis hash ``tenants`` (name -> JSON ``{"max_rooms":..,"lines_per_minute":..,
"max_queued":..,"scoped":..}``); every change bumps ``tenants:version``, and every frontend re-reads the
registry when it sees a new version (after its lease renewals), so a change needs no restart. Without
``require_tenants`` a room's ``tenant`` stays a free label, as before; with it, a ``join`` must name a
registered tenant.

A *scoped* tenant (``greenroom tenant credentials NAME``) has keys of its own under
``tenant:<name>:``: its intake ``tenant:<name>:control`` (each frontend runs a router for it), its
events lists ``tenant:<name>:messages[.<name>]`` (where its rooms' events go, whatever pushed the
join), and the lists its ``backend_sdk`` consumers keep there. A Redis ACL user may touch only those:
the frontend takes the tenant from the intake a command came through (a tag only scripts write),
never from the payload, and refuses a command for a room of another tenant (``forbidden``).

Quotas: ``max_rooms`` is counted across every frontend in ``tenant:<name>:rooms`` (a set: a join of a
new room past it is refused, ``quota_exceeded``); ``lines_per_minute`` and ``max_queued`` are split
between the frontends by the share of the tenant's rooms each holds (``share()``), so no line costs a
Redis round trip.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, replace
from typing import Callable

import redis
import ujson

from .errors import ConfigError, ProtocolError
from .keys import EVENTS_DEFAULT, Keys

log = logging.getLogger(__name__)

#: a registered tenant's name: safe in Redis keys, ACL patterns, metric labels
TENANT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Tenant:
    """One registered tenant and its limits (None: no limit)."""

    name: str
    max_rooms: int | None = None
    lines_per_minute: int | None = None
    max_queued: int | None = None
    #: it has credentials: its own intake, events namespace and Redis ACL user
    scoped: bool = False

    def to_json(self) -> bytes:
        return ujson.dumps({k: v for k, v in asdict(self).items() if k != "name"}).encode()

    @staticmethod
    def from_json(name: str, raw: bytes | str) -> "Tenant":
        obj = ujson.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        def limit(key: str) -> int | None:
            value = obj.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a whole number >= 0")
            return value
        return Tenant(name=name, max_rooms=limit("max_rooms"), lines_per_minute=limit("lines_per_minute"),
                      max_queued=limit("max_queued"), scoped=obj.get("scoped") is True)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not TENANT_NAME_RE.match(name):
        raise ConfigError(f"a tenant name is 1-63 lower-case letters, digits, '_' or '-' "
                          f"(starting with a letter or digit), not {name!r}")
    return name


class TenantTable:
    """What this frontend knows of the tenant registry."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self.tenants: dict[str, Tenant] = {}
        self.version: bytes | None = None

    def refresh(self) -> bool:
        """Re-read the registry if its version changed; True when it did."""
        version = self._client.get(self._keys.tenants_version)
        if version == self.version and self.version is not None:
            return False
        tenants = {}
        for raw_name, raw in self._client.hgetall(self._keys.tenants).items():
            name = raw_name.decode("utf-8", "replace")
            try:
                tenants[check_name(name)] = Tenant.from_json(name, raw)
            except (ConfigError, ValueError) as exc:
                log.error("tenant %r: the registry's entry is invalid (%s); ignored", name, exc)
        changed = tenants != self.tenants
        self.tenants, self.version = tenants, version
        if changed:
            log.info("tenant registry: %d tenants (%d with their own keys)", len(tenants),
                     sum(1 for t in tenants.values() if t.scoped))
        return changed

    def get(self, name: str | None) -> Tenant | None:
        return self.tenants.get(name) if name is not None else None

    def scoped(self) -> list[str]:
        return sorted(name for name, t in self.tenants.items() if t.scoped)

    def events_key(self, tenant: str | None, events: str | None) -> str:
        """Where a room's events go: a scoped tenant's rooms write into its own namespace."""
        name = events or EVENTS_DEFAULT
        found = self.get(tenant)
        if found is not None and found.scoped:
            return self._keys.tenant(found.name) + name
        return self._keys.key(name)

    def check_join(self, tenant: str | None, *, source: str | None, require: bool) -> str | None:
        """The tenant a join's room belongs to, or ProtocolError: a command from a tenant's own intake
        belongs to that tenant (a spec naming another is ``forbidden``); with ``require_tenants``
        every room names a registered tenant."""
        if source is not None:
            if tenant is not None and tenant != source:
                raise ProtocolError("forbidden", f"a command of tenant {source!r} cannot create a room of "
                                                 f"tenant {tenant!r}")
            return source
        if require and self.get(tenant) is None:
            raise ProtocolError("bad_command", "a room must name a registered tenant (require_tenants): "
                                               f"{tenant!r} is not one")
        return tenant


# ------------------------------------------------------------------------------ the registry, for ops
def load_all(client: redis.Redis, keys: Keys) -> dict[str, Tenant]:
    table = TenantTable(client, keys)
    table.refresh()
    return table.tenants


def save(client: redis.Redis, keys: Keys, tenant: Tenant) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.tenants, check_name(tenant.name), tenant.to_json())
    pipe.incr(keys.tenants_version)
    pipe.execute()


def remove(client: redis.Redis, keys: Keys, name: str) -> bool:
    pipe = client.pipeline(transaction=True)
    pipe.hdel(keys.tenants, check_name(name))
    pipe.incr(keys.tenants_version)
    gone, _ = pipe.execute()
    return bool(gone)


def rooms_of(client: redis.Redis, keys: Keys, name: str) -> int:
    """How many rooms the tenant has, over every frontend."""
    return int(client.scard(keys.tenant_rooms(name)))


# ----------------------------------------------------------------------- tenant-scoped credentials
#: what a tenant's backends may run: lists, strings, sorted sets and hashes (the SDK's processing
#: lists, heartbeats, consumer registry and ``once`` keys), scripts (Redis checks every key a script
#: touches against the user's patterns), and connection commands. Not SCAN or KEYS (they would list
#: other tenants' key names), nothing administrative.
ACL_COMMANDS = ("-@all", "+@connection", "+@list", "+@string", "+@sortedset", "+@hash", "+@scripting",
                "+@transaction", "+exists", "+del", "+unlink", "+expire", "+pexpire", "+ttl", "+pttl",
                "+type", "-@dangerous", "-scan", "-keys", "-randomkey", "+script|load", "+script|exists")


def acl_user(name: str) -> str:
    return f"greenroom-tenant-{check_name(name)}"


def credentials(client: redis.Redis, keys: Keys, name: str, redis_url: str) -> str:
    """Create (or rotate) the Redis ACL user of tenant ``name``, mark the tenant scoped, and return a
    Redis URL with that user and its new password (``tenant_url``). The user may touch only
    ``tenant:<name>:*``: its intake, its events lists and what ``backend_sdk`` keeps around them.
    A rotation also closes the connections opened with the old password (Redis would let them go on)."""
    import secrets

    tenants = load_all(client, keys)
    tenant = tenants.get(check_name(name))
    if tenant is None:
        raise ConfigError(f"no tenant {name!r}: add it first (greenroom tenant add {name})")
    password = secrets.token_urlsafe(24)
    url = tenant_url(redis_url, acl_user(name), password)  # a URL we cannot make: no user is touched
    pattern = "~" + _acl_escape(keys.tenant(name)) + "*"
    client.execute_command("ACL", "SETUSER", acl_user(name), "reset", "on", f">{password}", pattern,
                           "resetchannels", *ACL_COMMANDS)
    # ACL SETUSER changes the password, not the sessions already authenticated with the old one
    client.execute_command("CLIENT", "KILL", "USER", acl_user(name))
    if update(client, keys, name, lambda t: replace(t, scoped=True)) is None:
        client.execute_command("ACL", "DELUSER", acl_user(name))  # removed meanwhile: no user left behind
        raise ConfigError(f"tenant {name!r} was removed meanwhile: no credentials made")
    return url


def revoke(client: redis.Redis, keys: Keys, name: str) -> None:
    """Delete the tenant's ACL user (Redis closes its connections); the tenant is no longer scoped (its
    intake is not read)."""
    client.execute_command("ACL", "DELUSER", acl_user(name))
    update(client, keys, name, lambda t: replace(t, scoped=False))


def update(client: redis.Redis, keys: Keys, name: str, change: Callable[[Tenant], Tenant]) -> Tenant | None:
    """Rewrite one tenant's entry atomically (WATCH on ``tenants``): ``change`` gets the entry as it is
    and returns the new one, so a concurrent change (limits, ``scoped``) is never lost. None (nothing
    written) when there is no such tenant; ConfigError when its entry is invalid."""
    check_name(name)
    with client.pipeline(transaction=True) as pipe:
        for _ in range(100):
            try:
                pipe.watch(keys.tenants)
                raw = pipe.hget(keys.tenants, name)
                if raw is None:
                    pipe.unwatch()
                    return None
                try:
                    current = Tenant.from_json(name, raw)
                except ValueError as exc:
                    raise ConfigError(f"tenant {name!r}: its registry entry is invalid ({exc})") from None
                new = replace(change(current), name=name)
                pipe.multi()
                pipe.hset(keys.tenants, name, new.to_json())
                pipe.incr(keys.tenants_version)
                pipe.execute()
                return new
            except redis.WatchError:
                continue
    raise ConfigError("the tenant registry kept changing while we wrote it: try again")


# ------------------------------------------------------------------------- the URL of a tenant
#: query options of a Redis URL that are copied into a tenant's URL: the database, TLS and socket
#: options. Every other option is left out; one that may carry a credential (``password=``,
#: ``sentinel_password=``, ...) ends the copy, since a secret may hold an unescaped ``&``.
URL_OPTIONS = ("db", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile",
               "ssl_check_hostname", "socket_timeout", "socket_connect_timeout", "socket_keepalive",
               "retry_on_timeout", "health_check_interval")
_CREDENTIAL_OPTION = re.compile(r"pass|secret|token|auth|user|sentinel|cred", re.I)
#: what may stand between ``@`` and the path: a host list (``h1:p1,[::1]:p2``), or nothing (unix://)
_URL_HOSTS = re.compile(r"^[A-Za-z0-9._:,\[\]%-]*$")


def tenant_url(redis_url: str, username: str, password: str) -> str:
    """``redis_url`` with ``username`` and ``password`` in place of its credentials: the URL a tenant's
    backends use. The one place a tenant's URL is made, for every form: ``redis://``, ``rediss://``,
    ``unix://``, ``redis+sentinel://h1,h2/service/db`` (the user and password are the data nodes')
    and ``redis+cluster://h1,h2``: the host list, path and the options of ``URL_OPTIONS`` are kept.

    Nothing of the operator's credentials is copied: the user information up to the last ``@`` that is
    followed by a host list (a password may hold ``@``, ``/``, ``?`` or ``#`` unescaped), every other
    query option (from the first one that may carry a credential on, everything: the sentinels' own
    ``sentinel_password`` too) and the fragment are left out (``tenant_url_left_out`` names them)."""
    from urllib.parse import quote

    scheme, hosts, query, _ = _url_parts(redis_url)
    return (f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{hosts}"
            + (f"?{'&'.join(query)}" if query else ""))


def tenant_url_left_out(redis_url: str) -> list[str]:
    """The names of the query options of ``redis_url`` that ``tenant_url`` leaves out."""
    return _url_parts(redis_url)[3]


def _url_parts(redis_url: str) -> tuple[str, str, list[str], list[str]]:
    """(scheme, host list and path, options kept, names of the options left out) of a Redis URL."""
    if not isinstance(redis_url, str) or "://" not in redis_url:
        raise ConfigError("the Redis URL must look like redis://host:port/db")
    scheme, _, rest = redis_url.partition("://")
    at = len(rest)
    while True:  # the last '@' followed by a host list ends the user information
        at = rest.rfind("@", 0, at)
        if at < 0:
            tail = rest
            break
        host = re.split(r"[/?#]", rest[at + 1:], maxsplit=1)[0]
        if _URL_HOSTS.match(host):
            tail = rest[at + 1:]
            break
    tail = tail.partition("#")[0]
    head, _, query = tail.partition("?")
    kept: list[str] = []
    left: list[str] = []
    parts = query.split("&") if query else []
    for i, part in enumerate(parts):
        option, eq, _ = part.partition("=")
        if _CREDENTIAL_OPTION.search(option):
            left.append(option if eq else "?")
            if i + 1 < len(parts):
                left.append("(every option after it)")
            break
        if eq and option in URL_OPTIONS:
            kept.append(part)
        elif part:
            left.append(option)
    return scheme, head, kept, left


def _acl_escape(text: str) -> str:
    """A key prefix as an ACL glob: its glob characters escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
