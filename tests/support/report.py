"""Figures a test measured: printed (shown with pytest -s) and kept in $GREENROOM_FAULTS_REPORT; this
process's resident memory."""

from __future__ import annotations

import os
from typing import Any, Iterable


def report(name: str, **figures: Any) -> None:
    """Print a test's measured figures (shown with pytest -s, and kept in the faults report file)."""
    line = f"[faults] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    path = os.environ.get("GREENROOM_FAULTS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def count_dups(texts: Iterable[str]) -> tuple[dict[str, int], int]:
    """Occurrences per text and the number of extra copies (sum of count-1)."""
    counts: dict[str, int] = {}
    for t in texts:
        counts[t] = counts.get(t, 0) + 1
    return counts, sum(c - 1 for c in counts.values() if c > 1)


def rss_kb() -> int:
    """This process's resident set size (VmRSS), in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
