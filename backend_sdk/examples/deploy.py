"""A realistic bot: ``!deploy <service> <env>`` runs a slow, sometimes flaky deployment.

    python -m backend_sdk.examples.deploy --redis-url redis://127.0.0.1:6379/0 --fail-rate 0.3

* The handler takes seconds: other rooms are served meanwhile (the pool runs 10 at once), while the
  room's next command waits its turn (events of one room are handled in order).
* A transient failure raises; the SDK retries the handler with exponential backoff (``retries=3``: up
  to 4 attempts) and dead-letters the event to ``messages:dead`` with the traceback after the last.
* Deploying the same version twice is harmless, so retries and redeliveries are fine; the side
  effects that must not repeat (the announcement, the audit log entry) are guarded with ``bot.once``.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from backend_sdk import Backend, Message
from backend_sdk.examples import arg_parser, backend_options

log = logging.getLogger(__name__)

SERVICES = ("web", "api", "worker")
ENVIRONMENTS = ("staging", "prod")


class TransientError(Exception):
    """The deployment tool hiccupped; trying again may work."""


def build(redis_url: str, *, fail_rate: float = 0.2, seconds: float = 3.0, **options: Any) -> Backend:
    """The deploy bot, not yet running."""
    bot = Backend(redis_url, **options)

    def rollout(service: str, env: str) -> str:
        time.sleep(seconds * random.uniform(0.5, 1.5))  # a slow external call (cooperative under gevent)
        if random.random() < fail_rate:
            raise TransientError(f"registry timeout while pulling {service}")
        return f"{service}-{random.randint(100, 999)}"

    @bot.command("deploy", retries=3)
    def deploy(event: Message) -> None:
        """Deploy a service: !deploy <service> <env>"""
        if len(event.args) != 2 or event.args[0] not in SERVICES or event.args[1] not in ENVIRONMENTS:
            event.reply(f"usage: !deploy <{'|'.join(SERVICES)}> <{'|'.join(ENVIRONMENTS)}>")
            return
        service, env = event.args
        if env == "prod" and event.private:
            event.reply("prod deploys are announced in a channel, not in private")
            return
        if bot.once(f"announce:{event.event_id}"):  # not again on a retry or a redelivery
            event.reply(f"{event.sender}: deploying {service} to {env}...")
        version = rollout(service, env)  # raises TransientError now and then: retried by the SDK
        if bot.once(f"audit:{event.event_id}"):
            log.info("AUDIT %s deployed %s %s to %s", event.sender, service, version, env)
        event.reply(f"{event.sender}: {service} {version} is live in {env}")

    @bot.command("services")
    def services(event: Message) -> None:
        """List what can be deployed."""
        event.reply(", ".join(SERVICES) + " -> " + ", ".join(ENVIRONMENTS))

    return bot


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser("greenroom deploy bot (example)")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="simulated transient failures")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long a rollout takes")
    args = parser.parse_args(argv)
    build(args.redis_url, fail_rate=args.fail_rate, seconds=args.seconds, **backend_options(args)).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
