"""Redis Sentinel and Redis Cluster test sets work: replication, fail-over by SIGKILL, redis-py's
``Sentinel`` and ``RedisCluster`` clients following them, healing, and nothing outliving a killed run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster, key_slot
from redis.retry import Retry
from redis.sentinel import Sentinel

from tests.support.redis_ha import RedisSentinelSet, _pairs

ROOT = Path(__file__).resolve().parents[1]


def retry(fn, timeout: float = 15.0):
    """Call ``fn`` until it stops raising redis errors (what a client does while a fail-over runs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, redis.ResponseError,
                redis.exceptions.ClusterError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- Sentinel ----------------------------------------------------------------------------------------

def test_sentinel_set_addresses_url_and_replication(redis_sentinel):
    hosts = ",".join(f"127.0.0.1:{port}" for _, port in redis_sentinel.sentinels)
    assert redis_sentinel.url() == f"redis+sentinel://{hosts}/greenroom/0"
    assert redis_sentinel.url(db=3, password="s3cr:t") == f"redis+sentinel://:s3cr:t@{hosts}/greenroom/3"
    assert len(redis_sentinel.sentinels) == 3 and redis_sentinel.service_name == "greenroom"
    primary, replica = redis_sentinel.primary, redis_sentinel.replica
    assert primary.info()["role"] == "master" and replica.info()["role"] == "slave"
    client = primary.client()
    client.rpush("control", b"\xff one", b"two")
    assert client.execute_command("WAIT", 1, 2000) == 1
    assert replica.client().lrange("control", 0, -1) == [b"\xff one", b"two"]
    for sentinel in redis_sentinel.sentinel_servers:  # everything announced on loopback
        others = sentinel.ask("SENTINEL", "sentinels", "greenroom")
        assert {_pairs(o)["ip"] for o in others} == {"127.0.0.1"}
        replicas = sentinel.ask("SENTINEL", "replicas", "greenroom")
        assert {_pairs(r)["ip"] for r in replicas} == {"127.0.0.1"}


def test_sentinel_failover_redis_py_finds_the_new_primary(redis_sentinel):
    sentinel = Sentinel(redis_sentinel.sentinels, socket_timeout=1)
    master = sentinel.master_for("greenroom", socket_timeout=1, socket_connect_timeout=1)
    master.set("before", "1")
    assert master.execute_command("WAIT", 1, 2000) == 1
    old = sentinel.discover_master("greenroom")
    killed = redis_sentinel.kill_primary()
    assert killed.address == old and not killed.running
    new = redis_sentinel.wait_for_promotion(timeout=20)
    took = redis_sentinel.last_failover_seconds
    print(f"sentinel fail-over: {took:.2f}s from SIGKILL to a promoted primary")
    assert new != old and took < 15, took
    assert retry(lambda: sentinel.discover_master("greenroom")) == new
    retry(lambda: master.set("after", "2"))  # the same client object, through the sentinels
    assert master.get("before") == b"1" and master.get("after") == b"2"
    assert redis_sentinel.node_at(new).client().get("after") == b"2"
    with redis.Redis.from_url(f"redis://{new[0]}:{new[1]}/0") as direct:
        assert direct.info("replication")["role"] == "master"


def test_sentinel_heal_brings_the_killed_primary_back_as_a_replica(redis_sentinel):
    old = redis_sentinel.kill_primary()
    new = redis_sentinel.wait_for_promotion()
    redis_sentinel.heal()
    assert old.running and old.info()["role"] == "slave" and old.info()["master_port"] == new[1]
    assert redis_sentinel.primary.address == new
    redis_sentinel.master().set("k", "v")
    assert retry(lambda: old.client().get("k")) == b"v"


def test_sentinel_set_with_a_password(tmp_path):
    with RedisSentinelSet(tempfile.mkdtemp(dir=tmp_path), password="pw-x") as ha:
        assert ha.url().startswith("redis+sentinel://:pw-x@127.0.0.1:")
        ha.master().set("k", "v")
        with redis.Redis(host=ha.primary.host, port=ha.primary.port, retry=Retry(NoBackoff(), 0)) as anonymous:
            with pytest.raises(redis.AuthenticationError):
                anonymous.get("k")
        assert ha.replica.client().get("k") in (b"v", None)


# -- Cluster -----------------------------------------------------------------------------------------

def test_cluster_one_hash_tag_and_many_slots(redis_cluster):
    assert len(redis_cluster.nodes) == 6 and len(redis_cluster.primary_nodes()) == 3
    assert all(host == "127.0.0.1" for host, _ in redis_cluster.addresses)
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        tagged = [f"{{gr}}:{name}" for name in ("control", "control:inflight:f1", "rooms", "messages")]
        assert len({key_slot(k.encode()) for k in tagged}) == 1
        client.rpush(tagged[0], "a", "b")
        assert client.lmove(tagged[0], tagged[1], "LEFT", "RIGHT") == b"a"  # a multi-key command
        script = "redis.call('HSET', KEYS[1], 'r1', ARGV[1]); return redis.call('RPUSH', KEYS[2], ARGV[1])"
        assert client.eval(script, 2, tagged[2], tagged[3], "x") == 1  # a multi-key script, one slot
        many = {f"key:{i}": str(i) for i in range(300)}
        for key, value in many.items():
            client.set(key, value)
        assert len({key_slot(k.encode()) for k in many}) > 250
        assert all(client.get(k) == v.encode() for k, v in many.items())
        sizes = [node.client().dbsize() for node in redis_cluster.primary_nodes()]
        assert len(sizes) == 3 and all(size > 50 for size in sizes), sizes  # spread over the 3 primaries
    finally:
        client.close()


def test_cluster_node_failover_promotes_its_replica(redis_cluster):
    client = redis_cluster.client()
    try:
        victim = redis_cluster._node_for_slot(key_slot(b"{gr}"))
        replica = redis_cluster.replicas_of(victim)
        assert len(replica) == 1
        client.set("{gr}:before", "1")
        assert victim.client().execute_command("WAIT", 1, 2000) == 1
        killed = redis_cluster.kill_node(victim)
        new = redis_cluster.wait_for_failover(timeout=20)
        took = redis_cluster.last_failover_seconds
        print(f"cluster fail-over: {took:.2f}s from SIGKILL to a promoted replica")
        assert new == replica[0].address and killed.address != new and took < 15, took
        assert retry(lambda: client.get("{gr}:before")) == b"1"
        retry(lambda: client.set("{gr}:after", "2"))
        assert replica[0].client().get("{gr}:after") == b"2"
        redis_cluster.heal()  # the old primary rejoins as the replica of its successor
        assert killed.info()["role"] == "slave" and killed.info()["master_port"] == new[1]
    finally:
        client.close()


# -- the reaper ----------------------------------------------------------------------------------------

_CHILD = """
import sys, time
from tests.support.redis_ha import RedisSentinelSet, _pairs, RedisClusterSet
from tests.support.inspircd import InspircdServer, AthemeServices
from tests.support import servers
base = sys.argv[1]
RedisSentinelSet(base + "/s").start()
ircd = InspircdServer(base + "/i").start()
AthemeServices(base + "/a", ircd).start()
print(" ".join(str(p.pid) for p in servers._children), flush=True)
time.sleep(600)
"""


def test_a_killed_test_run_leaves_no_server_behind(tmp_path):
    """A process that started a sentinel set, InspIRCd and Atheme is SIGKILLed: the reaper kills them all."""
    base = tempfile.mkdtemp(prefix="greenroom-reap-", dir="/tmp")
    os.chmod(base, 0o755)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, base], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 7, pids  # 2 redis + 3 sentinels + inspircd + atheme
        assert all(_alive(pid) for pid in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
