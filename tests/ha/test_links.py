"""Every kind of greenroom Redis client follows a promotion by itself (issue 17), and what
``redis_wait_replicas`` does to a batch. Real sentinels and cluster nodes (``tests/conftest.py``).

The clients: a dispatcher's ``DirectLink``, the daemon's shared pool, the single connection a
``backend_sdk`` consumer blocks on (sync and asyncio), ``Backend``'s own pool. A fail-over is a SIGKILL
of the primary (connections break), a graceful ``SENTINEL FAILOVER`` / ``CLUSTER FAILOVER`` (the old
primary stays up and answers ``READONLY`` / ``MOVED``), and a lagging replica (the ledger's sequence
counter goes back: ``seq_floor.lua``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import gevent
import pytest
import redis
import ujson
from redis.cluster import key_slot
from redis.sentinel import Sentinel

from backend_sdk import Backend
from frontend.config import load_settings
from frontend.redis_conn import DirectLink, retry_policy, settings_endpoint, shared_client
from tests.support.aio import run_async
from tests.support.frontend import held, irc_spec, push, running_frontend
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.report import report
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def settings_for(url: str, **overrides: Any):
    return load_settings(env={}, overrides={"redis_url": url, "frontend_id": "ha-test", **overrides})


def until_ok(fn: Callable[[], Any], timeout: float = 20.0) -> tuple[Any, float, list[str]]:
    """Call ``fn`` until it stops raising Redis errors: (its result, seconds it took, errors seen)."""
    started = time.monotonic()
    errors: list[str] = []
    while True:
        try:
            return fn(), time.monotonic() - started, errors
        except redis.RedisError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if time.monotonic() - started > timeout:
                raise
            gevent.sleep(0.05)


def sdk_blocking_client(settings: Any) -> redis.Redis:
    """The shape of ``backend_sdk``'s blocking-pop client: one connection, no retry."""
    return settings_endpoint(settings).client(blocking=False, single_connection_client=True, socket_timeout=3.0,
                                              socket_connect_timeout=1.0, retry=retry_policy(0))


# ------------------------------------------------------------------------------------------ Sentinel
def test_a_direct_link_on_sentinel_talks_to_the_primary(redis_sentinel):
    """The measured pitfall: a connection of redis-py 8's own Sentinel pool that is written to without
    ``connect()`` goes to localhost:6379. The DirectLink's reaches the primary."""
    link = DirectLink(settings_for(redis_sentinel.url()))
    try:
        (info,) = link.round_trip([("INFO", "server")])
        assert int(info["tcp_port"]) == redis_sentinel.primary.port
    finally:
        link.close()
    plain = Sentinel(redis_sentinel.sentinels).master_for("greenroom").connection_pool.make_connection()
    try:
        plain.send_packed_command(plain.pack_command("PING"))
    except redis.ConnectionError:
        pass  # nothing listens there
    assert (plain.host, plain.port) == ("localhost", 6379)
    plain.disconnect()


def test_every_client_follows_a_kill_of_the_primary(redis_sentinel):
    settings = settings_for(redis_sentinel.url())
    link, shared, single = DirectLink(settings), shared_client(settings), sdk_blocking_client(settings)
    bot = Backend(redis_sentinel.url(), consumer="ha-links")
    clients: dict[str, Callable[[], Any]] = {
        "direct link": lambda: link.round_trip([("RPUSH", "followed", "link")]),
        "shared pool": lambda: shared.rpush("followed", "shared"),
        "sdk blocking connection": lambda: single.rpush("followed", "single"),
        "sdk Backend.say": lambda: bot.say("r1", "sdk"),
    }
    try:
        for write in clients.values():
            write()
        old = redis_sentinel.kill_primary().address
        new = redis_sentinel.wait_for_promotion()
        assert new != old
        took = {}
        for name, write in clients.items():
            _, seconds, errors = until_ok(write)
            took[name] = round(redis_sentinel.last_failover_seconds + seconds, 2)
        took["sdk asyncio blocking connection"] = round(redis_sentinel.last_failover_seconds + _async_write(settings), 2)
        report("sentinel_clients_follow_a_kill", failover_s=round(redis_sentinel.last_failover_seconds, 2),
               **{k.replace(" ", "_") + "_s": v for k, v in took.items()})
        written = redis_sentinel.node_at(new).client().lrange("followed", 0, -1)
        assert written.count(b"link") == written.count(b"shared") == written.count(b"single") == 2  # before, after
        assert b"async" in written
        assert redis_sentinel.node_at(new).client().llen("control") == 2  # the says before and after
    finally:
        link.close()
        shared.close()
        single.close()


