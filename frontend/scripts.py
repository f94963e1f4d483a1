"""Every Redis script greenroom runs, loaded once from ``frontend/lua/*.lua`` (as dramatiq loads its own).

The daemon and ``backend_sdk`` both take their scripts from here, so a script exists once. A script is
sent either through redis-py (``register(client)``: EVALSHA with a fallback to EVAL after a Redis
restart) or inside a batch of a ``DirectLink`` (``command(keys, args)``: EVALSHA, and the link loads
the script again when Redis answers NOSCRIPT).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import redis


@dataclass(frozen=True)
class Script:
    """One Lua script: its name (the file name without ``.lua``), text and SHA1."""

    name: str
    text: str
    sha: str

    def command(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> tuple[Any, ...]:
        """The EVALSHA command for a batch (``DirectLink.round_trip`` reloads on NOSCRIPT)."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def eval_command(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> tuple[Any, ...]:
        """The same as EVAL, with the text: for a batch that must not depend on the script cache."""
        return ("EVAL", self.text, len(keys), *keys, *args)

    def register(self, client: Any) -> Any:
        """A redis-py ``Script`` bound to ``client`` (sync or asyncio): ``script(keys=..., args=...)``."""
        return client.register_script(self.text)


_BY_SHA: dict[str, Script] = {}


def load_source(name: str) -> str:
    """The text of ``frontend/lua/<name>.lua`` as it is (no libraries put in front)."""
    return resources.files("frontend.lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def load(name: str) -> Script:
    """The script ``frontend/lua/<name>.lua``, with the libraries its ``--!include <name>`` lines
    name put in front of it (one text: Redis runs a script as one chunk)."""
    body = load_source(name)
    parts = []
    for line in body.splitlines():
        if not line.startswith("--!include "):
            break
        parts.append(load_source(line.split(None, 1)[1].strip()))
    text = "\n".join(parts + [body])
    script = Script(name=name, text=text, sha=hashlib.sha1(text.encode("utf-8")).hexdigest())
    _BY_SHA[script.sha] = script
    return script


def by_sha(sha: str | bytes) -> Script | None:
    """A loaded script by its SHA1 (to send it again as EVAL after NOSCRIPT)."""
    return _BY_SHA.get(sha.decode() if isinstance(sha, bytes) else sha)


#: files that are included by scripts, never run alone
LIBRARIES = frozenset({"placement"})


def names() -> list[str]:
    """Every script there is (for tests and for loading them all at once); libraries left out."""
    return sorted(entry.name[:-4] for entry in resources.files("frontend.lua").iterdir()
                  if entry.name.endswith(".lua") and entry.name[:-4] not in LIBRARIES)


def is_noscript(exc: BaseException) -> bool:
    """True when Redis answered NOSCRIPT (its script cache was flushed or it restarted)."""
    return isinstance(exc, redis.exceptions.NoScriptError) or (
        isinstance(exc, redis.ResponseError) and str(exc).startswith("NOSCRIPT"))
