"""The heartbeat: every few seconds a hash ``frontends:<id>`` that expires after three intervals.

It is the one source for ``greenroom status``, the dashboard and the take-over of a dead frontend's
in-flight ledger (recovery.py): a frontend whose key expired is dead. What it says comes from a
``snapshot()`` callable the wiring gives it; the heartbeat itself knows nothing of rooms.

Each beat also appends one sample to ``fleet:history:<id>`` for the dashboard's charts (one more
command in the beat's pipeline: ``HISTORY_SAMPLE``, which reads the list lengths in Redis): Redis time,
the commands received and applied and the events pushed so far (the snapshot's counters), and the
lengths of ``control``, ``messages``, this frontend's ledger and inbox. The list holds one hour of
beats, newest first, and expires an hour after the last one, so a dead frontend's history goes away.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import redis

from .keys import Keys
from .logs import Throttle
from .protocol import encode
from .redis_conn import REDIS_ANY, REDIS_ERRORS
from .service import Service

log = logging.getLogger(__name__)

#: how far back the history of a frontend reaches (and how long it outlives the last beat)
HISTORY_SECONDS = 3600

#: One sample appended to the history list (run with EVAL inside the beat's transaction, so no script
#: cache is needed). KEYS: history, control, messages, ledger (hash), inbox. ARGV: commands received,
#: commands applied, events pushed, the most samples to keep, expiry (ms). A key of another type
#: counts 0.
HISTORY_SAMPLE = """
local function size(key, cmd)
  local n = redis.pcall(cmd, key)
  if type(n) == 'number' then return n end
  return 0
end
local t = redis.call('TIME')
local sample = cjson.encode({
  ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
  received = tonumber(ARGV[1]), applied = tonumber(ARGV[2]), pushed = tonumber(ARGV[3]),
  control = size(KEYS[2], 'LLEN'), messages = size(KEYS[3], 'LLEN'),
  ledger = size(KEYS[4], 'HLEN'), inbox = size(KEYS[5], 'LLEN')})
if redis.call('TYPE', KEYS[1]).ok ~= 'list' then redis.call('DEL', KEYS[1]) end
redis.call('LPUSH', KEYS[1], sample)
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[4]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class Heartbeat(Service):
    """Writes the heartbeat hash every ``interval`` seconds."""

    name = "heartbeat"

    def __init__(self, client: redis.Redis, key: str, interval: float,
                 snapshot: Callable[[], dict[str, Any]], *, after_beat: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self._client = client
        self.key = key
        self.interval = interval
        self._snapshot = snapshot
        self._after_beat = after_beat
        self._throttle = Throttle(log)

    def beat(self) -> None:
        snapshot = self._snapshot()
        data = {k: v if isinstance(v, str) else encode(v) if isinstance(v, dict) else str(v)
                for k, v in snapshot.items() if v is not None}
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.hset(self.key, mapping=data)
        pipe.pexpire(self.key, int(self.interval * 3000))
        sampled = self._sample(pipe, snapshot)
        results = pipe.execute(raise_on_error=False)
        for result in results[:3]:
            if isinstance(result, Exception):
                raise result
        if sampled and isinstance(results[3], Exception):  # the charts miss a point; the beat counts
            self._throttle.warning("history", "history sample not written: %s", results[3])

    def _sample(self, pipe: Any, snapshot: dict[str, Any]) -> bool:
        """Queue the history sample of this beat (see ``HISTORY_SAMPLE``); False when there is none."""
        fid = snapshot.get("id")
        suffix = Keys().heartbeat(fid) if isinstance(fid, str) else None
        if not suffix or not self.key.endswith(suffix):
            return False  # not a frontend's heartbeat key: no history
        keys = Keys(self.key[:-len(suffix)])
        commands = snapshot.get("commands") if isinstance(snapshot.get("commands"), dict) else {}
        pipe.eval(HISTORY_SAMPLE, 5, keys.history(fid), keys.control, keys.messages, keys.ledger(fid),
                  keys.inbox(fid), _count(commands.get("commands_received")),
                  _count(commands.get("commands_applied")), _count(snapshot.get("events_pushed")),
                  math.ceil(HISTORY_SECONDS / max(self.interval, 0.1)) + 1, HISTORY_SECONDS * 1000)
        return True

    def step(self) -> None:
        try:
            self.beat()
        except REDIS_ANY as exc:
            self._throttle.warning("beat", "heartbeat not written: %s", exc)
        self._after_beat()
        self.stopping.wait(self.interval)

    def remove(self) -> None:
        """Forget the heartbeat (a graceful stop: we are not dead, we are gone)."""
        try:
            self._client.delete(self.key)
        except REDIS_ERRORS:
            pass
