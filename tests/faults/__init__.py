"""Fault-injection tests (issue 4): the delivery guarantees against real redis-server and ngircd.

Their helpers are shared with the rest of the suite and live in tests/support/: ``Observer``
(irc_client.py), ``EventLog`` and ``Drain`` (events.py), ``uniq`` (names.py), ``wait_until``
(waiting.py), ``with_port`` (ports.py), ``stop_process``/``proc_alive`` (frontend.py), ``log_tail``
(servers.py), ``report``/``count_dups`` (report.py).
"""
