"""A ``backend_sdk`` consumer for the fail-over tests: ``python -m tests.ha.backend_proc URL PREFIX OUT``.

It consumes ``<PREFIX>messages`` through whatever ``URL`` names (Sentinel, Cluster) and appends one
line ``<unix time> <text>`` to the file ``OUT`` for every ``message`` event it handles, flushed at
once: what it handled survives whatever happens to Redis, so the test counts losses and duplicates
against it.
"""

from __future__ import annotations

import sys
import threading
import time

from backend_sdk import Backend, Message


def main(url: str, prefix: str, out_path: str) -> None:
    bot = Backend(url, key_prefix=prefix, consumer="ha-recorder", concurrency=20, block_timeout=0.5,
                  heartbeat_ttl=6.0, recovery_interval=2.0)
    lock = threading.Lock()
    out = open(out_path, "a", encoding="utf-8", buffering=1)

    @bot.on("message")
    def record(event: Message) -> None:
        with lock:
            out.write(f"{time.time():.4f} {event.text}\n")

    try:
        bot.run()
    finally:
        out.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
