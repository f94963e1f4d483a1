"""Tenants for ops (issue 18): the URL a tenant's backends get, and its credentials, against a real
redis-server (ACL users created for real, and used)."""

from __future__ import annotations

import pytest
import redis

from frontend import tenants
from frontend.keys import Keys
from tests.faults import uniq

pytestmark = pytest.mark.e2e

# ------------------------------------------------------------------------------------- the URL
ADMIN_SECRETS = ("adm", "p@ss/w#rd?x", "sentpw", "qpw", "qusr")


@pytest.mark.parametrize("url, expect", [
    ("redis://:adm@127.0.0.1:6379/0", "redis://U:P@127.0.0.1:6379/0"),
    ("redis://admin:p@ss/w#rd?x@redis.internal:6380/2", "redis://U:P@redis.internal:6380/2"),
    ("rediss://:adm@[::1]:6379/1?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
     "rediss://U:P@[::1]:6379/1?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"),
    ("redis://h:1/0?db=3&password=qpw&ssl_ca_certs=/x", "redis://U:P@h:1/0?db=3"),
    ("redis://h:1/0?username=qusr&x=1", "redis://U:P@h:1/0"),
    ("unix://:adm@/run/redis.sock?db=4", "unix://U:P@/run/redis.sock?db=4"),
    ("unix:///run/redis.sock", "unix://U:P@/run/redis.sock"),
    ("redis://localhost", "redis://U:P@localhost"),
    ("redis://:adm@h:1/0#frag", "redis://U:P@h:1/0"),
    ("redis+sentinel://:adm@s1:26379,s2:26379,s3/greenroom/0?sentinel_password=sentpw",
     "redis+sentinel://U:P@s1:26379,s2:26379,s3/greenroom/0"),
    ("rediss+sentinel://s1,s2/mymaster?ssl_ca_certs=/ca.pem&sentinel_username=qusr&sentinel_password=sentpw",
     "rediss+sentinel://U:P@s1,s2/mymaster?ssl_ca_certs=/ca.pem"),
    ("redis+cluster://admin:adm@n1:7000,n2:7001,[::1]:7002", "redis+cluster://U:P@n1:7000,n2:7001,[::1]:7002"),
])
def test_the_tenant_url_keeps_the_servers_and_none_of_the_operators_credentials(url, expect):
    made = tenants.tenant_url(url, "U", "P")
    assert made == expect
    rest = made.split("://", 1)[1].replace("U:P@", "", 1)
    for secret in ADMIN_SECRETS:
        assert secret not in rest, (secret, made)
    assert tenants.tenant_url(url, "greenroom-tenant-a", "p/w@?#%") == expect.replace(
        "U:P@", "greenroom-tenant-a:p%2Fw%40%3F%23%25@")
    if url.startswith(("redis://", "rediss://", "unix://")):
        from redis.connection import parse_url

        parsed = parse_url(tenants.tenant_url(url, "greenroom-tenant-a", "p/w@?#%"))
        assert parsed["username"] == "greenroom-tenant-a" and parsed["password"] == "p/w@?#%"
    try:  # the parser of the daemon's Redis URLs, where this branch has it (Sentinel and Cluster forms)
        from frontend.redis_url import parse_url as parse_any
    except ImportError:
        return
    target = parse_any(made)
    assert (target.username, target.password) in (("U", "P"), (None, None))


def test_the_tenant_url_says_which_options_it_left_out():
    assert tenants.tenant_url_left_out("redis://h/0?db=1&ssl_ca_certs=/x") == []
    assert tenants.tenant_url_left_out("redis+sentinel://s/m?ssl_cert_reqs=none&sentinel_password=a&db=2") == [
        "sentinel_password", "(every option after it)"]
    assert tenants.tenant_url_left_out("redis://h/0?protocol=3") == ["protocol"]


def test_a_rotation_closes_the_connections_opened_with_the_old_password(redis_url, redis_client):
    keys, name = Keys(""), uniq("rot")
    tenants.save(redis_client, keys, tenants.Tenant(name))
    try:
        first = tenants.credentials(redis_client, keys, name, redis_url)
        old = redis.Redis.from_url(first)
        assert old.ping()
        second = tenants.credentials(redis_client, keys, name, redis_url)
        with pytest.raises(redis.exceptions.ConnectionError):  # Redis alone would let it go on
            old.ping()
        assert redis.Redis.from_url(second).llen(f"tenant:{name}:control") == 0
    finally:
        redis_client.execute_command("ACL", "DELUSER", tenants.acl_user(name))


def test_update_never_loses_a_concurrent_change(redis_url, redis_client):
    from dataclasses import replace

    keys = Keys("")
    tenants.save(redis_client, keys, tenants.Tenant("acme", max_rooms=1))
    other = redis.Redis.from_url(redis_url)
    seen = []

    def change(tenant):
        seen.append(tenant)
        if len(seen) == 1:  # another operator's credentials land meanwhile
            other.hset("tenants", "acme", tenants.Tenant("acme", max_rooms=1, scoped=True).to_json())
        return replace(tenant, max_queued=5)

    done = tenants.update(redis_client, keys, "acme", change)
    assert len(seen) == 2 and done == tenants.Tenant("acme", max_rooms=1, max_queued=5, scoped=True)
    assert tenants.load_all(redis_client, keys)["acme"] == done
    assert tenants.update(redis_client, keys, "nobody", change) is None
