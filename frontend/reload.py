"""SIGHUP: re-read the configuration; the wiring applies it to every part without leaving any room.

``reload_settings`` builds a new, validated Settings (an invalid file is refused with one log line and
the old Settings stay); identity (``redis_url``, ``key_prefix``, ``frontend_id``) never changes in a
running process. Each part that reloads has ``apply_settings(new)``; ``Frontend.reload`` calls them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from .config import Settings, load_settings
from .errors import ConfigError
from .logs import setup_logging

log = logging.getLogger(__name__)

#: what a running process keeps whatever the file says
FIXED = ("redis_url", "key_prefix", "frontend_id", "redis_sentinel_password")
#: read once at start: a new value waits for a restart
AT_RESTART = ("heartbeat_interval", "recovery_interval", "control_block_timeout", "web_addr",
              "inflight_max", "inflight_max_bytes", "redis_wait_replicas", "redis_wait_timeout")


def reload_settings(loader: Callable[[], Settings] | None, old: Settings) -> Settings | None:
    """Fresh Settings, or None (logged once) when the configuration is invalid."""
    try:
        new = loader() if loader is not None else load_settings()
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        return None
    kept = {name: getattr(old, name) for name in FIXED if getattr(new, name) != getattr(old, name)}
    if kept:
        log.warning("reload: %s cannot change in a running process; restart to apply",
                    ", ".join(sorted(kept)))
        new = dataclasses.replace(new, **kept)
    return new


def changed(old: Settings, new: Settings) -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if getattr(old, f.name) != getattr(new, f.name)]


def apply_logging(old: Settings, new: Settings) -> None:
    if new.log_format != old.log_format:
        setup_logging(new.log_level, new.log_format)
    elif new.log_level != old.log_level:
        logging.getLogger().setLevel(new.log_level.upper())
        logging.getLogger("slixmpp").setLevel(logging.WARNING)  # it logs SASL payloads at DEBUG


def report(old: Settings, new: Settings, rooms: int) -> None:
    names = changed(old, new)
    later = [name for name in names if name in AT_RESTART]
    if later:
        log.warning("reload: %s take effect at the next restart", ", ".join(later))
    shown = [name for name in names if name != "web_token" and "secret" not in name]
    log.info("configuration reloaded (%s); %d rooms stay joined",
             ", ".join(shown) if shown else "no changes", rooms)
