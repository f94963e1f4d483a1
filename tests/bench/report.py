"""Medians of the runs, side by side per frontend, with ratios to the Go reference and the issues' targets."""

from __future__ import annotations

import statistics

METRICS = {
    "rooms": [("join_s", "join time, s"), ("rss_kb_per_room", "RSS per room, KB"),
              ("idle_cpu_pct", "CPU over idle window, % of a core"), ("connections", "IRC connections")],
    "traffic_max": [("msgs_per_s", "lines/s"), ("cpu_us_per_msg", "frontend CPU per line, µs"),
                    ("fe_cpu_pct", "frontend CPU, % of a core"),
                    ("redis_cpu_us_per_msg", "Redis CPU per line, µs (generators' share included)"),
                    ("redis_slowest_ms", "slowest Redis command, ms"), ("lost", "lines lost")],
    "traffic_paced": [("msgs_per_s", "lines/s"), ("cpu_us_per_msg", "frontend CPU per line, µs"),
                      ("lat_p50_ms", "latency p50, ms"), ("lat_p99_ms", "latency p99, ms"),
                      ("redis_slowest_ms", "slowest Redis command, ms"), ("lost", "lines lost")],
    # one run: the rooms figures for N MUC rooms on one stream, then paced traffic in and out
    "xmpp": [("join_s", "join time, s"), ("rss_kb_per_room", "RSS per room, KB"),
             ("idle_cpu_pct", "CPU over idle window, % of a core"), ("connections", "XMPP streams")]
    + [(prefix + m, f"{way} {label}") for prefix, way in (("in_", "inbound"), ("out_", "outbound"))
       for m, label in [("msgs_per_s", "lines/s"), ("cpu_us_per_msg", "frontend CPU per line, µs"),
                        ("lat_p50_ms", "latency p50, ms"), ("lat_p99_ms", "latency p99, ms"),
                        ("lost", "lines lost")]],
}


def metric_list(row: dict) -> list[tuple[str, str]]:
    if row["kind"] in ("rooms", "shared"):
        return METRICS["rooms"]
    if row["kind"] == "xmpp":
        return METRICS["xmpp"]
    return METRICS["traffic_paced" if row.get("rate") else "traffic_max"]


def target(row: dict, metric: str) -> tuple[str, object] | None:
    """(text, check) for the targets of the issues that set them (#19, the hot path, where it set one;
    #8 for the rest); check(value, ratio_to_go) -> bool or None."""
    kind, rooms, rate = row["kind"], row["rooms"], row.get("rate") or 0
    if kind == "rooms" and rooms in (2_000, 10_000) and metric == "rss_kb_per_room":
        return "≤ 0.9× Go (#19)", lambda v, r: None if r is None else r <= 0.9
    if kind == "rooms" and rooms >= 10_000:
        if metric == "idle_cpu_pct":
            return "≤ 1% (#8)", lambda v, r: v <= 1.0
        if metric == "join_s":
            return "≤ 60 s (#8)", lambda v, r: v <= 60
    if kind == "shared":
        if metric == "rss_kb_per_room":
            return "≤ 8 KB (#19)", lambda v, r: v <= 8.0
        if metric == "join_s":
            return "≤ 120 s (#8)", lambda v, r: v <= 120
    if kind in ("inbound", "outbound"):
        if not rate and rooms in (100, 1000) and metric == "cpu_us_per_msg":
            return "≤ 2.5× Go (#19)", lambda v, r: None if r is None else r <= 2.5
        if rate == 20_000 and rooms == 100 and metric == "lat_p99_ms":
            return "≤ Go (#8)", lambda v, r: None if r is None else r <= 1.0
        if rate == 2_000 and rooms == 1000 and metric == "lat_p99_ms":
            return "≤ 5 ms (#19: every run)", lambda v, r: v <= 5.0
    return None


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if float(v).is_integer() and abs(v) >= 1:
        return f"{int(v):,}" if abs(v) >= 10_000 else str(int(v))
    a = abs(v)
    if a >= 10_000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def summarize(rows: list[dict], labels: list[str]) -> tuple[str, list[dict]]:
    """A markdown table of medians (and the summary records written to the JSON lines)."""
    order: list[str] = []
    by: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row.get("type") != "result":
            continue
        if row["scenario"] not in order:
            order.append(row["scenario"])
        by.setdefault((row["scenario"], row["frontend"]), []).append(row)
    ref = "go" if "go" in labels and len(labels) > 1 else None
    # the ratios and targets are greenroom's when it is in the run (other labels: e.g. an older build)
    main = "greenroom" if "greenroom" in labels else next((lb for lb in labels if lb != ref), labels[0])
    head = ["scenario", "figure"] + [f"{lb} (median)" for lb in labels]
    if ref:
        head += [f"{main} / {ref}", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summaries, failures = [], []
    for name in order:
        sample = next(r for lb in labels for r in by.get((name, lb), []))
        runs_cell = []
        med: dict[str, dict] = {}
        for lb in labels:
            rs = by.get((name, lb), [])
            ok = [r for r in rs if r.get("ok")]
            runs_cell.append(f"{len(ok)}/{len(rs)} ok" if rs else "not run")
            med[lb] = {}
            for m, _ in metric_list(sample):
                vals = [r[m] for r in ok if isinstance(r.get(m), (int, float))]
                med[lb][m] = statistics.median(vals) if vals else None
            for r in rs:
                if not r.get("ok"):
                    failures.append(f"{lb} {name}: {r.get('error')}")
            summaries.append({"type": "median", "scenario": name, "frontend": lb, "runs": len(rs),
                              "ok_runs": len(ok), **med[lb]})
        first = True
        title = f"{sample['title']}"
        row_cells = [title, "runs"] + runs_cell + (["", "", ""] if ref else [])
        lines.append("| " + " | ".join(row_cells) + " |")
        for m, label in metric_list(sample):
            if all(med[lb][m] is None for lb in labels):
                continue
            cells = ["", label] + [fmt(med[lb][m]) for lb in labels]
            if ref:
                v, rv = med[main][m], med[ref][m]
                ratio = v / rv if (v is not None and rv not in (None, 0)) else None
                t = target(sample, m)
                met = ""
                if t and v is not None:
                    ok = t[1](v, ratio)
                    met = "" if ok is None else ("yes" if ok else "**no**")
                cells += [fmt(ratio) + ("×" if ratio is not None else ""), t[0] if t else "", met]
            lines.append("| " + " | ".join(cells) + " |")
            first = False
        del first
    text = "\n".join(lines)
    if failures:
        text += "\n\nFailed runs:\n" + "\n".join(f"- {f[:400]}" for f in failures)
    return text, summaries