def _async_write(settings: Any) -> float:
    """The asyncio SDK's blocking connection (built before the kill is not needed: it is built by
    ``_start`` of every run) writes to the promoted primary; seconds it took."""
    async def main() -> float:
        client = settings_endpoint(settings).async_client(blocking=False, single_connection_client=True,
                                                          socket_timeout=3.0)
        started = time.monotonic()
        try:
            while True:
                try:
                    await client.rpush("followed", "async")
                    return time.monotonic() - started
                except redis.RedisError:
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    return run_async(main, timeout=30)


def test_a_demoted_primary_is_left_for_the_promoted_one(redis_sentinel):
    """``SENTINEL FAILOVER``: the old primary stays up, as a replica (the sentinels close its clients'
    connections as they demote it). Every client goes to the new primary by itself."""
    settings = settings_for(redis_sentinel.url())
    link, shared, single = DirectLink(settings), shared_client(settings), sdk_blocking_client(settings)
    try:
        for write in (lambda: link.round_trip([("SET", "before", "1")]), lambda: shared.set("b", 1),
                      lambda: single.set("c", 1)):
            write()
        old = redis_sentinel.primary
        redis_sentinel.sentinel_servers[0].ask("SENTINEL", "FAILOVER", "greenroom")
        wait_until(lambda: redis_sentinel.primary_address() != old.address and old.info().get("role") == "slave",
                   20, step=0.05, what="the graceful fail-over")
        new = redis_sentinel.primary
        seen = []
        for write in (lambda: link.round_trip([("RPUSH", "after", "link")]), lambda: shared.rpush("after", "shared"),
                      lambda: single.rpush("after", "single")):
            _, _, errors = until_ok(write)
            seen += errors
        assert sorted(new.client().lrange("after", 0, -1)) == [b"link", b"shared", b"single"]
        report("sentinel_graceful_failover", errors_seen=sorted(set(e.split(":")[0] for e in seen)))
    finally:
        link.close()
        shared.close()
        single.close()


class LaggingSentinels:
    """Plays sentinels that still name the old primary: each ``discover_master`` answers the next
    address of ``answers`` (the last one from then on)."""

    def __init__(self, *answers: tuple[str, int]) -> None:
        self.answers = list(answers)
        self.asked = 0

    def discover_master(self, service: str) -> tuple[str, int]:
        self.asked += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_a_connection_to_a_replica_answers_readonly_and_moves_to_the_primary(redis_sentinel):
    """A connection that reached a replica (a sentinel's answer was stale, the node was demoted under
    it): the write's READONLY reply drops it with a ConnectionError, and the next connect asks again
    and reaches the primary. Real nodes; only the sentinels' answers are played."""
    from frontend.redis_follow import BlockingSentinelPool, SentinelPrimaryConnection

    primary, replica = redis_sentinel.primary, redis_sentinel.replica
    sentinels = LaggingSentinels(replica.address, primary.address)
    pool = BlockingSentinelPool("greenroom", sentinels, is_master=True, connection_class=SentinelPrimaryConnection,
                                max_connections=2, timeout=5, socket_timeout=2, retry=retry_policy(0))
    conn = pool.make_connection()
    client = redis.Redis(connection_pool=pool)
    try:
        conn.connect()
        assert (conn.host, conn.port) == replica.address
        conn.send_packed_command(conn.pack_command("SET", "k", "v"))
        with pytest.raises(redis.ConnectionError, match="now a slave"):
            client.parse_response(conn, "SET")
        assert not conn.is_connected
        conn.send_packed_command(conn.pack_command("SET", "k", "v"))  # written without connect(): still asks
        assert client.parse_response(conn, "SET") and (conn.host, conn.port) == primary.address
        assert primary.client().get("k") == b"v" and sentinels.asked == 2
    finally:
        conn.disconnect()
        client.close()


