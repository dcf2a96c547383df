"""Statistics and paired ratios of the benchmark harness (pure logic)."""

from __future__ import annotations

import pytest

from bench.stats import TARGETS, evaluate_targets, paired_speed, rate, summarize


def test_summarize_median_range_and_failed_reps():
    s = summarize([3.0, None, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.n) == (2.5, 1.0, 10.0, 4)
    assert summarize([None, None]) is None
    assert summarize([]) is None


def test_paired_speed_pairs_by_repetition():
    # rep 1: ref 1.0 vs impl 2.0 -> 0.5; rep 2: 4.0 vs 2.0 -> 2.0; rep 3: 3.0 vs 3.0 -> 1.0.
    # Unpaired (sorted) medians would give 1.0 here too, so also check the range, which
    # only pairing produces.
    s = paired_speed([2.0, 2.0, 3.0], [1.0, 4.0, 3.0])
    assert s.median == pytest.approx(1.0)
    assert (s.low, s.high) == (pytest.approx(0.5), pytest.approx(2.0))


def test_paired_speed_drops_reps_missing_on_either_side():
    s = paired_speed([1.0, None, 2.0, 4.0], [2.0, 1.0, None, 2.0])
    assert s.n == 2
    assert s.median == pytest.approx((2.0 + 0.5) / 2)
    assert paired_speed([None], [1.0]) is None


def test_rate():
    assert rate(1024, 2.0) == 512
    assert rate(1, 0) == float("inf")


def _times(subject: list, ref_name: str, ref: list, workload: str) -> dict:
    return {workload: {"pyunion": subject, ref_name: ref}}


def test_targets_strict_and_inclusive():
    by_wl = {t.workload: t for t in TARGETS}
    # create must be strictly faster than fuse-overlayfs: equal speed is a miss.
    rows = evaluate_targets(_times([1.0, 1.0], "fuse-overlayfs", [1.0, 1.0], "create"))
    row = next(r for r in rows if r["workload"] == "create")
    assert row["speed"]["median"] == 1.0 and row["met"] is False
    # walk-warm needs 0.5x kernel overlay or better: exactly 0.5 meets it.
    rows = evaluate_targets(_times([2.0], "kernel-overlay", [1.0], "walk-warm"))
    row = next(r for r in rows if r["workload"] == "walk-warm")
    assert row["met"] is True
    # copy-up within 1.2x of the kernel's time: 1.3x the time misses.
    rows = evaluate_targets(_times([1.3], "kernel-overlay", [1.0], "copy-up"))
    row = next(r for r in rows if r["workload"] == "copy-up")
    assert row["met"] is False and by_wl["copy-up"].reference == "kernel-overlay"
    # not measured at all
    assert all(r["met"] is None for r in evaluate_targets({}))


def test_time_budget_shares_and_stops():
    from bench.runner import another_rep, share_deadline

    assert share_deadline(100.0, None, 1, 3) is None
    assert share_deadline(100.0, 160.0, 1, 3) == 120.0    # weight 1 of 3: a third of 60 s
    assert share_deadline(100.0, 160.0, 2, 3) == 140.0    # a heavier workload gets more
    assert share_deadline(100.0, 160.0, 1, 1) == 160.0    # the last one gets all that is left
    assert share_deadline(100.0, 90.0, 1, 2) == 100.0     # past the deadline: no share
    assert another_rep(0, 0.0, 500.0, 100.0)              # the first repetition always runs
    assert another_rep(2, 20.0, 100.0, 110.0)             # 10 s per rep, 10 s left: fits
    assert not another_rep(2, 20.0, 100.0, 109.0)
    assert another_rep(5, 1e6, 0.0, None)                 # no budget: never stops
