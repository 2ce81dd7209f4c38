"""A backfill's view of the broker (jobs/backfill_load.py) on the real Kafka, as the job's principal sees it:
arrivals on live prompts topics (not on lanes), a topic deleted between two looks, the lane group's lag."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from jobs.backfill_load import KafkaLoad
from rscf.kafka_clients import (JOB, admin_client, client_security, create_topics, delete_topics, end_offsets,
                                producer_config)
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration


def _produce(topic: str, n: int) -> None:
    p = Producer(producer_config(linger_ms=0))
    for _ in range(n):
        p.produce(topic, b"x")
    assert p.flush(10) == 0


def _wait_for_leaders(topics: list[str], partitions: int, timeout_s: float = 20.0) -> None:
    """A topic just created may have no leader for a moment (NOT_LEADER_FOR_PARTITION in CI): wait it out."""
    admin, deadline = admin_client(), time.monotonic() + timeout_s
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    while True:
        try:
            end_offsets(admin, tps, 5.0)
            return
        except Exception:  # noqa: BLE001 - KafkaException until every partition has its leader
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_live_arrivals_lane_lag_and_a_deleted_topic(stack):
    tag = uuid.uuid4().hex[:6]
    live, gone = f"{SETTINGS.topics.prompts}.it{tag}", f"{SETTINGS.topics.prompts}.itgone{tag}"
    lane = f"{SETTINGS.topics.prompts}.{SETTINGS.topics.backfill_lane}-{tag}"
    group = f"rscf-it-lane-{tag}"
    create_topics([live, gone, lane], partitions=2)
    _wait_for_leaders([live, gone, lane], 2)
    try:
        clock = [0.0]
        load = KafkaLoad(SETTINGS.kafka_bootstrap, lane, group, principal=JOB, clock=lambda: clock[0])
        assert load()[0] is None, "the first look has nothing to compare with"
        _produce(live, 300)
        _produce(lane, 50)  # the lane's own prompts are not live traffic
        clock[0] = 2.0
        rate, lag, _ = load()
        assert rate is not None and 140 <= rate <= 200, f"300 live records over 2 s (+ whatever else arrived): {rate}"
        assert lag == 50, "the lane group has committed nothing: every lane record is unread"
        c = Consumer({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security(), "group.id": group,
                      "enable.auto.commit": False})
        c.commit(offsets=[TopicPartition(lane, p, 40) for p in (0, 1)], asynchronous=False)
        c.close()
        delete_topics([gone])
        time.sleep(1)
        clock[0] = 4.0
        rate, lag, _ = load()
        ends = load._prev[1] if load._prev else {}
        assert rate is not None, "a live topic deleted since the last listing does not blind the pace"
        assert lag is not None and lag < 50, "committed offsets count as read"
        assert not any(t == lane for t, _ in ends), "the lane is never in the live set"
    finally:
        delete_topics([live, gone, lane])


def test_the_lane_lag_leaves_out_an_open_transaction(stack):
    """The ingest writes the lane's prompts in a transaction per checkpoint: rows it has not committed yet are not
    the lane's lag (counted, a held reader blocked the very checkpoint that commits them: a 400 s checkpoint)."""
    tag = uuid.uuid4().hex[:6]
    lane = f"{SETTINGS.topics.prompts}.{SETTINGS.topics.backfill_lane}-{tag}"
    create_topics([lane], partitions=1)
    try:
        load = KafkaLoad(SETTINGS.kafka_bootstrap, lane, f"rscf-it-lane-{tag}", principal=JOB)
        p = Producer(producer_config(linger_ms=0, **{"transactional.id": f"rscf-it-{tag}"}))
        p.init_transactions(10)
        p.begin_transaction()
        for _ in range(30):
            p.produce(lane, b"row")
        p.flush(10)
        assert load()[1] == 0, "30 rows in an open transaction: nothing the lane could read yet"
        p.commit_transaction(10)
        deadline = time.monotonic() + 10
        while load()[1] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert load()[1] == 31, "committed: 30 rows the lane has not read, and the commit marker's offset"
    finally:
        delete_topics([lane])