# ------------------------------------------------------------------------------------------- WAIT
def test_wait_holds_a_batch_until_a_replica_confirms_it(redis_sentinel):
    """redis_wait_replicas = 1: a batch returns once the replica has it. While the replica does not
    answer, the batch is held (written once on the primary, never sent again) and returns when the
    replica is back; closing the link ends a held batch with a ConnectionError (a stop never hangs)."""
    settings = settings_for(redis_sentinel.url(), redis_wait_replicas=1, redis_wait_timeout=0.2)
    link = DirectLink(settings)
    primary, replica = redis_sentinel.primary.client(), redis_sentinel.replica
    try:
        assert link.round_trip([("RPUSH", "w", "1")]) == [1] and link.waits_repeated == 0
        replica.pause()
        try:
            held_batch = gevent.spawn(link.round_trip, [("RPUSH", "w", "2")])
            gevent.sleep(1.0)
            assert not held_batch.ready(), "the batch returned without a replica's confirmation"
            assert primary.lrange("w", 0, -1) == [b"1", b"2"]
        finally:
            replica.resume()
        assert held_batch.get(timeout=10) == [2]
        assert link.waits_repeated == 1 and link.wait_seconds >= 0.5
        assert primary.lrange("w", 0, -1) == [b"1", b"2"]  # nothing sent twice
        replica.pause()
        try:
            def third() -> Exception | None:
                try:
                    link.round_trip([("RPUSH", "w", "3")])
                except redis.ConnectionError as exc:
                    return exc
                return None

            held_batch = gevent.spawn(third)
            gevent.sleep(0.5)
            link.close()
            assert isinstance(held_batch.get(timeout=5), redis.ConnectionError)
        finally:
            replica.resume()
        assert link.round_trip([("LLEN", "w")]) == [3]  # the link connects again
    finally:
        link.close()


# ------------------------------------------------------------------------------------------- Cluster
def test_cluster_links_follow_moved_and_a_kill(redis_cluster):
    """On a cluster every client talks to the primary of the deployment's slot: after a graceful
    ``CLUSTER FAILOVER`` (the old primary answers MOVED) and after a SIGKILL of the new one, each
    write lands on the slot's current primary."""
    settings = settings_for(redis_cluster.cluster_url, key_prefix="{ha}:")
    link, shared, single = DirectLink(settings), shared_client(settings), sdk_blocking_client(settings)
    writes = {"link": lambda v: link.round_trip([("RPUSH", "{ha}:l", v)]),
              "shared": lambda v: shared.rpush("{ha}:l", v), "single": lambda v: single.rpush("{ha}:l", v)}
    try:
        for write in writes.values():
            write("0")
        slot = key_slot(b"ha")
        first = redis_cluster._node_for_slot(slot)
        (second,) = redis_cluster.replicas_of(first)
        second.client().execute_command("CLUSTER", "FAILOVER")
        wait_until(lambda: redis_cluster._node_for_slot(slot).address == second.address, 20, what="CLUSTER FAILOVER")
        seen = []
        for write in writes.values():
            seen += until_ok(lambda: write("1"))[2]
        assert second.client().lrange("{ha}:l", 0, -1).count(b"1") == 3
        assert any("MovedError" in e for e in seen), seen
        redis_cluster.kill_node(second)
        assert redis_cluster.wait_for_failover() == first.address
        took = {name: round(redis_cluster.last_failover_seconds + until_ok(lambda: write("2"))[1], 2)
                for name, write in writes.items()}
        assert first.client().lrange("{ha}:l", 0, -1).count(b"2") == 3
        report("cluster_clients_follow", failover_s=round(redis_cluster.last_failover_seconds, 2),
               **{f"{k}_s": v for k, v in took.items()})
    finally:
        link.close()
        shared.close()
        single.close()


