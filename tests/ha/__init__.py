"""Redis that survives a machine (issue 17): greenroom on Sentinel and on Redis Cluster, fail-overs by
SIGKILL, ``redis_wait_replicas``. Real redis-server, redis-sentinel and ngircd processes on loopback
(the fixtures of ``tests/conftest.py``)."""
