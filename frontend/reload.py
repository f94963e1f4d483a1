"""SIGHUP: re-read the configuration and apply it to the running frontend without leaving any room.

Settings is a frozen dataclass shared by reference. A reload builds a new, validated Settings and
swaps the reference on every object that holds one (the frontend, the Outbox, the session pool and
each live chat session); everything that reads ``<holder>.settings.<name>`` when it acts (limits,
line ages, drains, batches, reconnect delays, ready share) sees the new value from then on.
Values copied at start-up are refreshed explicitly: the log level and format, the flood buckets of
connections that use the configured defaults, the per-room line limit, the metrics address.
Identity (``redis_url``, ``key_prefix``, ``frontend_id``) never changes in a running process.
An invalid file is refused with one log line and the old Settings stay in place.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from .config import Settings, load_settings
from .errors import ConfigError
from .logs import setup_logging

if TYPE_CHECKING:
    from .app import Frontend

log = logging.getLogger(__name__)

#: what a running process keeps whatever the file says
FIXED = ("redis_url", "key_prefix", "frontend_id")
#: read once at start: a new value waits for a restart
AT_RESTART = ("heartbeat_interval", "recovery_interval", "control_block_timeout", "web_addr")


def reload_settings(fe: "Frontend") -> Settings | None:
    """Fresh Settings for ``fe``, or None (logged once) when the configuration is invalid."""
    try:
        new = fe.config_loader() if fe.config_loader is not None else load_settings()
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        return None
    old = fe.settings
    kept = {name: getattr(old, name) for name in FIXED if getattr(new, name) != getattr(old, name)}
    if kept:
        log.warning("reload: %s cannot change in a running process; restart to apply",
                    ", ".join(sorted(kept)))
        new = dataclasses.replace(new, **kept)
    return new


def changed(old: Settings, new: Settings) -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if getattr(old, f.name) != getattr(new, f.name)]


def apply_settings(fe: "Frontend", new: Settings) -> None:
    """Make every running object of ``fe`` use ``new``."""
    old = fe.settings
    names = changed(old, new)
    if new.log_format != old.log_format:
        setup_logging(new.log_level, new.log_format)
    elif new.log_level != old.log_level:
        logging.getLogger().setLevel(new.log_level.upper())
        logging.getLogger("slixmpp").setLevel(logging.WARNING)  # it logs SASL payloads at DEBUG
    fe.settings = new
    fe.outbox._settings = new
    fe.sessions.apply_settings(new)
    fe.metrics.rebind(new.metrics_addr)
    later = [name for name in names if name in AT_RESTART]
    if later:
        log.warning("reload: %s take effect at the next restart", ", ".join(later))
    shown = [name for name in names if name != "web_token"]
    log.info("configuration reloaded (%s); %d rooms stay joined",
             ", ".join(shown) if shown else "no changes", len(fe.rooms))
