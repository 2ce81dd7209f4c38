"""An ended backfill's open transaction on a real broker (deploy/local/backfill_transactions.py): left open it
blinds the pace and blocks the lane; aborted, the lane reads on and the producer that left it is fenced."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import KafkaException, Producer, TopicPartition

from deploy.local import backfill_transactions, backfills
from jobs.backfill_load import KafkaLoad
from rscf.kafka_clients import JOB, admin_client, create_topics, delete_topics, end_offsets, producer_config
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration


def _stable_and_high(topic: str) -> tuple[int, int]:
    """(last stable offset, high watermark) of partition 0: apart while a transaction is open."""
    admin, tps = admin_client(), [TopicPartition(topic, 0)]
    return (end_offsets(admin, tps, 10, committed_only=True)[(topic, 0)], end_offsets(admin, tps, 10)[(topic, 0)])


def test_an_open_transaction_of_a_cancelled_ingest_is_aborted_and_the_lane_reads_past_it(stack):
    tag = uuid.uuid4().hex[:6]
    lane = f"{SETTINGS.topics.backfill_lane}-it{tag}"
    topic = backfills.lane_config(lane).prompts
    create_topics([topic], partitions=1)
    state = {"job_id": f"it-{tag}", "job_name": backfills.job_name(f"it{tag}"), "lane": lane}
    try:
        # what a cancelled ingest leaves: 20 rows in a transaction under one of its sink's ids, never committed
        tid = backfill_transactions.ingest_transactional_ids(state["job_name"], lane)[1]
        left = Producer(producer_config(linger_ms=0, **{"transactional.id": tid}))
        left.init_transactions(10)
        left.begin_transaction()
        for _ in range(20):
            left.produce(topic, b"row")
        left.flush(10)
        load = KafkaLoad(SETTINGS.kafka_bootstrap, topic, f"rscf-it-lane-{tag}", principal=JOB)
        assert load()[1] == 0, "left open, the rows are no lag to the pace: it would read at its whole budget"
        stable, high = _stable_and_high(topic)
        assert stable < high, "the open transaction holds the last stable offset: the lane reads nothing past it"

        assert backfill_transactions.release(state, seen_state="CANCELED") is True
        deadline = time.monotonic() + 10
        while _stable_and_high(topic)[0] < high and time.monotonic() < deadline:
            time.sleep(0.2)
        stable, high_after = _stable_and_high(topic)
        assert stable == high_after > high, "aborted (its marker written): nothing open holds the lane"
        assert load()[1] == high_after, "the pace sees every offset the lane has not passed yet"
        with pytest.raises(KafkaException):
            left.commit_transaction(10)  # fenced: the producer that left them can never commit them later
        assert state["released_job_id"] == state["job_id"]
    finally:
        delete_topics([topic])
