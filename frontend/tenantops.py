"""Ops on the tenant registry (`greenroom tenant ...`, the dashboard's Tenants page).

The registry and the credentials themselves are ``frontend.tenants``; this module adds what an
operator needs around them, each change checked and written atomically (WATCH/MULTI):

- ``add`` registers a new tenant (never overwrites one) and counts the rooms that already name it in
  ``tenant:<name>:rooms``, so its ``max_rooms`` holds at once, without a frontend restart;
- ``change`` sets or lifts limits; ``scoped`` (its credentials) is never touched by it;
- ``remove`` refuses while the tenant has rooms (unless forced), then deletes its entry, its room
  count and its ACL user; its rooms, when forced, stay joined as rooms of a free tenant label;
- ``issue_credentials`` creates the ACL user (``--rotate`` makes a new password of an existing one),
  ``revoke_credentials`` deletes it; both keep Redis's ACL file in step when it has one.

Every frontend applies a change at its next lease renewal (it re-reads the registry when
``tenants:version`` moved). The password of a tenant is returned to the caller once and never stored,
logged or put in an exception here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import redis

from . import tenants
from .errors import ConfigError
from .keys import Keys
from .protocol import decode
from .tenants import Tenant, check_name

LIMITS = ("max_rooms", "lines_per_minute", "max_queued")
#: a limit as ops write it: a whole number >= 0, or "none" (no limit)
NO_LIMIT = "none"


class Refused(Exception):
    """A tenant action that was not done, with the reason for the operator."""


def parse_limit(text: str, what: str = "a limit") -> int | None:
    """``"none"`` -> None (no limit); a whole number >= 0; else ConfigError."""
    value = str(text).strip().lower()
    if value in (NO_LIMIT, ""):
        return None
    if not value.isdigit() or len(value) > 15:
        raise ConfigError(f"{what} is a whole number >= 0 or 'none', not {text!r}")
    return int(value)


def limit_text(value: int | None) -> str:
    return "no limit" if value is None else str(value)


# ------------------------------------------------------------------------------------- registry
#: counts a tenant's rooms that are still in ``rooms``: KEYS tenant:<name>:rooms, rooms; ARGV room ids
_RECOUNT = """
local n = 0
for _, room in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[2], room) == 1 then n = n + redis.call('SADD', KEYS[1], room) end
end
return n
"""


#: a new tenant: KEYS tenants, tenants:version, tenant:<name>:rooms; ARGV name, entry. A count left from
#: an earlier tenant of that name (its entry deleted by hand) is stale: it starts afresh, in the same
#: step, so a join that a frontend counts once it sees the entry is never wiped out.
_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('INCR', KEYS[2])
return 1
"""


def rooms_naming(client: redis.Redis, keys: Keys, name: str) -> list[bytes]:
    """The rooms of ``rooms`` whose spec names tenant ``name`` (sealed secrets leave ``tenant`` readable)."""
    found = []
    for room, raw in client.hscan_iter(keys.rooms, count=1000):
        if len(raw) > 1 << 20 or (name.encode() not in raw and b"\\u" not in raw):
            continue  # (a JSON writer may spell the name with \u escapes)
        try:
            spec = decode(raw)
        except Exception:  # hostile bytes: not a room of anyone's
            continue
        if isinstance(spec, dict) and spec.get("tenant") == name:
            found.append(room)
    return found


def recount(client: redis.Redis, keys: Keys, name: str) -> int:
    """Count the rooms that name tenant ``name`` in ``tenant:<name>:rooms`` (those still in ``rooms``
    when the script runs); returns how many were added."""
    rooms = rooms_naming(client, keys, name)
    added = 0
    for start in range(0, len(rooms), 500):
        added += int(client.eval(_RECOUNT, 2, keys.tenant_rooms(name), keys.rooms, *rooms[start:start + 500]))
    return added


def add(client: redis.Redis, keys: Keys, tenant: Tenant) -> dict[str, Any]:
    """Register a new tenant. Raises Refused when one of that name exists. Its room count starts
    afresh from the rooms that already name it (rooms made before it was registered count at once)."""
    name = check_name(tenant.name)
    tenant = replace(tenant, scoped=False)  # credentials are `greenroom tenant credentials`
    created = client.eval(_ADD, 3, keys.tenants, keys.tenants_version, keys.tenant_rooms(name), name,
                          tenant.to_json())
    if not int(created):
        raise Refused(f"tenant {name} exists already (`greenroom tenant set {name}` changes its limits)")
    counted = recount(client, keys, name)
    return {"tenant": tenant, "rooms": tenants.rooms_of(client, keys, name), "counted": counted}


def change(client: redis.Redis, keys: Keys, name: str, limits: dict[str, int | None]) -> tuple[Tenant, Tenant]:
    """Set the given limits (None lifts one) of an existing tenant; returns (before, after).
    Raises Refused for an unknown tenant."""
    check_name(name)
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise ConfigError(f"unknown limit {sorted(unknown)[0]!r} (known: {', '.join(LIMITS)})")
    for key, value in limits.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{key} must be a whole number >= 0 or none")
    before: list[Tenant] = []

    def apply(current: Tenant) -> Tenant:
        before[:] = [current]
        return replace(current, **limits)

    after = tenants.update(client, keys, name, apply)
    if after is None:
        raise Refused(f"no tenant {name} (`greenroom tenant list` lists them)")
    return before[0], after


