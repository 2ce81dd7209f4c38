"""The worker's Kafka side (inference_workers/kafka_io.py): the outbox, polling, rebalances; fake clients."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from inference_workers.batching import OffsetTracker
from inference_workers.kafka_io import KafkaIO, KafkaOutage, Outbox, Outgoing, consumer_config, results_producer_config
from inference_workers.metrics import WorkerMetrics
from rscf.settings import SETTINGS
from tests.helpers.worker_fakes import FakeConsumer, FakeProducer, Msg

RESULTS = "results"


@pytest.fixture()
def outbox() -> Outbox:
    metrics = WorkerMetrics("echo", "unit")
    box = Outbox(OffsetTracker(), metrics, RESULTS, KafkaOutage(metrics))
    box.producer, box.consumer = FakeProducer(), FakeConsumer()
    return box


def answer(offset: int, topic: str = RESULTS) -> Outgoing:
    return Outgoing(key=f"r{offset}".encode(), value=b"v", topic=topic, offsets=[("req", 0, offset)])


def outages(box: Outbox) -> float:
    return box.metrics.outages.labels("echo", "kafka")._value.get()


def test_commits_only_below_the_first_unacknowledged_answer(outbox: Outbox) -> None:
    for off in range(3):
        outbox.tracker.track("req", 0, off)
    outbox.send(answer(0))
    outbox.send(answer(2))
    outbox.settle()
    assert outbox.consumer.commits == [([("req", 0, 1)], True)]  # offset 1 is still open
    assert outbox.answered == 2 and len(outbox) == 0
    outbox.send(answer(1))
    outbox.settle()
    assert outbox.consumer.commits[-1] == ([("req", 0, 3)], True)


def test_a_failed_delivery_is_resent_after_a_backoff_and_counted_once(outbox: Outbox, monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr("inference_workers.kafka_io.time.monotonic", lambda: now[0])
    outbox.tracker.track("req", 0, 0)
    outbox.producer.fail_next = 2
    outbox.send(answer(0))  # delivery fails on the first poll
    outbox.settle()
    (out,) = outbox.records()
    assert out.failures == 1 and not out.sent and out.retry_at == pytest.approx(100.4)
    assert outages(outbox) == 1 and outbox.outage.down
    outbox.settle()
    assert len(outbox.producer.produced) == 1  # not before its retry time
    now[0] = 100.5
    outbox.settle()  # re-sent; its delivery fails again
    outbox.settle()
    assert len(outbox.producer.produced) == 2 and out.retry_at == pytest.approx(100.5 + 0.8)
    assert outages(outbox) == 1  # the same outage
    now[0] = 102.0
    outbox.settle()
    outbox.settle()
    assert len(outbox) == 0 and outbox.answered == 1 and not outbox.outage.down
    assert outbox.consumer.commits == [([("req", 0, 1)], True)]


def test_send_before_connecting_waits_for_settle(outbox: Outbox) -> None:
    producer, outbox.producer = outbox.producer, None
    outbox.send(answer(0))
    (out,) = outbox.records()
    assert not out.sent
    outbox.producer = producer
    outbox.settle()
    assert producer.produced == [(RESULTS, b"r0", b"v")]


def test_flush_waits_for_every_acknowledgement(outbox: Outbox) -> None:
    outbox.tracker.track("req", 0, 0)
    outbox.tracker.track("req", 0, 1)
    outbox.send(answer(0))
    outbox.send(Outgoing(key=b"", value=b"dl", topic="dlq", offsets=[("req", 0, 1)]))
    outbox.flush()
    outbox.commit(sync=True)
    assert len(outbox) == 0 and outbox.answered == 1  # the dead letter is not a result
    assert outbox.consumer.commits == [([("req", 0, 2)], True)]  # nothing new for the sync commit


def test_commit_retries_a_coordinator_away_and_gives_up_on_a_lost_partition(outbox: Outbox, monkeypatch) -> None:
    monkeypatch.setattr("inference_workers.kafka_io.time.sleep", lambda _s: None)
    outbox.tracker.track("req", 0, 0)
    outbox.tracker.done("req", 0, 0)
    outbox.consumer.errors = [KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE))]
    outbox.commit(sync=True)
    assert outbox.consumer.commits == [([("req", 0, 1)], False)] and outages(outbox) == 1
    outbox.tracker.track("req", 0, 1)
    outbox.tracker.done("req", 0, 1)
    outbox.consumer.errors = [KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID))]
    outbox.commit()  # not retriable: logged, left to redelivery
    assert len(outbox.consumer.commits) == 1 and outbox.tracker.committable() == {("req", 0): 2}


class Owner:
    def __init__(self) -> None:
        self.calls: list = []

    def hold_inference(self) -> None:
        self.calls.append("hold")

    def release_inference(self) -> None:
        self.calls.append("release")

    def drop_requests(self, partitions) -> None:
        self.calls.append(("drop", partitions))

    def assignment_changed(self) -> None:
        self.calls.append("assignment")


@pytest.fixture()
def kafka(outbox: Outbox) -> KafkaIO:
    io = KafkaIO("req", outbox, Owner(), consumer_config("b:9092", "c", "g", 10_000, 300_000), {})
    io.consumer, io.producer = outbox.consumer, outbox.producer
    return io


def test_poll_tracks_records_and_skips_errors(kafka: KafkaIO) -> None:
    class EOF:
        def code(self):
            return KafkaError._PARTITION_EOF

    kafka.consumer.messages = [Msg(b"a", b"a", 5, topic="req"), Msg(b"", None, 6, error=EOF(), topic="req"),
                               Msg(b"b", b"b", 7, topic="req"), Msg(b"c", b"c", 8, topic="req")]
    kafka.outbox.outage.down = True
    got = [m.offset() for m in kafka.poll(0.0, room=3)]
    assert got == [5, 7] and not kafka.outbox.outage.down
    assert kafka.outbox.tracker.open_count() == 2 and len(kafka.consumer.messages) == 1  # room for 3 records


def test_revoke_finishes_commits_and_forgets_the_partitions(kafka: KafkaIO) -> None:
    kafka._on_assign(None, [TopicPartition("req", 0), TopicPartition("req", 1)])
    kafka.outbox.tracker.track("req", 0, 0)
    kafka.outbox.tracker.track("req", 1, 0)
    kafka.outbox.send(answer(0))
    kafka._on_revoke(None, [TopicPartition("req", 0)])
    assert kafka.owner.calls == ["assignment", "hold", ("drop", {("req", 0)}), "assignment", "release"]
    # Acknowledged while flushing, so committed before the partition goes; nothing left for the sync commit.
    assert kafka.consumer.commits == [([("req", 0, 1), ("req", 1, 0)], True)]
    assert [(p.topic, p.partition) for p in kafka.assigned] == [("req", 1)]
    assert kafka.outbox.tracker.open_count() == 1


def test_lost_partitions_are_forgotten_without_a_commit(kafka: KafkaIO) -> None:
    kafka._on_assign(None, [TopicPartition("req", 0)])
    kafka.outbox.tracker.track("req", 0, 0)
    kafka._on_lost(None, [TopicPartition("req", 0)])
    assert kafka.consumer.commits == [] and kafka.assigned == [] and kafka.outbox.tracker.open_count() == 0


def test_client_config() -> None:
    conf = consumer_config("b:9092", "w1", "g", 10_000, 300_000, {"fetch.min.bytes": 1})
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert conf["group.id"] == "g" and conf["fetch.min.bytes"] == 1
    prod = results_producer_config("b:9092", "w1", 30_000)
    assert prod["enable.idempotence"] is True and prod["acks"] == "all" and prod["message.timeout.ms"] == 30_000
    # results leave a micro-batch at a time: the worker's own short linger, not the hot path's
    assert prod["linger.ms"] == SETTINGS.limits.worker_linger_ms == 1 < SETTINGS.limits.producer_linger_ms


def test_lanes_highest_first_high_even_when_full_and_commits_through_each_lanes_group(outbox):
    io = KafkaIO("req", outbox, Owner(), consumer_config("b:9092", "c", "g", 6_000, 300_000), {}, high_extra=2)
    lanes = {t: FakeConsumer([Msg(t.encode(), None, o, topic=t) for o in range(5)]) for t in ("req.high", "req", "req.low")}
    io.lane_order = list(lanes.items())
    outbox.lane_consumers = dict(lanes)
    io._polled_at = {1: 1e18, 2: 1e18}  # lower lanes polled just now: no keep-alive record
    got = [m.topic() for m in io.poll(0.01, room=6)]
    assert got == ["req.high"] * 5 + ["req"]  # HIGH first (up to room + 2), then NORMAL with what room is left
    lanes["req.high"].messages = [Msg(b"h", None, 9, topic="req.high")]
    assert [m.topic() for m in io.poll(0.01, room=0)] == ["req.high"]  # batcher full: HIGH still comes in
    assert len(lanes["req.low"].messages) == 5  # LOW waits in its own fetch queue
    for topic, offset in (("req.high", 0), ("req", 0)):
        outbox.tracker.done(topic, 0, offset)
    outbox.commit(sync=True)
    assert lanes["req.high"].commits == [([("req.high", 0, 1)], False)]  # each lane's group commits its topic
    assert lanes["req"].commits == [([("req", 0, 1)], False)] and lanes["req.low"].commits == []

    io._polled_at = {}  # a lane starved for over a second takes one record (or its group would evict it)
    assert [m.topic() for m in io.poll(0.01, room=0)] == ["req", "req.low"]


def test_cooperative_assignments_add_up_and_revokes_take_away_only_theirs(kafka: KafkaIO) -> None:
    """Cooperative-sticky rebalancing hands out increments: a second assignment adds to the first."""
    kafka._on_assign(None, [TopicPartition("req", 0)])
    kafka._on_assign(None, [TopicPartition("req", 2), TopicPartition("req", 0)])
    assert sorted((p.topic, p.partition) for p in kafka.assigned) == [("req", 0), ("req", 2)]
    kafka._on_revoke(None, [TopicPartition("req", 2)])
    assert [(p.topic, p.partition) for p in kafka.assigned] == [("req", 0)]
    assert consumer_config("b:9092", "c", "g", 3_000, 300_000)["partition.assignment.strategy"] == "cooperative-sticky"


def test_a_wait_on_high_comes_in_slices_so_a_normal_record_is_taken_after_one_slice_not_the_timeout(outbox):
    """Waiting the whole timeout on HIGH left a NORMAL record in its fetch queue for up to 50 ms (2026-12-05)."""
    class High(FakeConsumer):
        def __init__(self, normal: FakeConsumer) -> None:
            super().__init__()
            self.normal, self.waits, self.arrivals = normal, [], 1

        def poll(self, timeout: float = 0):
            self.waits.append(timeout)
            if self.arrivals:  # a NORMAL record arrives during the first wait
                self.arrivals -= 1
                self.normal.messages.append(Msg(b"n", None, 0, topic="req"))
            time.sleep(timeout)
            return None

    io = KafkaIO("req", outbox, Owner(), consumer_config("b:9092", "c", "g", 6_000, 300_000), {}, high_extra=2)
    normal = FakeConsumer()
    high = High(normal)
    io.lane_order = [("req.high", high), ("req", normal), ("req.low", FakeConsumer())]
    io._polled_at = {0: 1e18, 1: 1e18, 2: 1e18}
    assert [m.topic() for m in io.poll(0.05, room=8)] == ["req"]
    assert high.waits == [io.wait_min_s], "one short slice on HIGH, then the sweep found NORMAL's record"
    high.waits.clear()
    assert list(io.poll(0.05, room=8)) == [] and sum(high.waits) <= 0.05 + 1e-9
    assert high.waits[:4] == [0.002, 0.004, 0.008, 0.016] and len(high.waits) <= 5, "doubling up to the timeout"
    high.waits.clear()
    assert list(io.poll(0.05, room=8)) == [] and high.waits[0] == pytest.approx(0.05, abs=0.005), \
        "idle: sweeps every timeout, as before"
