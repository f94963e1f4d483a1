"""Flood limits learned from chat servers, shared by every connection to a server, every frontend and
every restart (README, "Flood control that learns").

A server that disconnects a connection for flooding (``Excess Flood``, ``SendQ``/``RecvQ exceeded``, a
kill that says so: ``chat/irc_flood.py`` reads the texts) has told us its limits are below what that
connection sent. ``tighten`` turns that into a slower token bucket for the server, ``FloodMemory``
keeps it and hands it to every connection to that server: the live ones at once, new ones when they
connect. Nothing here sits on the hot path: a connection reads its server's entry from the cache
when it connects (and when it changes), and a write happens only on a flood disconnect or a probe.

Redis: the hash ``servers:flood`` (``Keys.servers_flood``), field = the server's host lower-cased, value
= ``{"rate": lines/s, "burst": lines, "kills": n, "at": unix time, "ceiling": lines/s or null,
"why": the server's words}``. ``HDEL servers:flood <host>`` (or ``DEL servers:flood``) forgets it.

The rule (``tighten``), for the bucket a connection had when it was disconnected for flooding:
- no flood control at all (``"flood": false``, or none configured): the server let ``confirmed``
  lines through at once; the new burst is half of that (at least 1), the rate ``start_rate``
  (``flood_learn_rate``, 1 line/s: what InspIRCd, ircd-hybrid and most networks allow a client);
- a bucket that was pacing (more lines written than its burst, for longer than the burst takes to
  refill): its rate was too high, 70 % of it
  (never below ``min_rate``, so a connection always makes progress), and probes stay below 90 % of
  the rate that was killed (``ceiling``);
- a bucket killed within its burst: the burst was too large, half of what the server confirmed (at
  least 1, and at least one less than before); the rate stays (a burst of 1 is never the fault: then
  the rate goes down instead).
A learned entry only ever lowers a connection's own bucket (the spec's ``flood`` or the configured
default): ``effective`` takes the lower rate and burst of the two.

Probing back up (``probe``): after ``flood_probe_after`` seconds (1 h) without a flood disconnect,
while this frontend has connections to the server, its learned rate goes up by 10 % (never above
``ceiling``); a kill takes it down again (additive-increase, multiplicative-decrease, as TCP does).
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Optional, Protocol

import gevent
import gevent.event
import redis
import ujson

from .keys import Keys

log = logging.getLogger(__name__)

#: the first load of the hash waits at most this long (a connect must not hang on Redis)
LOAD_TIMEOUT = 2.0
#: a cache older than this is reloaded in the background when a connection asks for it
REFRESH_AFTER = 60.0
#: a load that failed is tried again after this long
RETRY_AFTER = 10.0
#: the multiplicative decrease of a rate that was killed while pacing, and the probes' step
DECREASE = 0.7
PROBE_STEP = 1.1
#: probes stay below this share of a rate that was killed while pacing
CEILING_SHARE = 0.9
#: the most bytes of the server's words kept with an entry
MAX_WHY = 200
#: entries with more than this many servers are not kept (a hostile registry cannot fill memory)
MAX_SERVERS = 10_000


@dataclass(frozen=True)
class Learned:
    """A server's learned flood limits: ``burst`` lines at once, then ``rate`` lines per second."""

    rate: float
    burst: int
    kills: int = 0
    at: float = 0.0
    #: probes stay below it (0.9 x a rate that was killed while pacing); None: no such kill yet
    ceiling: Optional[float] = None
    why: str = ""

    def to_json(self) -> bytes:
        return ujson.dumps(asdict(self)).encode()

    @staticmethod
    def from_json(raw: Any) -> Optional["Learned"]:
        """An entry read from Redis, validated (anyone with write access may have left anything)."""
        try:
            obj = ujson.loads(raw)
            rate, burst = float(obj["rate"]), int(obj["burst"])
            ceiling = obj.get("ceiling")
            ceiling = None if ceiling is None else float(ceiling)
            kills, at = int(obj.get("kills") or 0), float(obj.get("at") or 0.0)
            why = str(obj.get("why") or "")[:MAX_WHY]
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            return None
        if not (0.0 < rate < 1e6 and 1 <= burst <= 100_000) or (ceiling is not None and not ceiling > 0):
            return None
        return Learned(rate=rate, burst=burst, kills=kills, at=at, ceiling=ceiling, why=why)


