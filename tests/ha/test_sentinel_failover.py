"""Sentinel fail-over under traffic (issue 17): 5,000 ``say`` commands and 5,000 inbound lines flowing
through a ``greenroom run`` process and a ``backend_sdk`` process on ``redis+sentinel://``; the primary
is SIGKILLed a third of the way through, the replica promoted, the killed node restarted as a replica.
Both processes carry on by themselves; what was lost and duplicated is counted, with
``redis_wait_replicas`` 0 and 1 (``tests/ha/traffic.py`` has the scenario, the figures are printed as
``[faults] sentinel_failover_wait<N>: ...``).

Replication on loopback lags by well under a millisecond, so a plain kill loses next to nothing
whatever the setting. To measure what asynchronous replication costs, the replica lags on purpose:
just before the kill it is switched (REPLICAOF, a partial resync) to replicate through a TCP proxy that
then holds everything for ``LAG`` seconds; the primary is killed and the held bytes dropped, so what
was written in that time is on the dead primary only, as with a replica behind a slow link.
"""

from __future__ import annotations

import gevent
import pytest

from tests.ha.traffic import run_failover
from tests.support.names import uniq
from tests.support.servers import log_tail
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

LAG = 0.5


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_sentinel_failover_under_traffic(redis_sentinel, ngircd, tmp_path, wait_replicas):
    got = run_failover(f"sentinel_failover_wait{wait_replicas}", url=redis_sentinel.url(),
                       prefix=uniq("ha") + ":", ngircd=ngircd, workdir=tmp_path, wait_replicas=wait_replicas,
                       kill=lambda: _kill_behind_a_lagging_replica(redis_sentinel),
                       promoted=lambda: (redis_sentinel.wait_for_promotion(), redis_sentinel.last_failover_seconds)[1],
                       heal=redis_sentinel.heal)
    log = log_tail(got["frontend_log"], 30)
    assert got["frontend_alive"] and got["backend_alive"], log
    assert got["failover_s"] < 15
    # a say the producer had on a replica always reaches its channel, whatever the frontend's setting
    assert got["says_lost"] == 0, f"{got['says_lost']} confirmed says lost, e.g. {got['lost_sample']}\n{log}"
    assert got["outbound_resumed_s"] is not None and got["outbound_resumed_s"] < 15, log
    assert got["inbound_resumed_s"] is not None and got["inbound_resumed_s"] < 15, log
    if wait_replicas:
        # every event the frontend read was confirmed on a replica before it forgot it
        assert got["lines_lost"] == 0, f"{got['lines_lost']} inbound lines lost, e.g. {got['lines_lost_sample']}"


def _kill_behind_a_lagging_replica(ha) -> None:
    primary, replica = ha.primary, ha.replica
    proxy = TcpProxy(*primary.address).start()
    try:
        replica.client().execute_command("REPLICAOF", proxy.host, proxy.port)
        wait_until(lambda: replica.info().get("master_port") == proxy.port
                   and replica.info().get("master_link_status") == "up", 5, step=0.01, what="replication via the proxy")
        proxy.blackhole()
        gevent.sleep(LAG)
        ha.kill_primary()
    finally:
        proxy.reset()
        proxy.stop()
