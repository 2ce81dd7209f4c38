"""The inference worker process: consume requests, micro-batch, generate, store artifacts, answer.

One replica holds the steps together: ``intake.py`` (a record becomes a request),
``batching.py`` (which requests run together), ``inference.py`` (a batch through the handler),
``results.py`` (the result records), ``artifacts.py`` (S3), ``kafka_io.py`` (clients,
rebalances, the outbox and its commits). This module is the lifecycle and the two threads.

Long generations vs ``max.poll.interval.ms``: the batch runs in an inference thread
while the main thread keeps polling, settling acks and committing. Backpressure is
by *not polling* while the batcher already holds ``max_buffered`` requests (records
wait in librdkafka's bounded fetch queue); the inference thread frees room the moment
it takes its next batch, so the longest gap between polls is one batch time, and
``max.poll.interval.ms`` (default 300 s, ``WorkerSettings.max_poll_interval_ms``) only
has to exceed the slowest expected batch. We measured pause()/resume() first: each
resume cost librdkafka a 0.4-0.9 s refetch, and the echo benchmark fell from 0.91 to
0.2-0.3 of offline throughput, so pausing was dropped.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from inference_workers import standby
from inference_workers.answered import DEFAULT_CAPACITY, AnsweredCache, cacheable
from inference_workers.artifacts import ArtifactStore
from inference_workers.batching import DEADLINE_EXCEEDED, Batch, MicroBatcher, OffsetTracker, Pending, to_epoch_ms
from inference_workers.handlers.base import InferenceOutput, ModelHandler
from inference_workers.inference import BatchRun, run_batch
from inference_workers.intake import Intake
from inference_workers.kafka_io import (
    KafkaIO,
    KafkaOutage,
    Outbox,
    Outgoing,
    consumer_config,
    results_producer_config,
)
from inference_workers.metrics import (
    HealthServer,
    WorkerMetrics,
    metrics_port,
    register_scrape_target,
    unregister_scrape_target,
)
from inference_workers.results import ResultBuilder, error_code, fit_to_kafka, result_key
from rscf.clock import now_ms
from rscf.kafka_clients import ADMIN, worker_principal
from rscf.settings import SETTINGS

log = logging.getLogger(__name__)


@dataclass
class WorkerSettings:
    """Per-process knobs; the topic/group overrides let tests and benchmarks run isolated workers."""

    max_batch: int = SETTINGS.limits.worker_max_batch
    max_wait_ms: float = SETTINGS.limits.worker_max_wait_ms
    replica: int = 0
    requests_topic: str | None = None
    results_topic: str | None = None
    dlq_topic: str | None = None
    group_id: str | None = None
    bootstrap: str = SETTINGS.kafka_bootstrap
    artifact_bucket: str = SETTINGS.buckets.artifacts
    metrics_port: int | None = None  # None: metrics_port(pool, replica); 0: any free port; <0: no server
    max_buffered: int | None = None  # stop polling above this many queued requests (default 4*max_batch)
    poll_timeout_s: float = 0.05
    s3_retry_max_s: float = 300.0
    registry_retry_max_s: float = 60.0  # well under max.poll.interval.ms: decoding blocks the poll loop
    producer_timeout_ms: int = 30_000
    session_timeout_ms: int = SETTINGS.limits.worker_session_timeout_ms
    max_poll_interval_ms: int = 300_000
    announce: bool = False  # write a Prometheus file_sd target while the health server runs
    answered_cache: int = DEFAULT_CAPACITY  # results kept to answer re-delivered requests (0: off)
    consumer_extra: dict[str, Any] = field(default_factory=dict)
    lanes: bool = True  # read the pool's HIGH/NORMAL/LOW lane topics (kafka_io.py), not only the base topic
    standby: bool = False  # parked: load the model, then wait for SIGUSR1 before joining the group (standby.py)


class Worker:
    """One replica of a pool: a Kafka consumer in group ``rscf-workers-<pool>`` serving one handler."""

    def __init__(
        self,
        pool: str,
        handler: ModelHandler,
        settings: WorkerSettings | None = None,
        *,
        request_serde: Any = None,
        result_serde: Any = None,
        dlq_serde: Any = None,
    ) -> None:
        self.pool = pool
        self.handler = handler
        self.s = settings or WorkerSettings()
        self.requests_topic = self.s.requests_topic or SETTINGS.topics.requests(pool)
        self.results_topic = self.s.results_topic or SETTINGS.topics.results
        self.dlq_topic = self.s.dlq_topic or SETTINGS.topics.dlq
        self.group_id = self.s.group_id or f"rscf-workers-{pool}"
        # The pool's own principal (reads only its requests); an isolated run (tests, benchmarks: their own
        # group and topics) is the operator's.
        self.kafka_principal = worker_principal(pool) if self.s.group_id is None else ADMIN
        self.worker_id = f"{pool}-{self.s.replica}-{socket.gethostname()}-{os.getpid()}"
        self.max_buffered = self.s.max_buffered or max(4 * self.s.max_batch, 16)
        self.batch_s = 0.0  # a batch's recent wall time with its answers (moving average): see `_poll_wait_s`
        # Serdes follow the record type, not the topic name, so overridden topics decode the same way.
        if request_serde is None or result_serde is None or dlq_serde is None:
            from schemas.serde import serde_for

            request_serde = request_serde or serde_for(SETTINGS.topics.requests(pool))
            result_serde = result_serde or serde_for(SETTINGS.topics.results)
            dlq_serde = dlq_serde or serde_for(SETTINGS.topics.dlq)
        self.request_serde, self.result_serde, self.dlq_serde = request_serde, result_serde, dlq_serde

        self.metrics = WorkerMetrics(pool, self.worker_id)
        self.results = ResultBuilder(pool, self.worker_id, handler)
        self.answered_cache = AnsweredCache(self.s.answered_cache)
        self.batcher = MicroBatcher(self.s.max_batch, self.s.max_wait_ms, batch_key=handler.batch_key)
        self.outbox = Outbox(OffsetTracker(), self.metrics, self.results_topic, KafkaOutage(self.metrics))
        self.kafka = KafkaIO(
            self.requests_topic, self.outbox, self,
            consumer_config(self.s.bootstrap, self.worker_id, self.group_id, self.s.session_timeout_ms,
                            self.s.max_poll_interval_ms, self.s.consumer_extra, principal=self.kafka_principal),
            results_producer_config(self.s.bootstrap, self.worker_id, self.s.producer_timeout_ms, self.kafka_principal),
            lanes=self.s.lanes, high_extra=2 * self.s.max_batch,
        )
        self.intake = Intake(self.request_serde, self.dlq_serde, self.dlq_topic, self.results, self.metrics,
                             self.s.registry_retry_max_s, answer=self._answer, send=self.outbox.send)
        self._stop = threading.Event()
        self._activate = threading.Event()  # a parked replica joins its group when this is set
        self._model: Any = None
        self._model_loaded = False
        # The batcher is shared with the inference thread, guarded by _cv.
        self._cv = threading.Condition()
        self._hold = False  # inference thread must not start new batches (rebalance, shutdown)
        self._busy = False  # inference thread is running a batch
        self._halt = False  # inference thread exits
        self._thread: threading.Thread | None = None
        self._store: ArtifactStore | None = None
        self._health: HealthServer | None = None
        self.first_ingest_at: float | None = None  # monotonic; saturated throughput = answered / span

    @property
    def answered(self) -> int:
        """Results acknowledged by the broker (benchmarks read it)."""
        return self.outbox.answered

    @property
    def last_answer_at(self) -> float | None:
        return self.outbox.last_answer_at

    # ----------------------------------------------------------------- lifecycle
    def ready(self) -> bool:
        return self._model_loaded and bool(self.kafka.assigned)

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, answer, commit and leave the group."""
        self._stop.set()
        self._activate.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        signal.signal(standby.ACTIVATE_SIGNAL, lambda *_: self._activate.set())

    def start_health_server(self) -> int | None:
        port = self.s.metrics_port if self.s.metrics_port is not None else metrics_port(self.pool, self.s.replica)
        if port < 0:
            return None
        try:
            self._health = HealthServer(self.metrics, self.ready, port, SETTINGS.host).start()
        except OSError as exc:
            # A taken port must not keep a replica from serving: take any port, say which.
            log.warning("metrics port %s unavailable (%s); using an ephemeral port", port, exc)
            self._health = HealthServer(self.metrics, self.ready, 0, SETTINGS.host).start()
        if self.s.announce:
            register_scrape_target(self._target_name, self._health.port,
                                   {"pool": self.pool, "replica": str(self.s.replica)})
        return self._health.port

    def load(self, model: Any = None) -> None:
        """Load the model once (or adopt one already loaded, as the benchmark does)."""
        if model is not None:
            self._model, self._model_loaded = model, True
        elif not self._model_loaded:
            self._model = self.handler.load_model()
            self._model_loaded = True

    def run(self) -> None:
        """Serve until stop(); always leaves the group cleanly."""
        self._store = ArtifactStore(self.s.artifact_bucket, self.metrics, self.s.s3_retry_max_s)
        self.load()
        if self.s.standby and not standby.wait_for_activation(self._activate, self._stop, self.worker_id, log):
            return
        self.kafka.connect()
        log.info("worker %s consuming %s as %s", self.worker_id, self.requests_topic, self.group_id)
        self._thread = threading.Thread(target=self._inference_loop, name=f"infer-{self.pool}", daemon=True)
        self._thread.start()
        try:
            while not self._stop.is_set():
                self._step()
            # SIGTERM: the batch in hand is finished and answered; queued requests stay uncommitted
            # and go to the next owner of their partition.
            self.hold_inference()
            self.outbox.flush()
            self.outbox.commit(sync=True)
        finally:
            with self._cv:
                self._halt = True
                self._cv.notify_all()
            self.kafka.close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self.metrics.ready.labels(self.pool).set(0)

    def close(self) -> None:
        if self._health is not None:
            if self.s.announce:
                unregister_scrape_target(self._target_name)
            self._health.stop()

    @property
    def _target_name(self) -> str:
        return f"worker-{self.pool}-{self.s.replica}"

    # ----------------------------------------------------------------- main thread
    def _step(self) -> None:
        """Main thread: feed the batcher while it has room, settle acks and commits."""
        room = self.max_buffered - len(self.batcher)
        if room > 0 or self.kafka.lanes_active:  # the HIGH lane is read even while the batcher is full
            for msg in self.kafka.poll(self._poll_wait_s(room), room):
                self._ingest(msg)
        else:
            # Backpressure: leave the records in librdkafka's fetch queue (bounded by
            # queued.max.messages.kbytes) until the inference thread takes the next batch.
            with self._cv:
                self._cv.wait(timeout=self.s.poll_timeout_s)
        self._answer_expired()
        self.outbox.settle()
        self.metrics.buffered.labels(self.pool).set(len(self.batcher))

    def _poll_wait_s(self, room: int) -> float:
        """Full, room comes back as the inference thread takes its next batch: look again within half a batch.
        A whole poll timeout (50 ms) each time held the bench's echo worker to ~650/s, both threads idle."""
        return self.s.poll_timeout_s if room > 0 else min(self.s.poll_timeout_s, max(0.0005, self.batch_s / 2))

    def _ingest(self, msg) -> None:
        """A polled record into the batcher, or answered at once when it cannot wait there."""
        if self.first_ingest_at is None:
            self.first_ingest_at = time.monotonic()
        meta = (msg.topic(), msg.partition(), msg.offset())
        request = self.intake.decode(msg)
        if request is None:
            return
        cached = self.answered_cache.get(request)
        if cached is not None:  # re-delivered (the job re-dispatched after a restore): same answer, no model
            self.metrics.duplicates.labels(self.pool).inc()
            self.outbox.send(Outgoing(key=result_key(request), value=cached, topic=self.results_topic,
                                      offsets=[meta]))
            return
        try:
            with self._cv:
                self.batcher.add(request, meta=meta)
                self._cv.notify_all()
        except Exception as exc:  # noqa: BLE001 - a request that breaks batch_key is its own fault
            self._answer(request, meta, self.results.error(request, f"rejected: {exc}", retryable=False))
        self.metrics.buffered.labels(self.pool).set(len(self.batcher))

    def _answer_expired(self) -> None:
        with self._cv:
            expired = self.batcher.pop_expired()
        for p in expired:
            self._answer(p.request, p.meta, self.results.error(p.request, DEADLINE_EXCEEDED, retryable=False))

    def _answer(self, request: dict, meta: tuple[str, int, int], result: dict) -> None:
        """Count, encode and send one result; its request is done once the broker acknowledges it."""
        result["completed_at"] = now_ms()
        status = result["status"]
        self.metrics.requests.labels(self.pool, status).inc()
        if status != "OK":
            self.metrics.errors.labels(self.pool, error_code(result.get("error"))).inc()
        try:
            result, value = fit_to_kafka(result, self.result_serde.encode, self._store_text(request))
        except Exception as exc:  # noqa: BLE001 - e.g. a handler put a non-string in output_text
            result = self.results.error(request, f"serialize_failed: {exc}"[:1000], retryable=False)
            self.metrics.errors.labels(self.pool, "serialize_failed").inc()
            value = self.result_serde.encode(result)
        else:
            if cacheable(result):
                self.answered_cache.put(request, value)
        self.outbox.send(Outgoing(key=result_key(result), value=value, topic=self.results_topic, offsets=[meta]))

    def _store_text(self, request: dict):
        """Where a text too large for Kafka goes: an artifact of its request (None before `run`)."""
        store = self._store
        if store is None:
            return None
        return lambda data: store.put_artifact(self.pool, request, data, "text/plain")

    # ----------------------------------------------------------------- rebalance (kafka_io.PartitionOwner)
    def hold_inference(self) -> None:
        """Stop taking new batches and wait for the batch in hand to be answered."""
        with self._cv:
            self._hold = True
            self._cv.notify_all()
            while self._busy:
                self._cv.wait(timeout=0.5)

    def release_inference(self) -> None:
        with self._cv:
            self._hold = False
            self._cv.notify_all()

    def drop_requests(self, partitions: set[tuple[str, int]]) -> None:
        with self._cv:
            self.batcher.remove_where(lambda p: (p.meta[0], p.meta[1]) in partitions)

    def assignment_changed(self) -> None:
        self.metrics.ready.labels(self.pool).set(1 if self.ready() else 0)

    # ----------------------------------------------------------------- inference thread
    def _inference_loop(self) -> None:
        """Inference thread: take the next due batch, run it, hand its results to the producer.

        Results are produced from here, right after the model returns, so no poll interval sits
        between a batch and its answers; acks and commits are settled by the main thread.
        """
        while True:
            with self._cv:
                while True:
                    if self._halt:
                        return
                    if not self._hold:
                        batch = self.batcher.next_batch()
                        if batch is not None:
                            self._busy = True
                            self._cv.notify_all()  # the main thread may poll again: there is room
                            break
                        wait = self.batcher.time_until_ready()
                        self._cv.wait(timeout=0.5 if wait is None else max(wait, 0.0005))
                    else:
                        self._cv.wait(timeout=0.5)
            started = time.monotonic()
            try:
                for pending, result in self._run_batch(batch):
                    self._answer(pending.request, pending.meta, result)
            except Exception:  # noqa: BLE001 - _run_batch answers everything; this is a last resort
                log.exception("batch handling failed; its requests stay uncommitted and will be redelivered")
            finally:
                with self._cv:
                    self._busy = False
                    self.batch_s = 0.8 * self.batch_s + 0.2 * (time.monotonic() - started)
                    self._cv.notify_all()

    def _run_batch(self, batch: Batch) -> list[tuple[Pending, dict]]:
        """Runs in the inference thread; returns one result per request, whatever happens."""
        run = run_batch(batch, self.handler, self._model, self.results,
                        store_artifact=self._store_artifact, on_start=self._batch_started)
        self._batch_done(run)
        return run.answers

    def _store_artifact(self, request: dict, output: InferenceOutput) -> str:
        assert self._store is not None
        return self._store.put_artifact(self.pool, request, output.artifact, output.content_type)

    def _batch_started(self, batch: Batch, started: int) -> None:
        self.metrics.batch_size.labels(self.pool).observe(len(batch))
        for p in batch.items:
            created = to_epoch_ms(p.request.get("created_at"))
            if created:
                self.metrics.queue_ms.labels(self.pool).observe(max(0, started - created))

    def _batch_done(self, run: BatchRun) -> None:
        self.metrics.inference_ms.labels(self.pool).observe(run.inference_ms)
        self.metrics.model_calls.labels(self.pool).inc(run.model_requests)
        seconds = max(run.inference_ms / 1000.0, 1e-6)
        for unit, amount in run.units.items():
            self.metrics.units.labels(self.pool, unit).inc(amount)
            self.metrics.units_per_s.labels(self.pool, unit).set(amount / seconds)


def serve(pool: str, handler: ModelHandler, settings: WorkerSettings) -> None:
    """Run one replica until SIGTERM/SIGINT: the process body of `rscf worker run` (and of test workers)."""
    worker = Worker(pool, handler, settings)
    worker.install_signal_handlers()
    port = worker.start_health_server()
    logging.getLogger("rscf.worker").info("worker %s: %s, health/metrics on %s", worker.worker_id, handler.describe(), port)
    try:
        worker.run()
    finally:
        worker.close()
