"""The worker's Kafka side: polling, rebalances, and the outbox that sends answers and commits only
what the broker acknowledged (client configuration: `inference_workers.kafka_config`).

Priority lanes: a pool's requests come on one topic per priority (rscf/settings.py Topics.lane),
each read by its own consumer in its own group (the lane's suffix on the pool's group), so each lane
has its own fetch queue: a NORMAL/LOW backlog never sits in front of a HIGH record, in Kafka or in
librdkafka. Each poll takes HIGH first, then NORMAL, then LOW; HIGH is taken even while the batcher
is full (up to `high_extra` more), so a burst of lower lanes delays a HIGH request by one batch at most.

Delivery: at-least-once. Offsets are committed by hand, and only up to the first
request whose result the broker has not yet acknowledged (idempotent producer,
acks=all). A crash anywhere means redelivery, never loss; Flink drops duplicate
results by request_id.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from inference_workers.batching import OffsetTracker
from inference_workers.kafka_config import KafkaOutage, consumer_config, results_producer_config  # noqa: F401 - re-exported
from inference_workers.lanes import ensure_lane_topics
from inference_workers.metrics import WorkerMetrics
from rscf.clock import backoff, backoff_delays
from rscf.kafka_clients import ADMIN

log = logging.getLogger(__name__)

# Commit failures worth retrying: the broker or the group coordinator is away for a moment.
_RETRIABLE_COMMIT = (
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
)


# ----------------------------------------------------------------------------- outbox
@dataclass
class Outgoing:
    """A record (result or dead letter) waiting for broker acknowledgement, with the offsets it answers."""

    key: bytes
    value: bytes
    topic: str
    offsets: list[tuple[str, int, int]]
    sent: bool = False
    delivered: bool = False
    error: Any = None
    failures: int = 0
    retry_at: float = 0.0


class Outbox:
    """Answers from send to broker acknowledgement, and the commits they allow.

    A request's offset is done in the offset tracker only once its answer is acknowledged;
    commits go up to the first offset still open. ``send`` is called from both threads,
    ``settle``, ``flush`` and ``commit`` from the main (polling) thread only.
    """

    def __init__(self, tracker: OffsetTracker, metrics: WorkerMetrics, results_topic: str, outage: KafkaOutage) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self.results_topic = results_topic
        self.outage = outage
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None  # commits go through the consumer
        self.lane_consumers: dict[str, Consumer] = {}  # topic -> its lane's consumer (its group commits it)
        self._lock = threading.Lock()
        self._records: list[Outgoing] = []
        self.answered = 0  # results acknowledged by the broker (benchmarks read it)
        self.last_answer_at: float | None = None  # monotonic

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def records(self) -> list[Outgoing]:
        """What is waiting for acknowledgement, oldest first."""
        with self._lock:
            return list(self._records)

    def send(self, out: Outgoing) -> None:
        """Queue an answer and hand it to the producer at once (when connected)."""
        connected = self.producer is not None
        with self._lock:
            out.sent = connected  # claimed here, so settle never sends it a second time
            self._records.append(out)
        if connected:
            self._produce(out)
            self.producer.poll(0)

    def settle(self) -> None:
        """Serve delivery callbacks, retire acknowledged answers in order, re-send failed ones, commit."""
        if self.producer is None:
            return
        self.producer.poll(0)
        now = time.monotonic()
        retired: list[Outgoing] = []
        with self._lock:
            keep = []
            for out in self._records:
                if out.delivered:
                    retired.append(out)
                    continue
                keep.append(out)
                if out.error is not None and now >= out.retry_at:
                    if self.outage.found_down():
                        log.warning("result not acknowledged (%s); re-sending with backoff", out.error)
                    out.error, out.sent = None, False
                    out.retry_at = now + backoff(min(out.failures, 5) + 1, 0.2, 5.0)
            self._records = keep
            unsent = [o for o in keep if not o.sent and o.error is None and now >= o.retry_at]
        for out in unsent:
            self._produce(out)
        if not retired:
            return
        self.outage.found_up()
        for out in retired:
            for topic, partition, offset in out.offsets:
                self.tracker.done(topic, partition, offset)
            if out.topic == self.results_topic:
                self.answered += 1
        self.last_answer_at = time.monotonic()
        self.commit()

    def flush(self) -> None:
        """Block until every queued answer is acknowledged (re-sending failures); for revoke/shutdown."""
        assert self.producer is not None
        while True:
            self.settle()
            with self._lock:
                if not self._records:
                    return
            self.producer.flush(1.0)
            time.sleep(0.01)

    def _produce(self, out: Outgoing) -> None:
        assert self.producer is not None

        def on_delivery(err, _msg, out=out) -> None:
            if err is None:
                out.delivered = True
            else:
                out.failures += 1
                out.error = err

        out.sent = True
        for delay in backoff_delays(0.05, 1.0):
            try:
                self.producer.produce(out.topic, key=out.key or None, value=out.value, on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(delay)

    def commit(self, sync: bool = False) -> None:
        """Commit what the broker has acknowledged. Asynchronous in steady state (a lost async
        commit is superseded by the next one, or means redelivery: never loss); synchronous
        when leaving partitions, so the next owner starts exactly after our answers."""
        assert self.consumer is not None
        offsets = self.tracker.committable()
        if not offsets:
            return
        by_consumer: dict[int, tuple[Consumer, dict]] = {}
        for (t, p), o in offsets.items():
            consumer = self.lane_consumers.get(t, self.consumer)
            by_consumer.setdefault(id(consumer), (consumer, {}))[1][(t, p)] = o
        for consumer, part in by_consumer.values():
            self._commit(consumer, part, sync)

    def _commit(self, consumer: Consumer, offsets: dict, sync: bool) -> None:
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        for attempt, delay in enumerate(backoff_delays()):
            try:
                consumer.commit(offsets=tps, asynchronous=not sync)
                self.tracker.mark_committed(offsets)
                self.metrics.commits.labels(self.metrics.pool).inc()
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                code = err.code() if isinstance(err, KafkaError) else None
                if code not in _RETRIABLE_COMMIT or attempt >= 8:
                    # Lost the partitions (rebalance) or gave up: the next owner redoes the work,
                    # duplicates are dropped downstream. Never lose, never crash.
                    log.warning("commit failed (%s); work will be redelivered", exc)
                    return
                self.outage.found_down()
                time.sleep(delay)

    @staticmethod
    def on_commit(err, partitions) -> None:
        """The consumer's ``on_commit``: an async commit that failed is covered by the next one."""
        if err is not None:
            log.warning("async commit failed (%s); the next commit or a redelivery covers it", err)


