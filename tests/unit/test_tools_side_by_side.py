"""The interleaved side-by-side figures of `rscf bench backfill --rounds` (issue #17)."""

import pytest

from tools.side_by_side import p99, side_by_side


def test_p99_is_the_nearest_rank():
    assert p99(list(range(1, 101))) == 100.0
    assert p99(list(range(1000))) == 990.0
    assert p99([]) is None


def test_beside_runs_are_compared_with_the_alone_runs_around_them():
    alone = [[100.0] * 100, [300.0] * 100, [100.0] * 100]  # the machine drifted during round 1
    beside = {"lane": [[220.0] * 100, [110.0] * 100]}
    out = side_by_side(alone, beside)["arms"]["lane"]
    assert out["bracketed_ratios"] == [1.1, 0.55]  # 220 / mean(100, 300); 110 / mean(300, 100)
    assert out["median_bracketed_ratio"] == pytest.approx(0.825)
    assert out["beside_p99_ms"] == [220.0, 110.0]


def test_pooled_p99_uses_every_sample():
    alone = [[10.0] * 99 + [50.0], [10.0] * 100]
    beside = {"lane": [[10.0] * 98 + [80.0, 80.0]]}
    out = side_by_side(alone, beside)
    assert out["pooled_alone_p99_ms"] == 10.0  # 1 slow sample in 200: below the 99th percentile
    assert out["arms"]["lane"]["pooled_p99_ms"] == 80.0
    assert out["arms"]["lane"]["pooled_ratio"] == 8.0


def test_rounds_must_match():
    with pytest.raises(ValueError):
        side_by_side([[1.0]], {"lane": []})
    with pytest.raises(ValueError):
        side_by_side([[1.0], [1.0], [1.0]], {"lane": [[1.0]]})


def test_a_beside_run_counts_only_if_its_backfill_ran_until_the_bench_stopped_it():
    from tools.backfill_bench import ran_throughout

    assert ran_throughout({"state": "STOPPED_BY_BENCH", "rows_done": 443})
    assert not ran_throughout({"state": "FINISHED", "rows_done": 1800})  # ended before live was measured
    assert not ran_throughout({})  # the backfill thread failed before it reported


def test_the_backfill_bench_refuses_unknown_arms_and_two_standing_lanes_before_running_anything():
    import pytest

    from tools import backfill_bench

    both = ("live_first", "live_first_ckpt2")
    assert set(backfill_bench.check_arms(both, False)) >= set(both)
    from rscf.settings import SETTINGS

    default = SETTINGS.limits.backfill_ingest_checkpoint_ms
    assert backfill_bench.check_arms(("live_first",), True)["live_first"].ingest_checkpoint_ms == default
    assert backfill_bench.arms()["live_first_ckpt2"].ingest_checkpoint_ms == 2_000
    with pytest.raises(ValueError, match="unknown arms"):
        backfill_bench.check_arms(("no_such_arm",), False)
    with pytest.raises(ValueError, match="one arm a run"):
        backfill_bench.run(10, ("jsonl",), names=both, standing_lanes=True)
