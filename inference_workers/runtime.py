"""The inference worker process: consume requests, micro-batch, generate, store artifacts, answer.

Delivery: at-least-once. Offsets are committed by hand, and only up to the first
request whose result the broker has not yet acknowledged (idempotent producer,
acks=all). A crash anywhere means redelivery, never loss; Flink drops duplicate
results by request_id.

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

import io
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from inference_workers.batching import (
    DEADLINE_EXCEEDED,
    Batch,
    MicroBatcher,
    OffsetTracker,
    Pending,
    bisect_failures,
    to_epoch_ms,
)
from inference_workers.handlers.base import InferenceOutput, ModelHandler, RequestRejected
from inference_workers.metrics import (
    HealthServer,
    WorkerMetrics,
    metrics_port,
    register_scrape_target,
    unregister_scrape_target,
)
from rscf.settings import SETTINGS

log = logging.getLogger(__name__)

_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/mpeg": "mp3",
    "text/plain": "txt",
    "application/json": "json",
}
# Exceptions that say "this input is bad", as opposed to "the worker or hardware is unwell".
_INPUT_FAULTS = (RequestRejected, ValueError, TypeError, KeyError, IndexError, UnicodeError)


def now_ms() -> int:
    return int(time.time() * 1000)


def artifact_key(pool: str, request_id: str, attempt: int, content_type: str | None, at_ms: int) -> str:
    """``artifacts/<pool>/<yyyy-mm-dd>/<request_id>-<attempt>.<ext>``: one object per attempt, so a
    duplicate run of the same attempt overwrites rather than piles up."""
    day = datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
    ext = _EXTENSIONS.get((content_type or "").split(";")[0].strip().lower(), "bin")
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in request_id)
    return f"artifacts/{pool}/{day}/{safe_id}-{attempt}.{ext}"


def error_code(error: str | None) -> str:
    """Stable reason code of an error string ("rejected: too long" -> "rejected")."""
    return (error or "unknown").split(":", 1)[0].strip() or "unknown"


def backoff_delays(base_s: float = 0.2, cap_s: float = 5.0):
    """0.2, 0.4, 0.8 ... capped: the wait between retries of a dependency that is down."""
    delay = base_s
    while True:
        yield delay
        delay = min(cap_s, delay * 2)


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
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    announce: bool = False  # write a Prometheus file_sd target while the health server runs
    consumer_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outgoing:
    """A result waiting for broker acknowledgement, with the offsets it answers."""

    key: bytes
    value: bytes
    topic: str
    offsets: list[tuple[str, int, int]]
    sent: bool = False
    delivered: bool = False
    error: Any = None
    failures: int = 0
    retry_at: float = 0.0

    def attempts_failed(self) -> int:
        return self.failures


class DelayedHandler(ModelHandler):
    """Wraps a handler and sleeps per batch: lets chaos tests kill a worker mid-batch."""

    def __init__(self, inner: ModelHandler, delay_ms: float) -> None:
        self.inner = inner
        self.delay_s = delay_ms / 1000.0
        self.model_name = inner.model_name
        self.model_version = inner.model_version
        self.modality = inner.modality

    def load_model(self):
        return self.inner.load_model()

    def validate(self, request: dict) -> None:
        self.inner.validate(request)

    def batch_key(self, request: dict):
        return self.inner.batch_key(request)

    def run_inference(self, batch: Sequence[dict], model) -> list[InferenceOutput]:
        time.sleep(self.delay_s)
        return self.inner.run_inference(batch, model)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "delay_ms": self.delay_s * 1000}


def s3_http_client():
    """HTTP pool for the S3 client that fails fast when S3 is down, so ArtifactStore's backoff is
    the only retry loop: the minio default retries a refused connection 5 times (about 6 s)
    inside each call and waits up to 5 minutes on a silent socket, which hid an outage from
    the metrics and stretched every backoff step."""
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
        maxsize=10,
        # connect=0: a refused connection is reported at once; one retry for a stale pooled socket.
        retries=urllib3.Retry(total=1, connect=0, backoff_factor=0.1),
    )


class ArtifactStore:
    """Uploads artifacts to S3 with exponential backoff; counts outages."""

    def __init__(self, bucket: str, metrics: WorkerMetrics, max_retry_s: float, endpoint: str | None = None) -> None:
        from minio import Minio

        self.bucket = bucket
        self.metrics = metrics
        self.max_retry_s = max_retry_s
        self.client = Minio(
            endpoint or SETTINGS.s3_endpoint,
            access_key=SETTINGS.s3.access_key,
            secret_key=SETTINGS.s3.secret_key,
            secure=False,
            http_client=s3_http_client(),
        )
        self._bucket_checked = False

    def _ensure_bucket(self) -> None:
        if not self._bucket_checked:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
            self._bucket_checked = True

    def put(self, key: str, data: bytes, content_type: str | None) -> str:
        """Store and return ``s3://bucket/key``; raises after ``max_retry_s`` of failures."""
        deadline = time.monotonic() + self.max_retry_s
        down = False
        for delay in backoff_delays():
            try:
                self._ensure_bucket()
                self.client.put_object(
                    self.bucket, key, io.BytesIO(data), len(data),
                    content_type=content_type or "application/octet-stream",
                )
                if down:
                    log.info("artifact upload succeeded again after the outage")
                return f"s3://{self.bucket}/{key}"
            except Exception as exc:  # noqa: BLE001 - S3 down, throttled, DNS...: retry
                if not down:
                    down = True
                    self.metrics.outages.labels(self.metrics.pool, "s3").inc()
                    log.warning("artifact upload failed, retrying: %s", exc)
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
        raise RuntimeError("unreachable")


