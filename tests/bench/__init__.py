"""The greenroom benchmark harness (issue 8): ``python -m tests.bench`` / ``make bench``.

Starts its own redis-server and InspIRCd (prosody for the XMPP scenario) on loopback, runs the frontend
under test as a separate process and drives it only through Redis and IRC (or XMPP), with load
generators and listeners in their own processes (``tests/bench/workers.py``). Never collected by pytest
(see ``conftest.py``).
"""
