"""The in-flight ledger hands commands out in sequence order, each once, whatever order the scripts'
replies come back in (the router's and the intake's replies race; a reply can also come twice, after
an adopt). ``accept`` has a fast path for the commonest reply (the next seqs, in order, nothing
waiting): these properties hold for every interleaving, on whichever path a reply takes.

Only ``start()`` reads Redis (the seq counter): a real redis-server, as everywhere.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from frontend.inflight import InflightLedger
from frontend.keys import Keys


def _ledger(client) -> InflightLedger:
    ledger = InflightLedger(client, Keys("gr:"), "fe-test", max_items=10_000, max_bytes=10_000_000)
    ledger.start()
    return ledger


def _item(seq: int) -> bytes:
    return b'{"type":"say","room":"r%d","text":"%s"}' % (seq % 7, b"x" * (seq % 5))


@st.composite
def replies(draw):
    """1..n numbered in consecutive runs (one run per script reply), the runs in any order, some
    delivered twice; and replies of any seqs in any order (what ``adopt_unknown`` and ``fill_gaps``
    read back from Redis: a hash has no order, a lost reply leaves holes)."""
    n = draw(st.integers(min_value=1, max_value=80))
    cuts = sorted(draw(st.sets(st.integers(min_value=2, max_value=n), max_size=12))) if n > 1 else []
    bounds = [1, *cuts, n + 1]
    runs = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
    order = draw(st.permutations(runs))
    again = draw(st.lists(st.one_of(st.sampled_from(runs),
                                    st.lists(st.integers(min_value=1, max_value=n), min_size=1, max_size=6)),
                          max_size=4))
    sequence = list(order)
    for run in again:
        sequence.insert(draw(st.integers(min_value=0, max_value=len(sequence))), run)
    return n, sequence


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=replies())
def test_every_command_is_handed_out_once_in_sequence_order(redis_client, case):
    n, sequence = case
    ledger = _ledger(redis_client)
    out: list[tuple[int, bytes]] = []
    for run in sequence:
        reply: list = []
        for seq in run:
            reply += [seq, _item(seq)]  # as redis-py gives a script's reply: ints and bytes
        out += ledger.accept(reply)
    assert [seq for seq, _ in out] == list(range(1, n + 1))
    assert all(stored == _item(seq) for seq, stored in out)
    assert len(ledger) == n
    assert ledger.bytes == sum(len(_item(seq)) for seq in range(1, n + 1))
    assert ledger.gap_age() == 0.0
    for seq in range(1, n + 1):
        ledger.ack(seq)
    ledger.written(ledger.take_acks())
    assert len(ledger) == 0 and ledger.bytes == 0


def test_a_reply_that_runs_ahead_waits_for_the_one_before_it(redis_client):
    ledger = _ledger(redis_client)
    assert ledger.accept([3, b"c", 4, b"d"]) == []
    assert ledger.gap_age() > 0.0 and len(ledger) == 2
    assert ledger.accept([1, b"a", 2, b"b"]) == [(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d")]
    assert ledger.accept([2, b"b", 5, b"e"]) == [(5, b"e")]  # 2 was handed out already
    assert ledger.gap_age() == 0.0 and len(ledger) == 5


def test_acknowledgements_wake_the_writer_once_per_batch(redis_client):
    woken = []
    ledger = InflightLedger(redis_client, Keys("gr:"), "fe-test", max_items=100, max_bytes=100_000,
                            wake_writer=lambda: woken.append(1))
    ledger.start()
    ledger.accept([1, b"a", 2, b"b", 3, b"c"])
    ledger.ack(1)
    ledger.ack(2)
    assert len(woken) == 1 and ledger.pending_acks == 2
    assert ledger.take_acks() == [1, 2]
    ledger.ack(3)
    assert len(woken) == 2
    ledger.give_back_acks(ledger.take_acks())  # a failed batch: its writer retries them itself
    assert ledger.pending_acks == 1
