"""What the backfill's pace reads of the broker: which topics are live, arrivals, the lane's reading rate."""

from __future__ import annotations

from jobs.backfill_load import Throughput, arrivals_per_s, is_lane_suffix, is_live_prompts_topic


def test_live_prompts_topics_are_the_prompts_topic_and_its_isolated_copies_not_lanes():
    assert is_live_prompts_topic("genai.prompts")
    assert is_live_prompts_topic("genai.prompts.bench1a2b3c"), "a benchmark's live job"
    assert not is_live_prompts_topic("genai.prompts.backfill"), "the backfill lane"
    assert not is_live_prompts_topic("genai.prompts.backfill-1a2b3c"), "a benchmark's lane"
    assert not is_live_prompts_topic("genai.prompts.bench.low") and not is_live_prompts_topic("genai.prompts.")
    assert not is_live_prompts_topic("genai.content") and not is_live_prompts_topic("genai.promptsx")
    assert is_lane_suffix("backfill") and not is_lane_suffix("backfiller")


def test_arrivals_count_a_new_topic_from_zero_and_are_never_negative():
    prev = {("a", 0): 100, ("a", 1): 50, ("gone", 0): 7}
    now = {("a", 0): 300, ("a", 1): 40, ("new", 0): 400}
    assert arrivals_per_s(prev, now, 2.0) == 300.0, "(200 + 0 + 400) / 2: went back counts 0, new from 0"
    assert arrivals_per_s(prev, now, 0.0) == 0.0


def test_throughput_spans_lane_checkpoints_before_it_says_anything():
    t = Throughput(window_s=8, min_span_s=3)
    assert t.add(0, 0) is None and t.add(1, 0) is None and t.add(2, 400) is None, "one checkpoint says nothing"
    assert t.add(3, 400) == 400 / 3
    for s in range(4, 20):
        rate = t.add(s, 200 * s)
    assert rate == 200.0, "over the window only"
    assert t.add(21, 5) is None, "a counter that went back starts again"