# ----------------------------------------------------------------------------- consumer side
class PartitionOwner(Protocol):
    """What a rebalance asks of the worker holding the partitions' requests."""

    def hold_inference(self) -> None:
        """Take no new batch; return once the batch in hand is answered."""

    def release_inference(self) -> None:
        """Take batches again."""

    def drop_requests(self, partitions: set[tuple[str, int]]) -> None:
        """Forget queued requests of these (topic, partition)s: their next owner redoes them."""

    def assignment_changed(self) -> None:
        """Partitions were assigned or taken away (readiness may have changed)."""


class KafkaIO:
    """The worker's two Kafka clients: requests in (poll, rebalances), answers out (the outbox)."""

    def __init__(self, topic: str, outbox: Outbox, owner: PartitionOwner,
                 consumer_conf: dict[str, Any], producer_conf: dict[str, Any], lanes: bool = True,
                 high_extra: int = 16) -> None:
        self.topic = topic
        self.outbox = outbox
        self.owner = owner
        self.consumer_conf = consumer_conf
        self.producer_conf = producer_conf
        self.consumer: Consumer | None = None  # the NORMAL lane (the pool's original topic and group)
        self.producer: Producer | None = None
        self.assigned: list[TopicPartition] = []
        self.lanes = lanes
        self.high_extra = high_extra
        self.lane_order: list[tuple[str, Consumer]] = []  # (topic, consumer), highest priority first
        self._polled_at: dict[int, float] = {}
        # A lane not read for max.poll.interval.ms is evicted, and one not read during a rebalance holds
        # up its group (a new replica waits): a starved lane takes one record each second.
        self.keepalive_s = 1.0
        self.wait_min_s = 0.002  # the first slice of a wait on HIGH between sweeps (`_poll_lanes`)
        self._slice_s = self.wait_min_s

    def connect(self) -> None:
        """Create the clients and subscribe each lane; the outbox sends and commits through them."""
        from rscf.settings import SETTINGS

        error_cb = self.outbox.outage.on_error
        self.producer = Producer({**self.producer_conf, "error_cb": error_cb})
        topics = SETTINGS.topics.lanes(self.topic) if self.lanes else (self.topic,)
        group = self.consumer_conf["group.id"]
        groups = SETTINGS.topics.lanes(group) if self.lanes else (group,)
        if self.lanes:
            ensure_lane_topics(self.consumer_conf["bootstrap.servers"], self.topic, topics,
                               self.consumer_conf.get("sasl.username", ADMIN))
        for topic, lane_group in zip(topics, groups):
            consumer = Consumer({**self.consumer_conf, "group.id": lane_group, "error_cb": error_cb,
                                 "on_commit": self.outbox.on_commit})
            consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
            self.lane_order.append((topic, consumer))
            self.outbox.lane_consumers[topic] = consumer
            if topic == self.topic:
                self.consumer = consumer
        self.outbox.consumer, self.outbox.producer = self.consumer, self.producer

    def poll(self, timeout: float, room: int) -> Iterator[Any]:
        """Up to ``room`` request records (HIGH: ``room + high_extra``), highest lane first, each
        tracked as open until its answer is acknowledged.

        Back-pressure is the caller not polling while its batcher is full: records wait in
        librdkafka's bounded fetch queue (see worker.py for why not pause()/resume())."""
        if self.lanes_active:
            msgs = self._poll_lanes(timeout, room)
        else:
            assert self.consumer is not None
            if room <= 0:
                return
            msg = self.consumer.poll(timeout)
            if msg is None:
                return
            msgs = [msg]
            if room > 1:
                msgs.extend(self.consumer.consume(num_messages=room - 1, timeout=0))
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            self.outbox.outage.found_up()
            self.outbox.tracker.track(m.topic(), m.partition(), m.offset())
            yield m

    @property
    def lanes_active(self) -> bool:
        return len(self.lane_order) > 1

    def _poll_lanes(self, timeout: float, room: int) -> list[Any]:
        """Sweeps over the lanes without waiting; between them, wait on HIGH (its record ends the wait at once)
        for a slice of 2 ms doubling up to ``timeout``. Waiting the whole timeout left a NORMAL record in its
        fetch queue up to 50 ms (confluent-kafka cannot wait on three queues); an idle worker still sweeps
        every ``timeout``. Full even for HIGH: sweep (keep-alives), then wait for the inference thread."""
        deadline = time.monotonic() + timeout
        while not (msgs := self._sweep(room)):
            wait = min(self._slice_s, deadline - time.monotonic())
            if wait <= 0:
                return []
            if room + self.high_extra <= 0:
                time.sleep(deadline - time.monotonic())  # do not spin
                return []
            self._slice_s = min(2 * self._slice_s, timeout)
            msg = self.lane_order[0][1].poll(wait)
            self._polled_at[0] = time.monotonic()
            if msg is not None:
                msgs = [msg]
                break
        self._slice_s = self.wait_min_s
        return msgs

    def _sweep(self, room: int) -> list[Any]:
        """What the lanes hold now, highest first: HIGH up to ``room + high_extra``, the others what room is left."""
        msgs: list[Any] = []
        for i, (_topic, consumer) in enumerate(self.lane_order):
            limit = room + self.high_extra if i == 0 else room - len(msgs)
            if limit <= 0 and time.monotonic() - self._polled_at.get(i, 0.0) > self.keepalive_s:
                limit = 1  # a starved lane takes one record now and then, or max.poll.interval.ms evicts it
            if limit > 0:
                msgs.extend(consumer.consume(num_messages=limit, timeout=0))
                self._polled_at[i] = time.monotonic()
        return msgs

    def close(self) -> None:
        """Leave the groups now (rather than after session.timeout.ms) and flush what is in flight."""
        for _topic, consumer in self.lane_order or [(self.topic, self.consumer)]:
            try:
                if consumer is not None:
                    consumer.close()
            except Exception:  # noqa: BLE001
                log.exception("consumer close failed")
        if self.producer is not None:
            self.producer.flush(5)

    # ------------------------------------------------------------------------- rebalance
    def _on_assign(self, consumer, partitions) -> None:
        new = {(p.topic, p.partition) for p in partitions}
        self.assigned = [p for p in self.assigned if (p.topic, p.partition) not in new] + list(partitions)
        self.owner.assignment_changed()
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer, partitions) -> None:
        """Finish and commit what we hold for these partitions, drop the rest (the new owner redoes it)."""
        self.owner.hold_inference()
        try:
            self.outbox.flush()
            self.outbox.commit(sync=True)
            self._forget(partitions)
        finally:
            self.owner.release_inference()

    def _on_lost(self, consumer, partitions) -> None:
        """Partitions lost without a clean revoke: commits would fail, so only drop local state."""
        self.owner.hold_inference()
        try:
            self._forget(partitions)
        finally:
            self.owner.release_inference()

    def _forget(self, partitions) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        self.owner.drop_requests(lost)
        self.outbox.tracker.forget(lost)
        self.assigned = [p for p in self.assigned if (p.topic, p.partition) not in lost]
        self.owner.assignment_changed()

