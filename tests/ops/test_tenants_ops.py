"""`greenroom tenant ...` and `greenroom status` by tenant (issue 18, Ops), against real redis-servers
(ACL users created for real, and used), hand-written heartbeats and a real frontend with ngircd."""

from __future__ import annotations

import json
import os
import time

import pytest
import redis

from frontend import tenants
from frontend.keys import Keys
from tests.ops.helpers import PasswordRedis, cli, greenroom
from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, redis_now_ms, running_frontend
from tests.support.names import uniq
from tests.support.servers import RedisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ESC = "\x1b"


def _room(client, room: str, tenant: str | None, state: str = "joined") -> None:
    spec = {"protocol": "irc", "server": "irc.example.org", "nick": "bot", "channel": "#" + room[:40]}
    if tenant is not None:
        spec["tenant"] = tenant
    client.hset("rooms", room, json.dumps(spec))
    client.hset("rooms:state", room, json.dumps({"state": state, "since": time.time()}))


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


# --------------------------------------------------------------------------------- the registry
def test_tenant_add_list_show_set_remove(redis_url, redis_client):
    url = ["--redis-url", redis_url]
    _room(redis_client, "acme-1", "acme")
    _room(redis_client, "acme-2", "acme", "backoff")
    _room(redis_client, "free-1", None)
    _room(redis_client, "label-1", "someone" + ESC + "[31m")

    added = cli("tenant", "add", "acme", "--max-rooms", "1", "--lines-per-minute", "600", *url)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines()[0] == ("tenant acme added: max_rooms 1, lines_per_minute 600, "
                                            "max_queued no limit")
    assert "2 rooms naming tenant acme already: counted towards its max_rooms" in added.stdout
    assert "tenant acme has 2 rooms, more than its max_rooms 1: none is parted" in added.stdout
    assert redis_client.smembers("tenant:acme:rooms") == {b"acme-1", b"acme-2"}
    assert json.loads(redis_client.hget("tenants", "acme")) == {
        "max_rooms": 1, "lines_per_minute": 600, "max_queued": None, "scoped": False}
    version = int(redis_client.get("tenants:version"))

    again = cli("tenant", "add", "acme", *url)
    assert again.returncode == 1 and "tenant acme exists already" in again.stderr
    assert json.loads(redis_client.hget("tenants", "acme"))["max_rooms"] == 1
    for bad in ("Acme", "a" * 64, "-x", "x" + ESC + "]0;owned\x07", ""):
        refused = cli("tenant", "add", *url, "--", bad)
        assert refused.returncode == 2 and "a tenant name is 1-63" in refused.stderr, bad
        assert ESC not in refused.stderr and "\x07" not in refused.stderr
    with pytest.raises(SystemExit) as bad_limit:  # argparse refuses it: usage and exit 2
        cli("tenant", "add", "globex", "--max-rooms", "-1", *url)
    assert bad_limit.value.code == 2 and not redis_client.hexists("tenants", "globex")
    assert cli("tenant", "add", "globex", "--max-queued", "none", *url).returncode == 0
    # an entry anyone may have written by hand: ignored by the frontends, and said so, escaped
    redis_client.hset("tenants", "evil" + ESC + "[2J", b'{"max_rooms": 1}')

    listed = cli("tenant", "list", *url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["TENANT", "MAX_ROOMS", "LINES/MIN", "MAX_QUEUED", "SCOPED", "ROOMS", "QUOTA",
                                "SENT", "DROPS", "STATES"]
    assert lines[1].split() == ["acme", "1", "600", "-", "no", "2", "2/1", "200%", "over", "-", "-",
                                "backoff=1", "joined=1"]
    assert lines[2].split() == ["globex", "-", "-", "-", "no", "0", "0/-", "-", "-"]
    assert lines[3].split() == ["(unregistered)", "2", "-", "-", "-", "joined=2"]
    assert "2 tenants" in lines and "SENT, DROPS: - (no live frontend)" in lines
    assert "1 entries of `tenants` are invalid and ignored" in listed.stderr
    assert "evil\\x1b[2J" in listed.stderr and ESC not in listed.stderr + listed.stdout
    data = json.loads(cli("tenant", "list", "--json", *url).stdout)
    acme = data["registered"][0]
    assert acme["name"] == "acme" and acme["quota"] == {"used": 2, "max": 1, "share": 2.0}
    assert acme["by_state"] == {"joined": 1, "backoff": 1} and acme["live"] == {
        "rooms": None, "lines_sent": None, "drops": None}
    assert data["unregistered"]["rooms"] == 2 and data["invalid"] == ["evil\x1b[2J"]

    shown = cli("tenant", "show", "acme", *url)
    assert shown.returncode == 0 and "  max_rooms         1" in shown.stdout
    assert "  scoped            no:" in shown.stdout and "acme-2                   backoff" in shown.stdout
    assert cli("tenant", "show", "nobody", *url).returncode == 1
    detail = json.loads(cli("tenant", "show", "acme", "--json", *url).stdout)
    assert [r["room"] for r in detail["room_list"]] == ["acme-1", "acme-2"] and detail["acl_user_exists"] is False

    changed = cli("tenant", "set", "acme", "--max-rooms", "none", "--max-queued", "50", *url)
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines()[0] == "tenant acme: max_rooms 1 -> no limit, max_queued no limit -> 50"
    assert json.loads(redis_client.hget("tenants", "acme")) == {
        "max_rooms": None, "lines_per_minute": 600, "max_queued": 50, "scoped": False}
    assert int(redis_client.get("tenants:version")) > version
    assert "unchanged" in cli("tenant", "set", "acme", "--max-queued", "50", *url).stdout
    assert cli("tenant", "set", "acme", *url).returncode == 2
    assert cli("tenant", "set", "nobody", "--max-rooms", "3", *url).returncode == 1

    refused = cli("tenant", "remove", "acme", *url)
    assert refused.returncode == 1 and "tenant acme has 2 rooms (acme-1, acme-2)" in refused.stderr
    assert "--force" in refused.stderr and redis_client.hexists("tenants", "acme")
    removed = cli("tenant", "remove", "acme", "--force", *url)
    assert removed.returncode == 0, removed.stderr
    assert "its 2 rooms (acme-1, acme-2) stay joined as rooms whose tenant is a free label" in removed.stdout
    assert "it had no ACL user" in removed.stdout
    assert not redis_client.hexists("tenants", "acme") and not redis_client.exists("tenant:acme:rooms")
    assert redis_client.hexists("rooms", "acme-1")
    assert cli("tenant", "remove", "acme", *url).returncode == 1
    # a room parted while it was unregistered is not counted when it comes back
    redis_client.hdel("rooms", "acme-2")
    assert "1 room naming tenant acme already" in cli("tenant", "add", "acme", *url).stdout
    assert redis_client.smembers("tenant:acme:rooms") == {b"acme-1"}
    assert cli("tenant", "remove", "globex", *url).returncode == 0


def test_the_tenant_views_escape_what_redis_holds(redis_url, redis_client):
    tenants.save(redis_client, Keys(""), tenants.Tenant("acme", max_rooms=3))
    hostile = ["\x1b]0;owned\x07", "\x9b31m", "\u2028forged line", "\x1b[2J"]
    for i, bad in enumerate(hostile):
        _room(redis_client, f"acme-{i}{bad}", "acme", f"st{bad}")
        _room(redis_client, f"free-{i}{bad}", f"label{bad}", f"st{bad}")
    redis_client.hset("rooms:state", "acme-0" + hostile[0], json.dumps({"state": hostile[0], "since": "x"}))
    _beat(redis_client, "fe" + hostile[0], lease_ms=30_000, tenants_field={
        "acme": {"lines_sent": 1}, hostile[1]: {"lines_sent": 2, "drops": 1}})
    url = ["--redis-url", redis_url]
    for args in (["status"], ["status", "--json"], ["tenant", "list"], ["tenant", "list", "--json"],
                 ["tenant", "show", "acme"], ["tenant", "show", "acme", "--json"]):
        done = cli(*args, *url)
        assert done.returncode in (0, 3), (args, done.stderr)
        for raw in ("\x1b", "\x07", "\x9b", "\u2028"):
            assert raw not in done.stdout and raw not in done.stderr, (args, raw)
        if "--json" in args:
            json.loads(done.stdout)
    shown = cli("tenant", "show", "acme", *url).stdout
    assert "acme-0\\x1b]0;owned\\x07" in shown and "acme-2\\u2028forged line" in shown


# ------------------------------------------------------------------------------- credentials
def test_credentials_print_one_url_that_works_and_reaches_only_the_tenants_keys(tmp_path):
    admin_password = "adm@in-Secret"
    with PasswordRedis(str(tmp_path), admin_password) as server:
        admin = redis.Redis(host=server.host, port=server.port, password=admin_password)
        url = ["--redis-url", server.url]
        assert cli("tenant", "add", "acme", *url).returncode == 0
        assert cli("tenant", "add", "beta", *url).returncode == 0
        admin.rpush("tenant:beta:messages", "beta's event")
        admin.hset("rooms", "r1", json.dumps({"protocol": "irc", "server": "h", "nick": "n", "channel": "#c",
                                              "password": "room-secret"}))

        made = greenroom("tenant", "credentials", "acme", *url)  # a real process: its stdout exactly
        assert made.returncode == 0, made.stderr
        assert made.stdout.count("\n") == 1 and made.stdout.endswith("\n")
        tenant_url = made.stdout.strip()
        assert tenant_url.startswith("redis://greenroom-tenant-acme:") and tenant_url.endswith(
            f"@{server.host}:{server.port}/0")
        password = redis.connection.parse_url(tenant_url)["password"]
        assert len(password) >= 32 and password not in made.stderr
        assert "adm" not in tenant_url.split("://")[1].split("@")[-1] and "Secret" not in tenant_url
        assert "created ACL user greenroom-tenant-acme" in made.stderr and "--rotate" in made.stderr
        assert json.loads(admin.hget("tenants", "acme"))["scoped"] is True

        acme = redis.Redis.from_url(tenant_url)
        assert acme.ping()
        acme.rpush("tenant:acme:control", "{}")
        acme.set("tenant:acme:once:x", "1")
        assert acme.lrange("tenant:acme:control", 0, -1) == [b"{}"]
        for attempt in (lambda: acme.hgetall("rooms"), lambda: acme.lrange("messages", 0, -1),
                        lambda: acme.rpush("control", "{}"), lambda: acme.lrange("tenant:beta:messages", 0, -1),
                        lambda: acme.hgetall("tenants"), lambda: acme.keys("*"), lambda: acme.scan(0),
                        lambda: acme.config_get("requirepass"), lambda: acme.execute_command("ACL", "LIST")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()

        # again: refused without --rotate, and nothing on stdout
        twice = cli("tenant", "credentials", "acme", *url)
        assert twice.returncode == 1 and twice.stdout == "" and "has credentials already" in twice.stderr
        assert acme.ping()

        # --rotate: a new password; the old one no longer logs in, and its open connection is closed
        rotated = cli("tenant", "credentials", "acme", "--rotate", *url)
        assert rotated.returncode == 0, rotated.stderr
        (new_url,) = rotated.stdout.splitlines()
        new_password = redis.connection.parse_url(new_url)["password"]
        assert new_password != password and new_password not in rotated.stderr
        assert "the old one no longer works" in rotated.stderr
        with pytest.raises(redis.exceptions.ConnectionError):  # (AuthenticationError, or the closed link)
            acme.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(tenant_url).ping()
        fresh = redis.Redis.from_url(new_url)
        assert fresh.llen("tenant:acme:control") == 1

        shown = cli("tenant", "show", "acme", *url)
        assert "ACL user greenroom-tenant-acme" in shown.stdout and new_password not in shown.stdout
        assert new_password not in cli("tenant", "list", "--json", *url).stdout

        # revoke: the user is gone, with its connections, and the tenant is no longer scoped
        revoked = cli("tenant", "revoke", "acme", *url)
        assert revoked.returncode == 0 and "ACL user greenroom-tenant-acme deleted" in revoked.stdout
        with pytest.raises(redis.exceptions.ConnectionError):
            fresh.ping()
        assert admin.execute_command("ACL", "GETUSER", "greenroom-tenant-acme") is None
        assert json.loads(admin.hget("tenants", "acme"))["scoped"] is False
        assert "nothing to revoke" in cli("tenant", "revoke", "acme", *url).stdout

        # remove deletes the ACL user too
        assert cli("tenant", "credentials", "beta", *url).returncode == 0
        removed = cli("tenant", "remove", "beta", *url)
        assert removed.returncode == 0 and "its ACL user greenroom-tenant-beta is deleted" in removed.stdout
        assert admin.execute_command("ACL", "GETUSER", "greenroom-tenant-beta") is None
        assert cli("tenant", "credentials", "nobody", *url).returncode == 1
        assert admin.execute_command("ACL", "USERS") == [b"default"]


class AclFileRedis(RedisServer):
    """A private redis-server that keeps its ACL users in an aclfile."""

    def _argv(self) -> list[str]:
        path = os.path.join(self.workdir, "users.acl")
        open(path, "a").close()
        return super()._argv() + ["--aclfile", path]


def test_an_acl_file_keeps_a_tenants_user_across_a_redis_restart_and_not_a_revoked_one(tmp_path):
    with AclFileRedis(str(tmp_path)) as server:
        url = ["--redis-url", server.url]
        assert cli("tenant", "add", "acme", *url).returncode == 0
        made = cli("tenant", "credentials", "acme", *url)
        assert made.returncode == 0 and "aclfile" not in made.stderr
        (tenant_url,) = made.stdout.splitlines()
        server.restart()  # (a Redis without persistence: the registry is gone, the ACL user is not)
        assert redis.Redis.from_url(tenant_url).llen("tenant:acme:control") == 0
        revoked = cli("tenant", "revoke", "acme", *url)  # a user left without its tenant goes too
        assert revoked.returncode == 0 and "ACL user greenroom-tenant-acme deleted" in revoked.stdout
        assert cli("tenant", "revoke", "acme", *url).returncode == 1
        server.restart()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(tenant_url).ping()


# ------------------------------------------------------------------------------ status by tenant
def _beat(client, fid: str, *, lease_ms: int, tenants_field=None, raw: bytes | None = None) -> None:
    client.zadd("fleet:leases", {fid: redis_now_ms(client) + lease_ms})
    fields = {"host": "h", "pid": "1", "started": str(time.time() - 60), "rooms": "0"}
    if tenants_field is not None:
        fields["tenants"] = json.dumps(tenants_field)
    if raw is not None:
        fields["tenants"] = raw
    client.hset(f"frontends:{fid}", mapping=fields)
    client.expire(f"frontends:{fid}", 60)


def test_status_by_tenant_sums_the_live_frontends_heartbeats(redis_url, redis_client):
    keys = Keys("")
    tenants.save(redis_client, keys, tenants.Tenant("acme", max_rooms=4))
    tenants.save(redis_client, keys, tenants.Tenant("beta"))
    _room(redis_client, "a1", "acme")
    _room(redis_client, "a2", "acme", "backoff")
    _room(redis_client, "b1", "beta")
    _room(redis_client, "x1", "<script>alert(1)</script>")
    redis_client.sadd("tenant:acme:rooms", "a1", "a2", "a3")
    url = ["--redis-url", redis_url]

    # live frontends, none with the field yet: "-"
    _beat(redis_client, "fe-1", lease_ms=30_000)
    out = cli("status", *url).stdout
    section = out[out.index("TENANT"):].splitlines()
    assert section[1].split() == ["acme", "2", "3/4", "75%", "-", "-", "backoff=1", "joined=1"]
    assert section[2].split() == ["beta", "1", "0/-", "-", "-", "joined=1"]
    assert section[3].split() == ["(unregistered)", "1", "-", "-", "-", "joined=1"]
    assert "SENT, DROPS: - (no live frontend's heartbeat has per-tenant counters yet: 0 of 1)" in section

    # two live frontends with counters (one also hostile), one dead one whose heartbeat is still there
    _beat(redis_client, "fe-1", lease_ms=30_000, tenants_field={
        "acme": {"rooms": 1, "lines_sent": 100, "drops": 2}, "beta": {"rooms": 1, "lines_sent": 5, "drops": 0},
        "gone" + ESC + "[2J": {"rooms": 1, "lines_sent": 7, "drops": 1}})
    _beat(redis_client, "fe-2", lease_ms=30_000, tenants_field={
        "acme": {"rooms": 1, "lines_sent": 20.0, "drops": -5}, "beta": {"lines_sent": "9", "drops": True},
        "<b>x</b>": {"lines_sent": 1e300, "drops": 3}, "oops": [1, 2]})
    _beat(redis_client, "fe-dead", lease_ms=-10_000, tenants_field={"acme": {"lines_sent": 1000, "drops": 1000}})
    _beat(redis_client, "fe-old", lease_ms=30_000, raw=b"not json")
    result = cli("status", *url)
    section = result.stdout[result.stdout.index("TENANT"):].splitlines()
    assert section[1].split() == ["acme", "2", "3/4", "75%", "120", "2", "backoff=1", "joined=1"]
    assert section[2].split() == ["beta", "1", "0/-", "5", "0", "joined=1"]
    assert section[3].split() == ["(unregistered)", "1", "-", "7", "4", "joined=1"]
    assert "SENT, DROPS: summed over 2 of 3 live frontends" in result.stdout
    assert ESC not in result.stdout
    data = json.loads(cli("status", "--json", *url).stdout)["tenants"]
    assert data["reporting"] == 2 and data["live_frontends"] == 3
    assert data["registered"][0]["live"] == {"rooms": 2, "lines_sent": 120, "drops": 2}
    assert data["unregistered"]["live"] == {"rooms": 1, "lines_sent": 7, "drops": 4}
    assert data["unregistered"]["name"] is None and data["registered"][0]["intake"] == 0
    listed = cli("tenant", "list", *url).stdout.splitlines()
    assert listed[1].split()[:10] == ["acme", "4", "-", "-", "no", "2", "3/4", "75%", "120", "2"]

    # no tenant registered: status has no tenant section (single-tenant users see nothing new)
    redis_client.delete("tenants")
    assert "TENANT" not in cli("status", *url).stdout


def test_status_by_tenant_with_a_real_frontend(redis_url, redis_client, ngircd):
    keys = Keys("")
    tenants.save(redis_client, keys, tenants.Tenant("acme", max_rooms=2))
    events = EventLog(redis_client)
    url = ["--redis-url", redis_url]
    with running_frontend(redis_url, frontend_id="fe-tenants", heartbeat_interval=0.3, lease_time=3.0,
                          lease_margin=1.0) as fe:
        push(redis_client, *[{"type": "join", "room": f"rt{i}", "spec": irc_spec(ngircd, f"#rt{i}", nick=f"rt{i}",
                                                                               tenant="acme")} for i in range(3)],
             {"type": "join", "room": "rt-free", "spec": irc_spec(ngircd, "#rtfree", nick="rtfree")})
        for room in ("rt0", "rt1", "rt-free"):
            events.wait(type="joined", room=room)
        assert events.wait(type="error", room="rt2")["code"] == "quota_exceeded"
        wait_until(lambda: b'"joined":3' in (redis_client.hget("frontends:fe-tenants", "rooms_by_state") or b""),
                   what="the heartbeat with three joined rooms")

        # the heartbeat's per-tenant counters: acme's two rooms and three lines, the free room's one line
        push(redis_client, *[{"type": "say", "room": "rt0", "text": f"hello {i}"} for i in range(3)],
             {"type": "say", "room": "rt-free", "text": "hi"})

        def reported():
            raw = redis_client.hget("frontends:fe-tenants", "tenants")
            return json.loads(raw) if raw else {}
        wait_until(lambda: reported().get("acme", {}).get("lines_sent") == 3
                   and reported().get("_other", {}).get("lines_sent") == 1, what="the lines in the heartbeat")
        assert reported() == {"acme": {"rooms": 2, "lines_sent": 3, "drops": 0},
                              "_other": {"rooms": 1, "lines_sent": 1, "drops": 0}}
        result = cli("status", *url)
        assert result.returncode == 0, result.stderr
        section = result.stdout[result.stdout.index("TENANT"):].splitlines()
        assert section[1].split()[:6] == ["acme", "2", "2/2", "100%", "3", "0"], section
        assert section[2].split()[:3] == ["(unregistered)", "1", "-"], section
        shown = cli("tenant", "show", "acme", *url).stdout
        assert "rt0                      joined" in shown and "fe-tenants" in shown
        refused = cli("tenant", "remove", "acme", *url)
        assert refused.returncode == 1 and "has 2 rooms (rt0, rt1)" in refused.stderr
        # a limit lifted reaches the frontend at its next lease renewal: the refused room joins now
        assert cli("tenant", "set", "acme", "--max-rooms", "3", *url).returncode == 0
        wait_until(lambda: fe.tenants.get("acme").max_rooms == 3, timeout=5, what="the frontend's new limit")
        push(redis_client, {"type": "join", "room": "rt2", "spec": irc_spec(ngircd, "#rt2", nick="rt2",
                                                                          tenant="acme")})
        events.wait(type="joined", room="rt2")
        assert redis_client.scard("tenant:acme:rooms") == 3
