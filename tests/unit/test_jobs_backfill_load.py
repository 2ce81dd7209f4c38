"""What the backfill's pace reads of the broker: which topics are live, arrivals, the lane's reading rate."""

from __future__ import annotations

from types import SimpleNamespace

from confluent_kafka import TopicPartition

import rscf.kafka_clients
from jobs.backfill_load import KafkaLoad, Throughput, arrivals_per_s, is_lane_suffix, is_live_prompts_topic


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


def test_a_partition_left_out_of_one_look_is_not_read_as_a_burst_when_it_is_back(monkeypatch):
    """end_offsets(skip_missing) leaves out a leaderless partition (NOT_LEADER_FOR_PARTITION, seen in CI): the
    next look must not count it from 0 (10,000 records of history would read as 5,000 live prompts/s)."""
    topics = {"genai.prompts": SimpleNamespace(error=None, partitions={0: None, 1: None})}
    admin = SimpleNamespace(list_topics=lambda timeout: SimpleNamespace(topics=topics))
    looks = iter([{("genai.prompts", 0): 10_000, ("genai.prompts", 1): 10_000},
                  {("genai.prompts", 0): 10_100},  # partition 1 leaderless for a moment
                  {("genai.prompts", 0): 10_200, ("genai.prompts", 1): 10_100}])
    monkeypatch.setattr(rscf.kafka_clients, "end_offsets", lambda admin, tps, timeout, **kw: next(looks))
    clock = [0.0]
    load = KafkaLoad("bootstrap", "genai.prompts.backfill", "lane-group", clock=lambda: clock[0])
    load._admin = admin
    assert load() == (None, None, None), "the first look has nothing to compare with (no lane topic listed)"
    assert [tp.partition for tp in load._live] == [0, 1] and isinstance(load._live[0], TopicPartition)
    clock[0] = 2.0
    assert load()[0] == 50.0, "partition 0's 100 records over 2 s; partition 1 kept at its last offset"
    clock[0] = 4.0
    assert load()[0] == 100.0, "(100 + 100) / 2 s: partition 1's return is not 10,100 records at once"
