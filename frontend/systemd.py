"""systemd's notify protocol (sd_notify) without a dependency: READY=1, WATCHDOG=1, STOPPING=1.

Messages are datagrams on the unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the
abstract namespace). Without that variable every call is a no-op, so the daemon runs the same under
systemd, in a container or in a terminal. The watchdog greenlet pings from the gevent hub every half
``$WATCHDOG_USEC``: a hub blocked by a runaway greenlet stops the pings and systemd restarts us.
"""

from __future__ import annotations

import logging
import os
import socket

from .service import Service

log = logging.getLogger(__name__)


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send one notify message (e.g. ``"READY=1"``); False when there is no socket or it failed."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify %s to %s failed: %s", state.split("=", 1)[0], path, exc)
        return False


def watchdog_interval(env: dict[str, str] | None = None) -> float:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or 0 when not asked for."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return 0.0
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return 0.0


class Watchdog(Service):
    """Sends WATCHDOG=1 while the hub keeps running greenlets (only when systemd asks for it)."""

    name = "systemd-watchdog"

    def __init__(self) -> None:
        super().__init__()
        self.interval = watchdog_interval()

    def start(self) -> None:
        if self.interval and not self.running:
            log.info("systemd watchdog: pinging every %.1fs", self.interval)
            super().start()

    @property
    def wanted(self) -> bool:
        return bool(self.interval)

    def step(self) -> None:
        notify("WATCHDOG=1")
        self.stopping.wait(self.interval)