def _default_dead_letter(original: bytes, topic: str, partition: int, offset: int, reason: str, error: str) -> dict:
    """DeadLetter record through the contracts engineer's helper (one shape for all stages)."""
    from operators.dead_letters import dead_letter

    return dead_letter(
        original=original,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        stage="decode",
        reason=reason,
        error=error,
        request_id=None,
    )


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
        self.worker_id = f"{pool}-{self.s.replica}-{socket.gethostname()}-{os.getpid()}"
        self.max_buffered = self.s.max_buffered or max(4 * self.s.max_batch, 16)
        # Serdes follow the record type, not the topic name, so overridden topics decode the same way.
        if request_serde is None or result_serde is None or dlq_serde is None:
            from schemas.serde import serde_for

            request_serde = request_serde or serde_for(SETTINGS.topics.requests(pool))
            result_serde = result_serde or serde_for(SETTINGS.topics.results)
            dlq_serde = dlq_serde or serde_for(SETTINGS.topics.dlq)
        self.request_serde, self.result_serde, self.dlq_serde = request_serde, result_serde, dlq_serde

        self.metrics = WorkerMetrics(pool, self.worker_id)
        self.batcher = MicroBatcher(self.s.max_batch, self.s.max_wait_ms, batch_key=self._safe_batch_key)
        self.tracker = OffsetTracker()
        self._stop = threading.Event()
        self._model: Any = None
        self._model_loaded = False
        self._assigned: list[TopicPartition] = []
        # The batcher and the outbox are shared with the inference thread, guarded by _cv.
        self._cv = threading.Condition()
        self._hold = False  # inference thread must not start new batches (rebalance, shutdown)
        self._busy = False  # inference thread is running a batch
        self._halt = False  # inference thread exits
        self._thread: threading.Thread | None = None
        self._outbox: list[Outgoing] = []
        self._store: ArtifactStore | None = None
        self._health: HealthServer | None = None
        self._kafka_down = False
        self.answered = 0  # results acknowledged by the broker (benchmarks read it)
        self.first_ingest_at: float | None = None  # monotonic; saturated throughput = answered / span
        self.last_answer_at: float | None = None
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None

    # ----------------------------------------------------------------- lifecycle
    def ready(self) -> bool:
        return self._model_loaded and bool(self._assigned)

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, answer, commit and leave the group."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

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

    def _make_clients(self) -> None:
        common = {"bootstrap.servers": self.s.bootstrap, "client.id": self.worker_id, "error_cb": self._on_kafka_error}
        self.consumer = Consumer(
            {
                **common,
                "on_commit": self._on_commit,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": self.s.session_timeout_ms,
                "max.poll.interval.ms": self.s.max_poll_interval_ms,
                **self.s.consumer_extra,
            }
        )
        self.producer = Producer(
            {
                **common,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": SETTINGS.limits.producer_linger_ms,
                "message.timeout.ms": self.s.producer_timeout_ms,
            }
        )

    def _on_commit(self, err, partitions) -> None:
        if err is not None:
            log.warning("async commit failed (%s); the next commit or a redelivery covers it", err)

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) and not self._kafka_down:
            self._kafka_down = True
            self.metrics.outages.labels(self.pool, "kafka").inc()
            log.warning("kafka unreachable: %s (retrying)", err)
        elif err.code() not in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            log.warning("kafka error: %s", err)

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
        self._make_clients()
        assert self.consumer is not None
        self.consumer.subscribe([self.requests_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("worker %s consuming %s as %s", self.worker_id, self.requests_topic, self.group_id)
        self._thread = threading.Thread(target=self._inference_loop, name=f"infer-{self.pool}", daemon=True)
        self._thread.start()
        try:
            while not self._stop.is_set():
                self._step()
            # SIGTERM: the batch in hand is finished and answered; queued requests stay uncommitted
            # and go to the next owner of their partition.
            self._hold_inference()
            self._flush_all()
            self._commit(sync=True)
        finally:
            with self._cv:
                self._halt = True
                self._cv.notify_all()
            try:
                self.consumer.close()  # leaves the group now rather than after session.timeout.ms
            except Exception:  # noqa: BLE001
                log.exception("consumer close failed")
            if self.producer is not None:
                self.producer.flush(5)
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

    # ----------------------------------------------------------------- main loop
    def _step(self) -> None:
        """Main thread: feed the batcher while it has room, settle acks and commits."""
        room = self.max_buffered - len(self.batcher)
        if room > 0:
            self._poll(self.s.poll_timeout_s, room)
        else:
            # Backpressure: leave the records in librdkafka's fetch queue (bounded by
            # queued.max.messages.kbytes) until the inference thread takes the next batch.
            with self._cv:
                self._cv.wait(timeout=self.s.poll_timeout_s)
        self._answer_expired()
        self._settle()
        self.metrics.buffered.labels(self.pool).set(len(self.batcher))

    def _poll(self, timeout: float, room: int) -> None:
        assert self.consumer is not None
        msg = self.consumer.poll(timeout)
        if msg is None:
            return
        msgs = [msg]
        if room > 1:
            msgs.extend(self.consumer.consume(num_messages=room - 1, timeout=0))
        for m in msgs:
            self._ingest(m)

    def _ingest(self, msg) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", err)
            return
        self._kafka_down = False
        if self.first_ingest_at is None:
            self.first_ingest_at = time.monotonic()
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        self.tracker.track(topic, partition, offset)
        meta = (topic, partition, offset)
        try:
            request = self._decode(msg.value())
        except Exception as exc:  # noqa: BLE001 - DecodeError or anything else: never crash
            self._on_undecodable(msg, exc)
            return
        try:
            with self._cv:
                self.batcher.add(request, meta=meta)
                self._cv.notify_all()
        except Exception as exc:  # noqa: BLE001 - a request that breaks batch_key is its own fault
            self._answer(request, meta, self._error_result(request, f"rejected: {exc}", retryable=False))
        self.metrics.buffered.labels(self.pool).set(len(self.batcher))

    def _decode(self, value: bytes) -> dict:
        """Decode, waiting out a registry outage (bounded) rather than failing good records."""
        deadline = time.monotonic() + self.s.registry_retry_max_s
        down = False
        for delay in backoff_delays():
            try:
                return self.request_serde.decode(value)
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "reason", None) != "registry_unavailable" or time.monotonic() + delay > deadline:
                    raise
                if not down:
                    down = True
                    self.metrics.outages.labels(self.pool, "registry").inc()
                time.sleep(delay)
        raise RuntimeError("unreachable")

    def _safe_batch_key(self, request: dict):
        return self.handler.batch_key(request)

    def _on_undecodable(self, msg, exc: Exception) -> None:
        reason = getattr(exc, "reason", None) or "avro_decode_failed"
        detail = getattr(exc, "detail", None) or str(exc)
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        key = msg.key()
        request_id = None
        if key:
            try:
                request_id = key.decode("utf-8") if isinstance(key, bytes) else str(key)
            except UnicodeDecodeError:
                request_id = None
        if request_id:
            stub = {"request_id": request_id, "attempt": 0}
            # The registry being down is not the record's fault: let the pipeline retry it.
            retryable = reason == "registry_unavailable"
            result = self._error_result(stub, f"decode_failed: {reason}: {detail}"[:1000], retryable=retryable)
            self._answer(stub, (topic, partition, offset), result)
            return
        self.metrics.errors.labels(self.pool, "dead_letter").inc()
        record = _default_dead_letter(msg.value() or b"", topic, partition, offset, str(reason), str(detail)[:1000])
        self._send(Outgoing(key=b"", value=self.dlq_serde.encode(record), topic=self.dlq_topic, offsets=[(topic, partition, offset)]))

    def _answer_expired(self) -> None:
        with self._cv:
            expired = self.batcher.pop_expired()
        for p in expired:
            self._answer(p.request, p.meta, self._error_result(p.request, DEADLINE_EXCEEDED, retryable=False))

    # ----------------------------------------------------------------- rebalance
    def _on_assign(self, consumer, partitions) -> None:
        self._assigned = list(partitions)
        self.metrics.ready.labels(self.pool).set(1 if self.ready() else 0)
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer, partitions) -> None:
        """Finish and commit what we hold for these partitions, drop the rest (the new owner redoes it)."""
        self._hold_inference()
        try:
            self._flush_all()
            self._commit(sync=True)
            self._forget(partitions)
        finally:
            self._release_inference()

    def _on_lost(self, consumer, partitions) -> None:
        """Partitions lost without a clean revoke: commits would fail, so only drop local state."""
        self._hold_inference()
        try:
            self._forget(partitions)
        finally:
            self._release_inference()

    def _forget(self, partitions) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        with self._cv:
            self.batcher.remove_where(lambda p: (p.meta[0], p.meta[1]) in lost)
        self.tracker.forget(lost)
        self._assigned = [p for p in self._assigned if (p.topic, p.partition) not in lost]
        self.metrics.ready.labels(self.pool).set(1 if self.ready() else 0)

    # ----------------------------------------------------------------- inference
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
            try:
                for pending, result in self._run_batch(batch):
                    self._answer(pending.request, pending.meta, result)
            except Exception:  # noqa: BLE001 - _run_batch answers everything; this is a last resort
                log.exception("batch handling failed; its requests stay uncommitted and will be redelivered")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _hold_inference(self) -> None:
        """Stop taking new batches and wait for the batch in hand to be answered."""
        with self._cv:
            self._hold = True
            self._cv.notify_all()
            while self._busy:
                self._cv.wait(timeout=0.5)

    def _release_inference(self) -> None:
        with self._cv:
            self._hold = False
            self._cv.notify_all()

    def _run_batch(self, batch: Batch) -> list[tuple[Pending, dict]]:
        """Runs in the inference thread; returns one result per request, whatever happens."""
        started = now_ms()
        answers: list[tuple[Pending, dict]] = []
        runnable: list[Pending] = []
        for p in batch.items:
            if p.deadline_ms is not None and p.deadline_ms <= started:
                # Expired while queued: nobody waits for this answer, don't spend the model on it.
                answers.append((p, self._error_result(p.request, DEADLINE_EXCEEDED, retryable=False)))
                continue
            try:
                self.handler.validate(p.request)
                runnable.append(p)
            except Exception as exc:  # noqa: BLE001 - RequestRejected or a validator bug
                answers.append((p, self._error_result(p.request, f"rejected: {exc}", retryable=False)))
        self.metrics.batch_size.labels(self.pool).observe(len(batch))
        for p in batch.items:
            created = to_epoch_ms(p.request.get("created_at"))
            if created:
                self.metrics.queue_ms.labels(self.pool).observe(max(0, started - created))
        t0 = time.perf_counter()
        outcomes = (
            bisect_failures(runnable, lambda items: self.handler.run_inference([i.request for i in items], self._model))
            if runnable
            else []
        )
        inference_ms = int((time.perf_counter() - t0) * 1000)
        self.metrics.inference_ms.labels(self.pool).observe(inference_ms)
        any_ok = any(exc is None for _, _, exc in outcomes)
        units: dict[str, float] = {}
        for p, output, exc in outcomes:
            if exc is not None:
                # Alone it failed while its batch-mates ran fine, or the input itself is bad: its own fault.
                own_fault = isinstance(exc, _INPUT_FAULTS) or (any_ok and len(runnable) > 1)
                err = f"inference_failed: {type(exc).__name__}: {exc}"[:1000]
                answers.append((p, self._error_result(p.request, err, retryable=not own_fault)))
                continue
            answers.append((p, self._ok_result(p, output, started, inference_ms, len(batch))))
            unit, amount = self._units(output)
            units[unit] = units.get(unit, 0) + amount
        seconds = max(inference_ms / 1000.0, 1e-6)
        for unit, amount in units.items():
            self.metrics.units.labels(self.pool, unit).inc(amount)
            self.metrics.units_per_s.labels(self.pool, unit).set(amount / seconds)
        order = {id(p): i for i, p in enumerate(batch.items)}
        answers.sort(key=lambda a: order[id(a[0])])
        return answers

    @staticmethod
    def _units(output: InferenceOutput) -> tuple[str, float]:
        if output.tokens_out:
            return "tokens", float(output.tokens_out)
        ctype = (output.content_type or "").lower()
        if ctype.startswith("image/"):
            return "images", 1.0
        if ctype.startswith("audio/"):
            return "audio_clips", 1.0
        return "requests", 1.0

    def _ok_result(self, p: Pending, output: InferenceOutput, started: int, inference_ms: int, batch_size: int) -> dict:
        req = p.request
        created = to_epoch_ms(req.get("created_at"))
        result = self._base_result(req)
        result.update(
            queue_ms=max(0, started - created) if created else 0,
            inference_ms=inference_ms,
            batch_size=batch_size,
            output_text=output.text,
            content_type=output.content_type,
            tokens_out=output.tokens_out,
        )
        if output.error:
            result.update(status="ERROR", error=output.error, retryable=bool(output.retryable))
            return result
        if output.artifact is not None:
            key = artifact_key(self.pool, str(req["request_id"]), int(req.get("attempt") or 0), output.content_type, now_ms())
            try:
                assert self._store is not None
                result["artifact_uris"] = [self._store.put(key, output.artifact, output.content_type)]
            except Exception as exc:  # noqa: BLE001 - S3 down for too long: let the pipeline retry
                result.update(status="ERROR", error=f"artifact_upload_failed: {exc}"[:1000], retryable=True)
        return result

    def _base_result(self, req: dict) -> dict:
        return {
            "request_id": str(req.get("request_id")),
            "attempt": int(req.get("attempt") or 0),
            "pool": self.pool,
            "worker_id": self.worker_id,
            "model_name": self.handler.model_name,
            "model_version": self.handler.model_version,
            "status": "OK",
            "output_text": None,
            "artifact_uris": [],
            "content_type": None,
            "error": None,
            "retryable": True,
            "queue_ms": 0,
            "inference_ms": 0,
            "batch_size": 0,
            "tokens_out": None,
            "completed_at": now_ms(),
        }

    def _error_result(self, req: dict, error: str, retryable: bool) -> dict:
        result = self._base_result(req)
        created = to_epoch_ms(req.get("created_at"))
        if created:
            result["queue_ms"] = max(0, now_ms() - created)
        result.update(status="ERROR", error=error, retryable=retryable)
        return result

    # ----------------------------------------------------------------- answering and committing
    def _answer(self, request: dict, meta: tuple[str, int, int], result: dict) -> None:
        result["completed_at"] = now_ms()
        status = result["status"]
        self.metrics.requests.labels(self.pool, status).inc()
        if status != "OK":
            self.metrics.errors.labels(self.pool, error_code(result.get("error"))).inc()
        try:
            value = self.result_serde.encode(result)
        except Exception as exc:  # noqa: BLE001 - e.g. a handler put a non-string in output_text
            fallback = self._error_result(request, f"serialize_failed: {exc}"[:1000], retryable=False)
            self.metrics.errors.labels(self.pool, "serialize_failed").inc()
            value = self.result_serde.encode(fallback)
        key = str(result["request_id"]).encode("utf-8")
        self._send(Outgoing(key=key, value=value, topic=self.results_topic, offsets=[meta]))

    def _send(self, out: Outgoing) -> None:
        """Queue an answer and hand it to the producer at once (when connected)."""
        connected = self.producer is not None
        with self._cv:
            out.sent = connected  # claimed here, so _settle never sends it a second time
            self._outbox.append(out)
        if connected:
            self._produce(out)
            self.producer.poll(0)

    def _settle(self) -> None:
        """Serve delivery callbacks, retire acknowledged answers in order, re-send failed ones, commit."""
        if self.producer is None:
            return
        self.producer.poll(0)
        now = time.monotonic()
        retired: list[Outgoing] = []
        with self._cv:
            keep = []
            for out in self._outbox:
                if out.delivered:
                    retired.append(out)
                    continue
                keep.append(out)
                if out.error is not None and now >= out.retry_at:
                    if not self._kafka_down:
                        self._kafka_down = True
                        self.metrics.outages.labels(self.pool, "kafka").inc()
                        log.warning("result not acknowledged (%s); re-sending with backoff", out.error)
                    out.error, out.sent = None, False
                    out.retry_at = now + min(5.0, 0.2 * 2 ** min(out.attempts_failed(), 5))
            self._outbox = keep
            unsent = [o for o in keep if not o.sent and o.error is None and now >= o.retry_at]
        for out in unsent:
            self._produce(out)
        if not retired:
            return
        self._kafka_down = False
        for out in retired:
            for topic, partition, offset in out.offsets:
                self.tracker.done(topic, partition, offset)
            if out.topic == self.results_topic:
                self.answered += 1
        self.last_answer_at = time.monotonic()
        self._commit()

    def _flush_all(self) -> None:
        """Block until every queued answer is acknowledged (re-sending failures); for revoke/shutdown."""
        assert self.producer is not None
        while True:
            self._settle()
            with self._cv:
                if not self._outbox:
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

    def _commit(self, sync: bool = False) -> None:
        """Commit what the broker has acknowledged. Asynchronous in steady state (a lost async
        commit is superseded by the next one, or means redelivery: never loss); synchronous
        when leaving partitions, so the next owner starts exactly after our answers."""
        assert self.consumer is not None
        offsets = self.tracker.committable()
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        for attempt, delay in enumerate(backoff_delays()):
            try:
                self.consumer.commit(offsets=tps, asynchronous=not sync)
                self.tracker.mark_committed(offsets)
                self.metrics.commits.labels(self.pool).inc()
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                code = err.code() if isinstance(err, KafkaError) else None
                retriable = code in (
                    KafkaError._TRANSPORT,
                    KafkaError._ALL_BROKERS_DOWN,
                    KafkaError._TIMED_OUT,
                    KafkaError.COORDINATOR_NOT_AVAILABLE,
                    KafkaError.NOT_COORDINATOR,
                    KafkaError.REQUEST_TIMED_OUT,
                    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                )
                if not retriable or attempt >= 8:
                    # Lost the partitions (rebalance) or gave up: the next owner redoes the work,
                    # duplicates are dropped downstream. Never lose, never crash.
                    log.warning("commit failed (%s); work will be redelivered", exc)
                    return
                if not self._kafka_down:
                    self._kafka_down = True
                    self.metrics.outages.labels(self.pool, "kafka").inc()
                time.sleep(delay)