def remove(client: redis.Redis, keys: Keys, name: str, *, force: bool = False) -> dict[str, Any]:
    """Remove a tenant: its registry entry, its room count (``tenant:<name>:rooms``) and its ACL user.

    Refused (``Refused``) for an unknown tenant, and while it has rooms (counted in
    ``tenant:<name>:rooms`` or naming it in ``rooms``) unless ``force``: checked and written under
    WATCH, so a join the frontends count meanwhile makes it look again. Forced, its rooms stay joined
    as rooms whose ``tenant`` is a free label. Its other keys under ``tenant:<name>:`` (intake, events
    lists, dead letters) stay for its backends to finish with."""
    check_name(name)
    count_key = keys.tenant_rooms(name)
    with client.pipeline(transaction=True) as pipe:
        for _ in range(50):
            try:
                pipe.watch(keys.tenants, count_key)
                raw = pipe.hget(keys.tenants, name)
                if raw is None:
                    pipe.unwatch()
                    raise Refused(f"no tenant {name} (`greenroom tenant list` lists them)")
                try:
                    scoped = Tenant.from_json(name, raw).scoped
                except ValueError:
                    scoped = True  # an invalid entry: assume the worst, its ACL user goes too
                counted = {r for r in pipe.smembers(count_key)}
                rooms = sorted(counted | set(rooms_naming(client, keys, name)))
                if rooms and not force:
                    pipe.unwatch()
                    shown = ", ".join(r.decode("utf-8", "replace") for r in rooms[:5]) + (
                        ", ..." if len(rooms) > 5 else "")
                    raise Refused(f"tenant {name} has {len(rooms)} room{'' if len(rooms) == 1 else 's'} "
                                  f"({shown}): part them first (`greenroom part ROOM`), or --force")
                pipe.multi()
                pipe.hdel(keys.tenants, name)
                pipe.delete(count_key)
                pipe.incr(keys.tenants_version)
                pipe.execute()
                break
            except redis.WatchError:
                continue
        else:
            raise Refused("the tenant's rooms kept changing while we looked: try again")
    had_user = acl_user_exists(client, name)
    if had_user:
        client.execute_command("ACL", "DELUSER", tenants.acl_user(name))
    lengths = intake_lengths(client, keys, name)
    return {"name": name, "rooms": [r.decode("utf-8", "replace") for r in rooms], "scoped": scoped,
            "acl_user": tenants.acl_user(name), "acl_user_deleted": bool(had_user),
            "acl_saved": persist_acl(client) if had_user else None, **lengths}


def intake_lengths(client: redis.Redis, keys: Keys, name: str) -> dict[str, int]:
    """The lengths of a tenant's intake and its dead letters (0 for a key of another type)."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.tenant_control(name))
    pipe.llen(keys.tenant_dead(name))
    control, dead = (n if isinstance(n, int) else 0 for n in pipe.execute(raise_on_error=False))
    return {"intake": control, "dead": dead}


# ---------------------------------------------------------------------------------- credentials
def acl_user_exists(client: redis.Redis, name: str) -> bool | None:
    """Whether the tenant's ACL user exists; None when this connection may not ask (NOPERM). Only
    existence is looked at: ACL GETUSER also answers password hashes, which are dropped unread."""
    try:
        return client.execute_command("ACL", "GETUSER", tenants.acl_user(name)) is not None
    except redis.ResponseError:
        return None


def persist_acl(client: redis.Redis) -> str | None:
    """``ACL SAVE`` when Redis keeps its users in an ACL file (so a restart keeps the change); None
    when saved, else why not (no ACL file: users live in memory only, or the save failed)."""
    try:
        client.execute_command("ACL", "SAVE")
        return None
    except redis.ResponseError as exc:
        text = str(exc)
        if "not configured" in text.lower() or "aclfile" in text.lower():
            return ("this Redis has no aclfile: its ACL users live in memory only and are gone after a "
                    "Redis restart (configure aclfile, or put the user in redis.conf)")
        return f"ACL SAVE failed: {text[:200]}"


def issue_credentials(client: redis.Redis, keys: Keys, name: str, redis_url: str, *,
                      rotate: bool = False) -> tuple[str, dict[str, Any]]:
    """Create the tenant's ACL user, or with ``rotate`` give the existing one a new password (the
    connections opened with the old one are closed). Returns (the URL with the user and its password,
    what the operator should know). Raises Refused for an unknown tenant, and when the user exists
    and ``rotate`` is not given (so that running it twice by mistake breaks no backend)."""
    check_name(name)
    found = tenants.load_all(client, keys).get(name)
    if found is None:
        raise Refused(f"no tenant {name}: add it first (`greenroom tenant add {name}`)")
    exists = acl_user_exists(client, name)
    if exists and not rotate:
        raise Refused(f"tenant {name} has credentials already (ACL user {tenants.acl_user(name)}): "
                      f"--rotate makes a new password; the old one then stops working at once and the "
                      f"connections opened with it are closed")
    url = tenants.credentials(client, keys, name, redis_url)
    scheme = redis_url.partition("://")[0].lower()
    return url, {"rotated": bool(exists), "acl_user": tenants.acl_user(name), "was_scoped": found.scoped,
                 "left_out": tenants.tenant_url_left_out(redis_url), "acl_saved": persist_acl(client),
                 "several_servers": "+" in scheme}


def revoke_credentials(client: redis.Redis, keys: Keys, name: str) -> dict[str, Any]:
    """Delete the tenant's ACL user (Redis closes its connections) and stop reading its intake. A user
    left without its tenant (the registry lost or edited by hand) is deleted too."""
    check_name(name)
    found = tenants.load_all(client, keys).get(name)
    exists = acl_user_exists(client, name)
    if found is None and not exists:
        raise Refused(f"no tenant {name} (`greenroom tenant list` lists them), and no ACL user "
                      f"{tenants.acl_user(name)}")
    tenants.revoke(client, keys, name)
    return {"acl_user": tenants.acl_user(name), "existed": exists, "was_scoped": bool(found and found.scoped),
            "acl_saved": persist_acl(client) if exists else None, **intake_lengths(client, keys, name)}
