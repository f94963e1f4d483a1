"""The benchmark's table checks the targets of the issue that set them (issue 19's where it set one)."""

from tests.bench.report import summarize, target


def _row(frontend, kind, rooms, rate=0, **figures):
    return {"type": "result", "scenario": f"{kind}:{rooms}", "frontend": frontend, "kind": kind, "rooms": rooms,
            "rate": rate, "title": f"{kind} {rooms}", "ok": True, **figures}


def test_each_row_is_checked_against_its_issues_target():
    assert target(_row("g", "outbound", 100), "cpu_us_per_msg")[1](20.0, 2.4)
    assert not target(_row("g", "inbound", 1000), "cpu_us_per_msg")[1](20.0, 2.6)
    assert target(_row("g", "rooms", 2000), "rss_kb_per_room")[1](23.0, 0.76)
    assert not target(_row("g", "rooms", 10000), "rss_kb_per_room")[1](29.0, 0.95)
    assert target(_row("g", "shared", 100000), "rss_kb_per_room")[1](7.9, None)
    assert not target(_row("g", "shared", 100000), "rss_kb_per_room")[1](13.1, None)
    assert target(_row("g", "outbound", 1000, 2000), "lat_p99_ms")[1](3.5, 5.0)
    assert target(_row("g", "outbound", 1000), "lat_p99_ms") is None


def test_the_table_says_which_rows_meet_them():
    rows = [_row("greenroom", "outbound", 100, cpu_us_per_msg=30.0, msgs_per_s=1.0, fe_cpu_pct=90.0, lost=0),
            _row("go", "outbound", 100, cpu_us_per_msg=10.0, msgs_per_s=1.0, fe_cpu_pct=90.0, lost=0),
            _row("greenroom", "inbound", 100, cpu_us_per_msg=20.0, msgs_per_s=1.0, fe_cpu_pct=90.0, lost=0),
            _row("go", "inbound", 100, cpu_us_per_msg=10.0, msgs_per_s=1.0, fe_cpu_pct=90.0, lost=0)]
    text, _ = summarize(rows, ["greenroom", "go"])
    cpu = [line for line in text.splitlines() if "CPU per line" in line]
    assert "| 3× |" in cpu[0] and "≤ 2.5× Go (#19)" in cpu[0] and cpu[0].endswith("**no** |")
    assert "| 2× |" in cpu[1] and cpu[1].endswith("yes |")