# --------------------------------------------------------------------------- the ledger's numbers
def test_a_lagging_promoted_replica_never_reuses_ledger_numbers(redis_url, redis_client, ngircd):
    """A promoted replica may lack the last increments of a frontend's ledger counter. Simulated on
    one Redis: the counter set back by 15, every connection cut (as a fail-over does). The dispatchers'
    new connections raise the counter to what the frontend has seen before routing anything
    (``seq_floor.lua``), so the next commands get fresh numbers: they arrive at once and in order.
    (Without it the first 15 got numbers the frontend had handed out already: skipped, left in the
    ledger until the stranded scan re-queued them two recovery intervals later, out of order; and an
    acknowledgement of an older command still in flight with the same number would delete one.)"""
    fid, chan = uniq("floor-"), "#" + uniq("floor")
    observer = Observer(ngircd.host, ngircd.port, uniq("flobs"), [chan])
    try:
        with running_frontend(redis_url, frontend_id=fid, recovery_interval=30.0) as fe:
            push(redis_client, {"type": "join", "room": "fl", "spec": irc_spec(ngircd, chan, nick=uniq("flbot"))})
            wait_until(lambda: fe.registry.get("fl") is not None and fe.registry.get("fl").state == "joined", 15,
                       what="joined")
            push(redis_client, *[{"type": "say", "room": "fl", "text": f"before-{i}"} for i in range(20)])
            wait_until(lambda: len(observer.privmsgs(chan)) >= 20 and held(redis_client, fid) == 0, 15,
                       what="the first 20 lines")
            seq_key = f"control:seq:{fid}"
            counter = int(redis_client.get(seq_key))
            redis_client.set(seq_key, counter - 15)
            # a BLMOVE into the landing list replicated without the intake script that followed it
            redis_client.rpush(f"control:landing:{fid}", ujson.dumps({"type": "say", "room": "fl", "text": "landed"}))
            redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            after = [f"after-{i}" for i in range(20)]
            push(redis_client, *[{"type": "say", "room": "fl", "text": t} for t in after])
            wait_until(lambda: len(observer.privmsgs(chan)) >= 41, 8, what="the 21 lines after the cut")
            texts = [ln.text for ln in observer.privmsgs(chan)][20:]
            assert sorted(texts) == sorted(after + ["landed"]) and [t for t in texts if t != "landed"] == after
            assert int(redis_client.get(seq_key)) >= counter + 21
            wait_until(lambda: held(redis_client, fid) == 0, 5, what="the ledger emptied")
    finally:
        observer.close()


def test_a_frontend_stops_in_time_while_its_batches_wait_for_a_replica(redis_sentinel):
    """redis_wait_replicas = 1 and no replica answering: the dispatchers hold their batches (an
    event stays in the outgoing buffer), and a stop still ends within shutdown_timeout: no greenlet
    stays stuck in a WAIT."""
    from frontend.app import Frontend
    from tests.support.frontend import FAST

    settings = load_settings(env={}, overrides={"redis_url": redis_sentinel.url(), "frontend_id": uniq("held-"),
                                                **FAST, "redis_wait_replicas": 1, "redis_wait_timeout": 0.2})
    fe = Frontend(settings)
    fe.start()
    replica = redis_sentinel.replica
    replica.pause()
    try:
        # an event, as a room hands it over (the router and the intake loop hold their own batches)
        fe.outbox.event(fe.keys.messages, {"type": "pong", "room": "r", "cmd_id": "p1", "event_id": "e1", "ts": 0.0})
        wait_until(lambda: fe.outbox._link.waits_repeated >= 1, 10, what="a held batch")
        gevent.sleep(0.5)
        started = time.monotonic()
        fe.stop()
        took = time.monotonic() - started
        report("stop_with_held_batches", stop_s=round(took, 2), shutdown_timeout=settings.shutdown_timeout)
        assert took < settings.shutdown_timeout + 1.0
        # the unconfirmed batch was never counted as written: it is what the stop reports left behind
        assert fe.outbox.pending >= 1 and fe.counters["events_pushed"] == 0
        assert all(s.greenlet is None or s.greenlet.dead for s in fe.supervisor)
    finally:
        replica.resume()
