"""What the job does with an input one of its steps crashed on: never fail the job over it.

A Python exception in a Flink function fails its task, and the job restarts and reads the
same record again: one bad record becomes a restart loop for every tenant (issue #13). So
each function runs its step for one input inside a guard, and an input it crashed on
becomes a dead letter (reason `internal_error`, the error names the exception), and a
request that would otherwise never end, a FAILED final with the same reason and a
tombstone (no output moderation: that step may be what crashed).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from jobs.envelopes import Admitted, Finished, SinkRecord
from operators import correlate
from operators.audit import build_records
from operators.correlate import EffectKind, Effects, PendingRequest
from operators.dead_letters import dead_letter

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"


def failure_dead_letter(exc: Exception, stage: str, original: bytes | None, topic: str | None = None,
                        partition: int | None = -1, offset: int | None = -1, key: str | None = None) -> SinkRecord:
    """The dead letter of an input `stage` crashed on."""
    log.error("%s failed on a record of %s[%s]@%s; it goes to the dead-letter topic", stage, topic, partition,
              offset, exc_info=exc)
    dl = dead_letter(original, stage=stage, reason=INTERNAL_ERROR, error=f"{type(exc).__name__}: {exc}",
                     source_topic=topic or "", source_partition=-1 if partition is None else partition,
                     source_offset=-1 if offset is None else offset)
    return SinkRecord("dlq", key, dl)


def prompt_failure(exc: Exception, original: bytes | None, decode, topic: str | None, partition: int | None,
                   offset: int | None, now_ms: int, record: Any = None,
                   source: tuple[int, int] | None = None) -> list[SinkRecord | Finished]:
    """The dead letter of a prompt the gate crashed on, and its FAILED final when it names its request
    (`record`, or what `original` decodes to)."""
    out: list[SinkRecord | Finished] = [failure_dead_letter(exc, "gate", original, topic, partition, offset)]
    if record is None and original is not None:
        try:
            record = decode(bytes(original))
        except Exception:  # noqa: BLE001 - undecodable: the dead letter says enough
            record = None
    final = failed_prompt(record, now_ms, source if source is not None else (partition, offset))
    if final is not None:
        out.append(final)
    return out


def failed_prompt(record: Any, now_ms: int, source: tuple[int, int] | None = None) -> Finished | None:
    """A FAILED final for a prompt the gate crashed on, when it names its request; None otherwise."""
    try:
        if isinstance(record, dict) and record.get("request_id") and record.get("tenant_id"):
            return Finished(correlate.finished_early(record, "FAILED", INTERNAL_ERROR, now_ms, source=source))
    except Exception:  # noqa: BLE001 - the dead letter still goes out
        log.exception("no FAILED final for a prompt the gate crashed on")
    return None


def crashed_envelope(data: bytes) -> tuple[Any, bytes]:
    """(the envelope, bytes for its dead letter) of a pickled orchestrator input it crashed on."""
    try:
        envelope = pickle.loads(data)
    except Exception:  # noqa: BLE001
        return None, bytes(data)
    record = envelope.state.__dict__ if isinstance(envelope, Finished) else getattr(envelope, "record", None)
    return envelope, repr(record).encode("utf-8")


def failed_state(value: Admitted | Finished | PendingRequest, now_ms: int) -> PendingRequest:
    """The request of `value`, FAILED with reason `internal_error`."""
    if isinstance(value, Admitted):
        return correlate.finished_early(value.record, "FAILED", INTERNAL_ERROR, now_ms, value.sanitized_prompt,
                                        value.verdicts, value.degraded, value.source)
    state = value.state if isinstance(value, Finished) else value
    return correlate.evolve(state, status="FAILED", reason=INTERNAL_ERROR, finished_at_ms=now_ms,
                            deadline_ms=None, send_at_ms=None)


def failed_effects(value: Admitted | Finished | PendingRequest, now_ms: int, job_version: str) -> Effects:
    """FAILED final records and tombstone for the request of `value` (kept as long as any tombstone)."""
    state = failed_state(value, now_ms)
    effects = Effects(EffectKind.EMIT_FINAL, state, counter="internal_errors")
    effects.final = build_records(state, now_ms, job_version)
    effects.state = correlate.tombstone(state)
    return effects
