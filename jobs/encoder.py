"""The job's output rows: records -> Row(topic, key, value, headers) for the Kafka sinks, never one they cannot write.

Every value is Confluent-framed Avro (`schemas.serde`). Whatever the record, the row
that leaves fits the sink's producer (`SETTINGS.limits.max_record_bytes`, below its
max.request.size): one oversize dead letter failed the sink and put the job in a restart
loop (issue #13: 19 restarts in 40 s). So:
- a dead letter too large keeps its payload in object storage and a preview inline
  (claim check, `operators.dead_letters.with_claim_check`; object storage down: the preview
  goes out and `payload_status` says the payload was not kept),
- a final or audit record too large has its longest strings cut and `record_truncated`
  added to its reason (`operators.record_size`),
- a record that cannot be encoded, or any other record too large (an inference request, a
  record to republish), becomes a dead letter (stage `serialize`),
- a dead letter that cannot be encoded becomes a minimal one with a preview of its payload.

Headers carry a final's identity across a replay (`jobs.replay_filter`); whatever row a record
becomes (itself, cut, or a dead letter in its place) carries the record's identity.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from pyflink.common import Row

from jobs.config import JobConfig
from jobs.envelopes import Republish, SinkRecord
from jobs.metrics import Counters
from jobs.replay_filter import headers_of, identity
from operators.dead_letters import PREVIEW_BYTES, PayloadStore, dead_letter, with_claim_check
from operators.record_size import RecordTooLarge, max_record_bytes, too_large, truncate_to_fit, with_reason
from rscf.pools import ECHO

log = logging.getLogger(__name__)

ENCODE_ERRORS = (ValueError, TypeError, KeyError, OverflowError, AttributeError)  # a record breaking its schema


class Encoder:
    """Records -> Row(topic, key, value, headers) in the Confluent wire format; what cannot go as is -> see the
    module. The private steps yield (topic, key, value); `encode` and `rows` make them Rows."""

    def __init__(self, cfg: JobConfig, counters: Counters, serde_for: Callable[[JobConfig, str, str], Any],
                 payload_store: Callable[[], PayloadStore | None] = lambda: None, limit: int | None = None):
        self.cfg = cfg
        self.counters = counters
        self.serde_for = serde_for
        self.payload_store = payload_store  # called only when a dead letter needs a claim check
        self.limit = limit if limit is not None else max_record_bytes()
        self.serdes: dict[str, Any] = {}
        self.topics = {"content": cfg.content, "audit": cfg.audit, "dlq": cfg.dlq}

    def rows(self, rec: SinkRecord | Republish):
        if isinstance(rec, Republish):
            topic = self.cfg.prompts if rec.role == "prompt" else self.cfg.results
            key = rec.key.encode("utf-8")
            if too_large(key, rec.data, self.limit):  # readable here, but the sink could not write it back
                for row in self._dead_letter(rec.data, "intake", "record_too_large",
                                             f"{len(rec.data)} bytes under the wrong key: too large to write back",
                                             topic, rec.key):
                    yield Row(*row, None)
                return
            self.counters.inc("republished", role=rec.role)
            yield Row(topic, key, rec.data, None)
            return
        yield from self.encode(rec.role, rec.key, rec.record, rec.pool)

    def _serde(self, topic: str, role: str):
        serde = self.serdes.get(topic)
        if serde is None:
            serde = self.serdes[topic] = self.serde_for(self.cfg, topic, role)
        return serde

    def encode(self, role: str, key: str | None, record: dict, pool: str | None = None, final_id: str | None = None):
        """The row of one record for the topic of `role` (requests: the pool's topic); `final_id`: a final's
        name across replays (`jobs.orchestrate.number_final`, `jobs.replay_filter.identity`)."""
        headers = headers_of(identity(role, record, final_id)) if role != "request" else None
        for topic, raw_key, value in self._encode(role, key, record, pool):
            yield Row(topic, raw_key, value, headers)

    def _encode(self, role: str, key: str | None, record: dict, pool: str | None = None):
        topic = (self.cfg.requests(pool or ECHO, record.get("priority")) if role == "request"
                 else self.topics[role])  # requests: the lane of their priority
        serde = self._serde(topic, role)
        raw_key = key.encode("utf-8") if key else None
        try:
            value = serde.encode(record)
        except ENCODE_ERRORS as exc:
            if role == "dlq":
                yield from self._minimal_dead_letter(record, raw_key, exc)
                return
            yield from self._dead_letter(repr(record).encode("utf-8"), "serialize", "encode_failed",
                                         f"{type(exc).__name__}: {exc}", topic, key)
            return
        if too_large(raw_key, value, self.limit):
            yield from self._oversize(role, topic, key, raw_key, record, serde, len(value))
            return
        self.counters.inc("records_out", role=role)
        yield topic, raw_key, value

    def _dead_letter(self, original: bytes, stage: str, reason: str, error: str, topic: str, key: str | None):
        """A dead letter (stage, reason) for `original`, which came from or was meant for `topic`."""
        dl = dead_letter(original, stage=stage, reason=reason, error=error, source_topic=topic,
                         source_partition=-1, source_offset=-1, request_id=_request_id(key), tenant_id=_tenant(key))
        self.counters.inc("dead_letters", stage=stage, reason=reason)
        yield from self._encode("dlq", key, dl)

    def _oversize(self, role: str, topic: str, key: str | None, raw_key: bytes | None, record: dict, serde,
                  size: int):
        self.counters.inc("oversize_records", role=role)
        if role == "dlq":
            checked = with_claim_check(record, self._store())
            self.counters.inc("claim_checks", status=checked["payload_status"])
            value = serde.encode(checked)
            if not too_large(raw_key, value, self.limit):
                self.counters.inc("records_out", role=role)
                yield topic, raw_key, value
                return
            record = checked  # still too large (a huge error text?): cut it like any other record
        if role in ("content", "audit", "dlq"):
            try:
                _small, value, _cut = truncate_to_fit(with_reason(record) if role != "dlq" else record,
                                                      serde.encode, len(raw_key or b""), self.limit)
            except RecordTooLarge as exc:
                if role == "dlq":  # no dead letter for a dead letter: that could go on forever
                    log.error("dead letter for %r still too large, dropped: %s", key, exc)
                    self.counters.inc("dropped_records", role=role)
                    return
            else:
                self.counters.inc("records_out", role=role)
                yield topic, raw_key, value
                return
        yield from self._dead_letter(repr(record).encode("utf-8"), "serialize", "record_too_large",
                                     f"{role} record of {size} bytes > {self.limit}", topic, key)

    def _minimal_dead_letter(self, record: dict, raw_key: bytes | None, exc: Exception):
        """A dead letter that broke its own schema: the bare facts and a preview, or nothing (logged)."""
        try:
            original = record.get("original")
            preview = bytes(original)[:PREVIEW_BYTES] if isinstance(original, (bytes, bytearray, memoryview)) else b""
            minimal = dead_letter(preview or repr(record).encode("utf-8")[:PREVIEW_BYTES], stage="serialize",
                                  reason="dead_letter_encode_failed", error=f"{type(exc).__name__}: {exc}",
                                  source_topic=str(record.get("source_topic") or ""), source_partition=-1,
                                  source_offset=-1)
            value = self._serde(self.topics["dlq"], "dlq").encode(minimal)
        except Exception:  # noqa: BLE001 - never fail the job over a record: log it and go on
            log.exception("dead letter could not be encoded, dropped: %r", record)
            self.counters.inc("dropped_records", role="dlq")
            return
        self.counters.inc("records_out", role="dlq")
        yield self.topics["dlq"], raw_key, value

    def _store(self) -> PayloadStore | None:
        try:
            return self.payload_store()
        except Exception:  # noqa: BLE001 - no store: the dead letter says its payload was not kept
            log.exception("object store client failed")
            return None


def _request_id(key: str | None) -> str | None:
    from schemas.keys import split_identity_key

    parts = split_identity_key(key)
    return parts[1] if parts else None


def _tenant(key: str | None) -> str | None:
    from schemas.keys import split_identity_key

    parts = split_identity_key(key)
    return parts[0] or None if parts else None
