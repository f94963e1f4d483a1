"""Names unique in a test run: rooms, channels, nicks, frontend ids, Redis key prefixes.

The session's ngircd, prosody and Redis are shared by every test, so a test names what it creates
with ``uniq(stem)``: the stem, a tag of this run (five hex digits) and a counter. Short enough for
IRC nicks and channels (ngircd and InspIRCd here allow 30 characters).
"""

from __future__ import annotations

import itertools
import uuid

RUN = uuid.uuid4().hex[:5]
_seq = itertools.count()


def uniq(stem: str) -> str:
    """A name unique in this test run (short enough for nicks and channels)."""
    return f"{stem}{RUN}{next(_seq)}"