def tighten(current: Optional[tuple[float, float]], *, confirmed: int, paced: bool, start_rate: float,
            min_rate: float, previous: Optional[Learned], why: str, now: float) -> Learned:
    """The limits to use after a flood disconnect of a connection whose bucket was ``current``
    (``(rate, burst)``, None: no flood control); ``confirmed`` lines of it had reached the server;
    ``paced``: it had been sending at its rate (more lines than its burst, over longer than the
    burst takes to refill), else the burst was too much for the server."""
    kills = (previous.kills if previous is not None else 0) + 1
    ceiling = previous.ceiling if previous is not None else None
    why = why[:MAX_WHY]
    if current is None:
        rate, burst = start_rate, max(1, confirmed // 2)
    else:
        rate, burst = current[0], max(1, int(current[1]))
        if paced or burst == 1:  # (a burst of one cannot be the fault: then the rate is)
            ceiling = rate * CEILING_SHARE if ceiling is None else min(ceiling, rate * CEILING_SHARE)
            rate = rate * DECREASE
        else:
            burst = max(1, min(burst - 1, confirmed // 2))
    rate = max(min_rate, rate)
    if previous is not None:  # another connection may have learned less meanwhile: keep the lower
        rate, burst = min(rate, previous.rate), min(burst, previous.burst)
    return Learned(rate=rate, burst=burst, kills=kills, at=now, ceiling=ceiling, why=why)


def probe(learned: Learned, *, now: float) -> Optional[Learned]:
    """One step back up after a healthy period; None when the ceiling is reached."""
    rate = learned.rate * PROBE_STEP
    if learned.ceiling is not None:
        rate = min(rate, learned.ceiling)
    if rate <= learned.rate * 1.001:
        return None
    return replace(learned, rate=rate, at=now)


def effective(own: Optional[tuple[float, float]], learned: Optional[Learned]) -> Optional[tuple[float, float]]:
    """The bucket a connection uses: its own (spec or configured; None: none) lowered by what was
    learned of its server (a learned entry also applies where the connection has none)."""
    if learned is None:
        return own
    if own is None:
        return learned.rate, float(learned.burst)
    return min(own[0], learned.rate), float(min(own[1], learned.burst))


class FloodListener(Protocol):
    """A live connection to a server: told when the server's learned limits change."""

    def flood_changed(self, learned: Learned) -> None: ...


class FloodMemory:
    """The learned limits of every server, cached here, kept in Redis (``client``; None: this process
    only, for pools built without Redis).

    ``probe_after``: seconds without a flood disconnect after which the rate of a server this process
    has connections to goes up by one probe step (0: never). ``counters`` get ``flood_kills:<host>``
    and the gauge ``flood_rate:<host>`` (lines/s) for the metrics.
    """

    def __init__(self, client: Optional[redis.Redis], keys: Keys, *, counters: Any = None,
                 probe_after: Callable[[], float] = lambda: 3600.0) -> None:
        self._client = client
        self._key = keys.servers_flood
        self._counters = counters
        self._probe_after = probe_after
        self._cache: dict[str, Learned] = {}
        self._loaded_at = 0.0   # monotonic time of the last complete load (0.0: never)
        self._failed_at = 0.0
        self._loading: Optional[gevent.Greenlet] = None
        #: set while no first load is under way (the connections that ask meanwhile wait for it)
        self._first_load = gevent.event.Event()
        self._first_load.set()
        self._listeners: dict[str, weakref.WeakSet] = {}
        self._probes: dict[str, gevent.Greenlet] = {}

    # ------------------------------------------------------------------------------ connections
    def get(self, server: str, *, load: bool = True) -> Optional[Learned]:
        """What was learned of ``server`` (None: nothing). With ``load``, the first call loads the hash
        (at most ``LOAD_TIMEOUT`` s) and later ones refresh the cache in the background when it is
        older than ``REFRESH_AFTER``; without, the cache answers alone."""
        host = server.lower()
        if self._client is not None and load:
            now = time.monotonic()
            if not self._loaded_at:
                if now - self._failed_at >= RETRY_AFTER:
                    self._load_now()
            elif now - self._loaded_at >= REFRESH_AFTER and (self._loading is None or self._loading.dead):
                self._loading = gevent.spawn(self._load)
        return self._cache.get(host)

    def watch(self, server: str, listener: FloodListener) -> None:
        """``listener`` is told of every change of ``server``'s limits from now on (weakly held)."""
        host = server.lower()
        listeners = self._listeners.get(host)
        if listeners is None:
            listeners = self._listeners[host] = weakref.WeakSet()
        listeners.add(listener)
        if host in self._cache:
            self._schedule_probe(host)

    def learned(self, server: str, learned: Learned) -> None:
        """A flood disconnect of a connection to ``server`` taught ``learned`` (see ``tighten``):
        cached, told to every live connection to it, written to Redis in the background."""
        host = server.lower()
        self._set(host, learned)
        if self._counters is not None:
            self._counters["flood_kills:" + host] += 1
        if self._client is not None:
            gevent.spawn(self._write, host, learned, None)
        self._schedule_probe(host, restart=True)

    def snapshot(self) -> dict[str, Learned]:
        return dict(self._cache)

    # ------------------------------------------------------------------------------------ inside
    def _set(self, host: str, learned: Learned) -> None:
        if host not in self._cache and len(self._cache) >= MAX_SERVERS:
            return
        old = self._cache.get(host)
        self._cache[host] = learned
        if self._counters is not None:
            self._counters["flood_rate:" + host] = learned.rate
        if old != learned:
            for listener in list(self._listeners.get(host, ())):
                try:
                    listener.flood_changed(learned)
                except Exception:  # one connection must not keep the others from hearing it
                    log.exception("flood limits of %s: a connection could not apply them", host)

    def _load_now(self) -> None:
        """The first load, once however many connections ask at once (the others wait for it)."""
        if not self._first_load.is_set():
            self._first_load.wait(LOAD_TIMEOUT)
            return
        self._first_load.clear()
        try:
            with gevent.Timeout(LOAD_TIMEOUT):
                self._load()
        except gevent.Timeout:
            self._failed_at = time.monotonic()
            log.warning("learned flood limits: Redis did not answer within %gs; connecting without them "
                        "(tried again in %gs)", LOAD_TIMEOUT, RETRY_AFTER)
        finally:
            self._first_load.set()

    def _load(self) -> None:
        assert self._client is not None
        try:
            entries = self._client.hgetall(self._key)
        except redis.RedisError as exc:
            self._failed_at = time.monotonic()
            log.warning("learned flood limits: could not read %s: %s", self._key, exc)
            return
        self._loaded_at = time.monotonic()
        for field, raw in list(entries.items())[:MAX_SERVERS]:
            host = field.decode("utf-8", "replace").lower() if isinstance(field, bytes) else str(field).lower()
            learned = Learned.from_json(raw)
            if learned is None:
                log.warning("learned flood limits: the entry of %r in %s is not valid; ignored", host[:100],
                            self._key)
                continue
            old = self._cache.get(host)
            if old is None or old.at < learned.at:  # what this process learned last stays when newer
                self._set(host, learned)

    def _write(self, host: str, learned: Learned, expect_at: Optional[float]) -> bool:
        """HSET, merged with what another frontend wrote meanwhile (WATCH/MULTI): a tightening keeps
        the lower limits; a probe (``expect_at``) is written only over the entry it started from."""
        assert self._client is not None
        key = self._key

        def merge(pipe: Any) -> None:
            raw = pipe.hget(key, host)
            stored = Learned.from_json(raw) if raw is not None else None
            value = learned
            if expect_at is not None:
                if stored is not None and stored.at != expect_at:
                    raise _Stale()
            elif stored is not None:
                value = replace(learned, rate=min(learned.rate, stored.rate), burst=min(learned.burst, stored.burst),
                                kills=max(learned.kills, stored.kills))
            pipe.multi()
            pipe.hset(key, host, value.to_json())

        try:
            self._client.transaction(merge, key)
        except _Stale:
            return False
        except redis.RedisError as exc:
            log.warning("learned flood limits of %s: could not write them to Redis (%s); this process "
                        "keeps them", host, exc)
            return False
        return True

    def _schedule_probe(self, host: str, *, restart: bool = False) -> None:
        """The next probe of ``host`` in ``flood_probe_after`` s; ``restart``: a kill, the healthy
        period starts again (otherwise a probe already pending stays)."""
        pending = self._probes.get(host)
        if pending is not None and not pending.dead:
            if not restart:
                return
            if pending is not gevent.getcurrent():
                pending.kill(block=False)
        after = self._probe_after()
        if after > 0:
            self._probes[host] = gevent.spawn_later(after, self._probe, host)

    def _probe(self, host: str) -> None:
        learned = self._cache.get(host)
        if learned is None or not self._listeners.get(host):
            return  # no connection of ours to the server: no evidence, no probe
        raised = probe(learned, now=time.time())
        if raised is None:
            return
        if self._client is not None and not self._write(host, raised, learned.at):
            self._loading = gevent.spawn(self._load)  # another frontend changed it: take theirs
            self._schedule_probe(host, restart=True)
            return
        log.info("learned flood limits of %s: no flood disconnect for %gs, probing up: %.2f -> %.2f lines/s",
                 host, self._probe_after(), learned.rate, raised.rate)
        self._set(host, raised)
        self._schedule_probe(host, restart=True)


class _Stale(Exception):
    """A probe's entry changed in Redis meanwhile."""
