"""greenroom on a Redis Cluster (issue 17): 3 primaries with a replica each, ``redis+cluster://`` and a
``key_prefix`` with a hash tag, so every key of the deployment lives in one slot and every script runs
there unchanged.

- the core round trip (join, a user's line as a ``message`` event, a backend's ``say`` answering it,
  part, a restart that rejoins from the registry), with a ``backend_sdk`` bot, the ops CLI and the
  dashboard on the same URL; every key the deployment wrote is in the one slot;
- a node fail-over under traffic: the primary of the deployment's slot is SIGKILLed, its replica
  promoted, the frontend and the backend process carry on (``tests/ha/traffic.py``);
- a cluster URL with a prefix without a hash tag is refused at start with a clear error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from redis.cluster import key_slot

from backend_sdk import Backend, Message
from frontend.config import load_settings
from frontend.errors import ConfigError
from frontend.web.dashboard import create_app
from tests.ha.traffic import run_failover
from tests.support.frontend import running_frontend
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.servers import log_tail
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TAG = "grc"
PREFIX = "{" + TAG + "}:"


def test_the_core_round_trip_on_a_cluster(redis_cluster, ngircd):
    url = redis_cluster.cluster_url
    slot = key_slot(TAG.encode())
    owner = redis_cluster._node_for_slot(slot).client()
    chan, nick, fid = "#" + uniq("cl"), uniq("clbot"), uniq("cl-fe-")
    watcher = Observer(ngircd.host, ngircd.port, uniq("clw"), [chan])
    settings = load_settings(env={}, overrides={"redis_url": url, "key_prefix": PREFIX})
    bot = Backend(url, key_prefix=PREFIX, consumer="cl-bot", block_timeout=0.5)

    @bot.command("echo")
    def echo(event: Message) -> None:
        """Repeat the text."""
        event.reply(event.arg_text)

    backend = threading.Thread(target=bot.run, daemon=True)
    try:
        with running_frontend(url, frontend_id=fid, key_prefix=PREFIX) as fe:
            # the ops CLI pushes the join; the frontend joins; the dashboard and status see it
            done = _cli(url, "join", "c1", "--irc", f"{ngircd.host}:{ngircd.port}", "--channel", chan,
                        "--nick", nick)
            assert done.returncode == 0, done.stderr
            wait_until(lambda: fe.registry.get("c1") is not None and fe.registry.get("c1").state == "joined", 20,
                       what="c1 joined")
            watcher.wait(lambda ln: ln.cmd == "JOIN" and ln.nick.lower() == nick.lower(), 10, what="the bot's JOIN")
            backend.start()
            wait_until(lambda: owner.exists(PREFIX + "messages:consumer:cl-bot"), 10, what="the backend")
            watcher.privmsg(chan, "!echo hello cluster")
            watcher.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "hello cluster", 15, what="the echo")
            status = _cli(url, "status", "--json")
            assert status.returncode == 0, status.stderr
            assert fid in status.stdout
            web = create_app(settings).test_client()
            overview = web.get("/api/overview", headers={"Host": "127.0.0.1:9479"})
            assert overview.status_code == 200 and fid in overview.get_data(as_text=True)
        # a restart rejoins from the registry
        with running_frontend(url, frontend_id=fid, key_prefix=PREFIX) as fe:
            wait_until(lambda: fe.registry.get("c1") is not None and fe.registry.get("c1").state == "joined", 20,
                       what="c1 rejoined")
            start = len(watcher.lines)
            bot.say("c1", "after the restart")
            watcher.wait(lambda ln: ln.cmd == "PRIVMSG" and ln.text == "after the restart", 15, start=start,
                         what="a say after the restart")
            assert _cli(url, "part", "c1").returncode == 0
            wait_until(lambda: fe.registry.get("c1") is None, 15, what="c1 parted")
            assert not owner.hexists(PREFIX + "rooms", "c1")
        keys = [k for node in redis_cluster.primary_nodes() for k in node.client().keys(PREFIX + "*")]
        assert keys and {key_slot(k) for k in keys} == {slot}
        assert sorted(owner.keys(PREFIX + "*")) == sorted(keys)  # all on the slot's node
    finally:
        bot.stop()
        if backend.is_alive():
            backend.join(10)
        watcher.close()


def test_a_cluster_prefix_without_a_hash_tag_is_refused(redis_cluster):
    with pytest.raises(ConfigError, match="hash tag"):
        load_settings(env={}, overrides={"redis_url": redis_cluster.cluster_url, "key_prefix": "prod:"})
    done = _cli(redis_cluster.cluster_url, "status", prefix="prod:")
    assert done.returncode != 0 and "hash tag" in done.stderr


@pytest.mark.slow
def test_a_node_failover_under_traffic(redis_cluster, ngircd, tmp_path):
    """The primary of the deployment's slot is SIGKILLed while says and lines flow; its replica takes
    the slot over; with redis_wait_replicas = 1 nothing confirmed is lost."""
    victim = redis_cluster._node_for_slot(key_slot(TAG.encode()))
    got = run_failover("cluster_failover_wait1", url=redis_cluster.cluster_url, prefix=PREFIX, ngircd=ngircd,
                       workdir=tmp_path, wait_replicas=1, says=3000, lines=3000,
                       kill=lambda: redis_cluster.kill_node(victim),
                       promoted=lambda: (redis_cluster.wait_for_failover(), redis_cluster.last_failover_seconds)[1],
                       heal=redis_cluster.heal)
    log = log_tail(got["frontend_log"], 30)
    assert got["frontend_alive"] and got["backend_alive"], log
    assert got["says_lost"] == 0 and got["lines_lost"] == 0, got
    assert got["outbound_resumed_s"] is not None and got["outbound_resumed_s"] < 15, log
    assert got["inbound_resumed_s"] is not None and got["inbound_resumed_s"] < 15, log


def _cli(url: str, *args: str, prefix: str = PREFIX) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "frontend.cli", *args, "--redis-url", url, "--key-prefix", prefix],
                          capture_output=True, text=True, timeout=30, env=dict(os.environ))
