"""Dead letters for ops (`greenroom dead`, the dashboard's /dead page): list, requeue, purge.

``control:dead`` holds the commands frontends rejected (PROTOCOL.md, "Dead letters"),
``messages:dead`` the events whose backend handlers failed (``backend_sdk``). A dead letter is named
by a short digest of its bytes, not by position, so a list that moves under you never requeues the
wrong item.

What is shown never carries a secret: the values of secret fields are masked on display, also in
dead letters written by versions that did not mask them. Requeue pushes back exactly what was
received, so it refuses (unless forced) a dead letter whose ``raw`` is not that: cut
(``raw_truncated``), masked, or changed (its ``raw_digest`` does not match). Lists are read a page at a
time through ``dead_peek.lua``, which never sends an item bigger than ``PEEK_LIMIT`` whole, so a list
of huge items written by someone else cannot exhaust the tool's memory.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import redis
import ujson

from . import scripts
from .keys import Keys
from .protocol import DEAD_RAW_LIMIT, SECRET_FIELDS, encodable, encode, mask_secrets
from .status import _age, _decode_obj, _text, clean, terminal

DEAD_LISTS = {"control": "control:dead", "messages": "messages:dead"}
LIST_LIMIT = 1000
#: items up to this many bytes are read whole; a bigger one only by its head and tail
PEEK_LIMIT = 64 * 1024
PEEK_TAIL = 512
PAGE = 100
#: characters of an item's raw shown (after masking)
SHOW_RAW = 4096
_MASKED_FIELD = re.compile(r'"(?:%s)"\s*:\s*"\*\*\*"' % "|".join(SECRET_FIELDS))
_CODE_IN_HEAD = re.compile(rb'"code"\s*:\s*"([A-Za-z0-9_.-]{1,40})"')
_ERROR_IN_TAIL = re.compile(rb'"error"\s*:\s*"([A-Za-z0-9_.]{1,80})[:"]')


@dataclass
class Peeked:
    """One dead letter as read: the whole item, or (for a big one) its size, head and tail."""

    index: int
    size: int
    item: bytes | None
    head: bytes = b""
    tail: bytes = b""

    @property
    def id(self) -> str:
        if self.item is not None:
            return digest(self.item)
        return hashlib.blake2b(b"big\0%d\0" % self.size + self.head + b"\0" + self.tail,
                               digest_size=6).hexdigest()


@dataclass
class Requeued:
    """What ``dead_requeue`` did: how many went back, and which it refused (id, why)."""

    moved: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


def digest(item: bytes) -> str:
    return hashlib.blake2b(item, digest_size=6).hexdigest()


def dead_key(keys: Keys, which: str) -> str:
    if which not in DEAD_LISTS:
        raise ValueError(f"no dead-letter list {which!r}: use control or messages")
    return keys.key(DEAD_LISTS[which])


def peek(client: redis.Redis, key: str, limit: int | None = None) -> Iterator[Peeked]:
    """The items of the list ``key`` from its head, a page per round trip, big ones cut."""
    script = scripts.load("dead_peek").register(client)
    start = 0
    while limit is None or start < limit:
        stop = start + PAGE - 1 if limit is None else min(start + PAGE, limit) - 1
        page = script(keys=[key], args=[start, stop, PEEK_LIMIT, PEEK_TAIL])
        for n, entry in enumerate(page):
            if isinstance(entry, bytes):
                yield Peeked(start + n, len(entry), entry)
            else:
                size, head, tail = entry
                yield Peeked(start + n, int(size), None, head, tail)
        if len(page) < stop - start + 1:
            return
        start = stop + 1


def dead_items(client: redis.Redis, keys: Keys, which: str = "control",
               limit: int = LIST_LIMIT) -> list[tuple[str, bytes]]:
    """(id, item) of the dead letters read whole (big ones are left out)."""
    return [(p.id, p.item) for p in peek(client, dead_key(keys, which), limit) if p.item is not None]


# ------------------------------------------------------------------------------------------- reading
def _reason(obj: dict[str, Any]) -> tuple[str, str]:
    error = obj.get("error")
    if isinstance(error, dict):  # control:dead (the frontend)
        return _text(str(error.get("code") or "?")), _text(str(error.get("detail") or ""))
    if isinstance(error, str):  # messages:dead (backend_sdk): "Type: message", handler, traceback
        return clean(error.split(":", 1)[0]), clean(f"{obj.get('handler', '?')}: {error}")
    return "?", ""


def _body(obj: dict[str, Any], item: bytes) -> str:
    body = obj.get("raw", obj.get("event"))
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        try:
            return encode(body).decode("utf-8")
        except (UnicodeEncodeError, OverflowError, ValueError, TypeError):
            return clean(ujson.dumps(clean(body), ensure_ascii=False))
    return _text(item)


def _masked(raw: str) -> bool:
    """True when ``raw`` has a secret field whose value was replaced by ``***``."""
    try:
        obj = ujson.loads(raw)
    except (ValueError, TypeError):
        return bool(_MASKED_FIELD.search(raw))
    stack, seen = [obj], 0
    while stack and seen < 10_000:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            for name, value in node.items():
                if name in SECRET_FIELDS and value == "***":
                    return True
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return False


def requeue_refusal(which: str, obj: dict[str, Any] | None, size: int = 0) -> tuple[str | None, bool]:
    """Why a dead letter must not be requeued, or None; and whether ``force`` may override that.

    A requeue pushes back what the dead letter says was received; when that is not the item as it
    was (cut, masked, changed) the push would be a broken command."""
    if obj is None:
        if size > PEEK_LIMIT:
            return f"it is {size} bytes, too big to check (--force pushes it back as it is)", True
        return "it is not a dead letter (not a JSON object)", False
    if which == "control":
        raw = obj.get("raw")
        if not isinstance(raw, str):
            return "it has no raw item", False
        if not encodable(raw):
            return "its raw is not valid Unicode", False
        if obj.get("raw_truncated"):
            total = obj.get("raw_bytes")
            return (f"its raw was cut to {DEAD_RAW_LIMIT} of {total if isinstance(total, int) else '?'} "
                    f"bytes"), True
        if _masked(raw):
            return "its secrets were masked", True
        want = obj.get("raw_digest")
        if isinstance(want, str) and hashlib.blake2b(raw.encode("utf-8"), digest_size=16).hexdigest() != want:
            return "its raw is not the item as received (it was not valid UTF-8, or was changed)", True
        return None, False
    event = obj.get("event")
    if isinstance(event, str):
        return (None, False) if encodable(event) else ("its event is not valid Unicode", False)
    if isinstance(event, dict):
        try:
            encode(event)
        except (UnicodeEncodeError, OverflowError, ValueError, TypeError):
            return "its event is not valid Unicode", False
        return None, False
    return "it has no event", False


def _row(which: str, entry: Peeked) -> dict[str, Any]:
    flags = []
    if entry.item is None:
        code = _code_of_big(which, entry) or "?"
        row = {"id": entry.id, "code": code, "detail": "", "ts": None, "frontend": None,
               "raw": f"(a dead letter of {entry.size} bytes: too big to show)", "bytes": entry.size}
        refusal, _ = requeue_refusal(which, None, entry.size)
        flags.append("big")
    else:
        obj = _decode_obj(entry.item)
        code, detail = _reason(obj or {})
        raw = clean(mask_secrets(_body(obj or {}, entry.item)))
        ts = (obj or {}).get("ts")
        who = (obj or {}).get("frontend") or (obj or {}).get("consumer")
        row = {"id": entry.id, "code": code, "detail": detail,
               "ts": ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None,
               "frontend": clean(who) if isinstance(who, str) else None,
               "raw": raw if len(raw) <= SHOW_RAW else raw[:SHOW_RAW] + "…", "bytes": entry.size}
        refusal, _ = requeue_refusal(which, obj, entry.size)
        if obj and obj.get("raw_truncated"):
            flags.append("cut")
        if isinstance((obj or {}).get("raw"), str) and _masked(obj["raw"]):
            flags.append("masked")
    row["flags"] = flags
    row["requeue_refused"] = refusal
    return row


def _code_of_big(which: str, entry: Peeked) -> str | None:
    found = _CODE_IN_HEAD.search(entry.head) if which == "control" else _ERROR_IN_TAIL.search(entry.tail)
    return found.group(1).decode("ascii") if found else None


def dead_list(client: redis.Redis, keys: Keys, which: str = "control",
              limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
    """The dead letters, oldest first: id, reason, when, by whom, the item with its secrets masked,
    and why a requeue would be refused (``requeue_refused``)."""
    return [_row(which, entry) for entry in peek(client, dead_key(keys, which), limit)]


# -------------------------------------------------------------------------------------------- change
def _code(which: str, entry: Peeked) -> str | None:
    if entry.item is None:
        return _code_of_big(which, entry)
    return _reason(_decode_obj(entry.item) or {})[0]


def _select(client: redis.Redis, key: str, which: str, ids: Iterable[str] | None,
            code: str | None) -> list[Peeked]:
    wanted = set(ids) if ids is not None else None
    return [entry for entry in peek(client, key)
            if (wanted is None or entry.id in wanted) and (code is None or _code(which, entry) == code)]


def _whole(client: redis.Redis, key: str, entry: Peeked) -> bytes | None:
    """The whole item of ``entry`` (fetched for a big one; None when it is no longer there)."""
    if entry.item is not None:
        return entry.item
    item = client.lindex(key, entry.index)
    if item is None or len(item) != entry.size or not item.startswith(entry.head) \
            or not item.endswith(entry.tail):
        return None
    return item


def _payload(which: str, item: bytes, keys: Keys) -> tuple[str, bytes]:
    """Where a dead letter goes back to and what is pushed there."""
    obj = _decode_obj(item) or {}
    if which == "control":
        return keys.control, obj["raw"].encode("utf-8")
    event = obj["event"]  # backend_sdk keeps the event as received (a string)
    return keys.messages, encode(event) if isinstance(event, dict) else event.encode("utf-8")


def dead_requeue(client: redis.Redis, keys: Keys, which: str = "control", ids: Iterable[str] | None = None,
                 code: str | None = None, force: bool = False) -> Requeued:
    """Push the chosen dead letters (all when ``ids`` is None) back where they came from.

    A dead letter whose item is not what was received (cut, masked, changed) is refused unless
    ``force``; one that cannot be pushed at all (no item, not valid Unicode) is always refused."""
    script = scripts.load("dead_requeue").register(client)
    source = dead_key(keys, which)
    done = Requeued()
    for entry in _select(client, source, which, ids, code):
        item = entry.item
        if item is None:  # a big one: checked (and fetched) only when forced
            refusal, _ = requeue_refusal(which, None, entry.size)
            if not force:
                done.refused.append((entry.id, refusal or "too big"))
                continue
            item = _whole(client, source, entry)
            if item is None:
                done.refused.append((entry.id, "it moved while being read: list again"))
                continue
        refusal, forceable = requeue_refusal(which, _decode_obj(item))
        if refusal and not (force and forceable):
            done.refused.append((entry.id, refusal))
            continue
        target, payload = _payload(which, item, keys)
        done.moved += int(script(keys=[source, target], args=[item, payload]))
    return done


def dead_purge(client: redis.Redis, keys: Keys, which: str = "control", ids: Iterable[str] | None = None,
               code: str | None = None) -> int:
    """Delete the chosen dead letters (all when ``ids`` is None and no ``code``)."""
    source = dead_key(keys, which)
    if ids is None and code is None:
        pipe = client.pipeline(transaction=True)
        pipe.llen(source)
        pipe.delete(source)
        return int(pipe.execute()[0])
    removed = 0
    for entry in _select(client, source, which, ids, code):
        item = _whole(client, source, entry)
        if item is not None:
            removed += int(client.lrem(source, 1, item))
    return removed


# ------------------------------------------------------------------------------------------ printing
def format_dead(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """The `greenroom dead list` table (every value escaped for the terminal)."""
    now = time.time() if now is None else now
    lines = [f"{'ID':12} {'AGE':>8} {'REASON':14} {'DETAIL':40} RAW"]
    refused = 0
    for row in rows:
        age = _age(now - row["ts"]) if isinstance(row.get("ts"), (int, float)) else "-"
        detail = terminal(row["detail"])[:40]
        flags = f"[{','.join(row['flags'])}] " if row.get("flags") else ""
        refused += bool(row.get("requeue_refused"))
        lines.append(f"{terminal(row['id'])[:12]:12} {age:>8} {terminal(row['code'])[:14]:14} {detail:40} "
                     f"{flags}{terminal(row['raw'])[:80]}")
    lines.append(f"{len(rows)} dead letters")
    if refused:
        lines.append(f"{refused} of them cannot be requeued as they are (cut, masked or not a command: "
                     f"see `dead list --json`, requeue_refused)")
    return "\n".join(lines)
