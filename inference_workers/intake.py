"""Worker intake: a request record from Kafka becomes a request for the batcher.

A record that cannot be decoded is answered at once: with an error result when its Kafka key
names the request (tenant_id, U+001F, request_id, or the request_id alone: the pipeline is
waiting for that answer), else with a dead letter (stage ``decode``; a payload too large for Kafka
is kept in object storage and referenced, `operators.dead_letters.with_claim_check`). The schema registry being down is not the record's fault: decoding waits it out,
bounded by ``registry_retry_max_s``, rather than failing good records.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from inference_workers.kafka_io import Outgoing
from inference_workers.metrics import WorkerMetrics
from inference_workers.results import ResultBuilder
from operators.dead_letters import with_claim_check
from operators.record_size import too_large
from rscf.clock import backoff_delays
from schemas.keys import split_identity_key

#: answer(request, (topic, partition, offset), result): count, encode and send one result.
AnswerFn = Callable[[dict, tuple[str, int, int], dict], None]


def decode_dead_letter(original: bytes, topic: str, partition: int, offset: int, reason: str, error: str) -> dict:
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


_OBJECT_STORE: list[Any] = []


def _object_store():
    """The process's object store for claim checks, built on first use."""
    if not _OBJECT_STORE:
        from rscf.s3 import ObjectStorePayloads
        from rscf.s3_security import WORKER

        _OBJECT_STORE.append(ObjectStorePayloads(identity=WORKER))
    return _OBJECT_STORE[0]


class Intake:
    """Decodes request records; answers or dead-letters the ones that cannot be decoded."""

    def __init__(
        self,
        request_serde: Any,
        dlq_serde: Any,
        dlq_topic: str,
        results: ResultBuilder,
        metrics: WorkerMetrics,
        registry_retry_max_s: float,
        *,
        answer: AnswerFn,
        send: Callable[[Outgoing], None],
        payload_store: Callable[[], Any] | None = None,
    ) -> None:
        self.request_serde = request_serde
        self.dlq_serde = dlq_serde
        self.dlq_topic = dlq_topic
        self.results = results
        self.metrics = metrics
        self.registry_retry_max_s = registry_retry_max_s
        self.answer = answer
        self.send = send
        self.payload_store = payload_store or _object_store  # claim checks of dead letters too large for Kafka

    def decode(self, msg) -> dict | None:
        """The request a record carries, or None when it cannot be decoded (then it is answered here)."""
        try:
            return self._decode(msg.value())
        except Exception as exc:  # noqa: BLE001 - DecodeError or anything else: never crash
            self._undecodable(msg, exc)
            return None

    def _decode(self, value: bytes) -> dict:
        """Decode, waiting out a registry outage (bounded) rather than failing good records."""
        deadline = time.monotonic() + self.registry_retry_max_s
        down = False
        for delay in backoff_delays():
            try:
                return self.request_serde.decode(value)
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "reason", None) != "registry_unavailable" or time.monotonic() + delay > deadline:
                    raise
                if not down:
                    down = True
                    self.metrics.outages.labels(self.metrics.pool, "registry").inc()
                time.sleep(delay)
        raise RuntimeError("unreachable")

    def _undecodable(self, msg, exc: Exception) -> None:
        reason = getattr(exc, "reason", None) or "avro_decode_failed"
        detail = getattr(exc, "detail", None) or str(exc)
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        identity = split_identity_key(msg.key())
        if identity and identity[1]:
            stub = {"request_id": identity[1], "tenant_id": identity[0], "attempt": 0}
            # The registry being down is not the record's fault: let the pipeline retry it.
            retryable = reason == "registry_unavailable"
            result = self.results.error(stub, f"decode_failed: {reason}: {detail}"[:1000], retryable=retryable)
            self.answer(stub, (topic, partition, offset), result)
            return
        self.metrics.errors.labels(self.metrics.pool, "dead_letter").inc()
        record = decode_dead_letter(msg.value() or b"", topic, partition, offset, str(reason), str(detail)[:1000])
        value = self.dlq_serde.encode(record)
        if too_large(b"", value):  # the producer would refuse it, and the poll loop with it
            try:
                store = self.payload_store()
            except Exception:  # noqa: BLE001 - no store: the dead letter says its payload was not kept
                store = None
            value = self.dlq_serde.encode(with_claim_check(record, store))
        self.send(Outgoing(key=b"", value=value, topic=self.dlq_topic, offsets=[(topic, partition, offset)]))
