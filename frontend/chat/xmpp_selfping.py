"""A fix for slixmpp's MUC self-ping (XEP-0410) scheduler, which leaks a task per interval.

``slixmpp.plugins.xep_0410.PingTask.run`` waits for room activity with
``asyncio.wait([create_task(event.wait())], timeout=interval)`` and never cancels that task when the
interval passes. In a quiet room each interval leaves one more task pending on the Event (released only
by the next message or presence in the room), and a cancelled PingTask leaves its last one behind for
the garbage collector ("Task was destroyed but it is pending!"). A daemon that sits in thousands of
quiet rooms for months would grow by one task per room per ``ping_interval``. ``install()`` replaces
that coroutine with one that behaves the same and cancels its wait.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("frontend.chat.xmpp")


async def _run(self: Any, muc_resource: Any, orig_jid: Any) -> None:
    """Ping ``muc_resource`` after ``interval`` seconds without activity in the room, forever."""
    while True:
        try:
            try:
                # wait_for cancels the inner wait when the interval passes: nothing is left behind
                await asyncio.wait_for(self._event.wait(), timeout=self.interval)
            except asyncio.TimeoutError:
                pass
            if self._event.is_set():  # activity in the room: start the interval again
                self._event.clear()
                continue
            result = await self._plugin.send_self_ping(muc_resource, orig_jid, timeout=self.timeout)
            self._plugin._update_ping_results((muc_resource, orig_jid), result)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("MUC self-ping of %s failed", muc_resource)
            return


def install() -> None:
    """Patch slixmpp's PingTask once (idempotent)."""
    from slixmpp.plugins.xep_0410 import self_ping

    if getattr(self_ping.PingTask.run, "__module__", "") != __name__:
        self_ping.PingTask.run = _run
