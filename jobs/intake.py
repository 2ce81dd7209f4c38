"""Intake: decode and validate what the job reads, and republish what came under the wrong key.

Each function takes one Kafka record (key, value bytes, topic, partition, offset)
and returns one value for the Flink glue: the envelope for the next step, a dead
letter (`SinkRecord` role "dlq", with where the bytes came from), or a
`Republish`. An invalid prompt is a REJECTED final, not a dead letter, as long as
it names its request_id. Control events become broadcast-state entries.
"""

from __future__ import annotations

from typing import Any, Callable

from jobs.envelopes import Finished, PromptIn, Republish, ResultIn, SinkRecord
from operators import correlate
from operators.dead_letters import dead_letter
from operators.records import to_ms
from operators.validate import validate_prompt
from schemas.serde import DecodeError

Decode = Callable[[bytes], dict]

PROMPT_TIMESTAMPS = ("created_at",)
RESULT_TIMESTAMPS = ("completed_at",)

# Broadcast-state keys of control events: "tenant:<id>" -> TenantPolicy dict,
# "rollout:<pool>" -> ModelRollout dict, "breaker:<pool>" -> the pool's last breaker command.
TENANT, ROLLOUT, BREAKER = "tenant:", "rollout:", "breaker:"


def millis_timestamps(record: dict, names: tuple[str, ...]) -> dict:
    """Timestamp fields as int millis, in place. fastavro reads them as tz-aware datetimes, which
    cost ~6 us per pickle; envelopes and keyed state are pickled at every operator hop and update.
    Every consumer goes through `to_ms`, and fastavro writes int millis the same way."""
    for name in names:
        value = record.get(name)
        if value is not None and not isinstance(value, int):
            record[name] = to_ms(value)
    return record


def decode_or_dead_letter(
    data: bytes | None, decode: Decode, topic: str, partition: int, offset: int
) -> tuple[dict | None, SinkRecord | None]:
    """(record, None) or (None, dead letter with where the bytes came from)."""
    try:
        if data is None:
            raise DecodeError("empty_value", "record has no value (tombstone)")
        return decode(bytes(data)), None
    except DecodeError as exc:
        dl = dead_letter(data, stage="decode", reason=exc.reason, error=exc.detail,
                         source_topic=topic, source_partition=partition, source_offset=offset)
        return None, SinkRecord("dlq", None, dl)


def intake_prompt(
    data: bytes | None, decode: Decode, topic: str, partition: int, offset: int, now_ms: int, templates=None,
) -> PromptIn | Finished | SinkRecord:
    """Decode and validate one prompt; refusals become a REJECTED final (DLQ without a request_id)."""
    record, dl = decode_or_dead_letter(data, decode, topic, partition, offset)
    if dl is not None:
        return dl
    millis_timestamps(record, PROMPT_TIMESTAMPS)
    outcome = validate_prompt(record, templates)
    if outcome.ok:
        return PromptIn(outcome.record, outcome.record["prompt"])
    if not isinstance(record.get("request_id"), str) or not record["request_id"].strip():
        dl = dead_letter(data, stage="validate", reason=outcome.reason, error=outcome.detail,
                         source_topic=topic, source_partition=partition, source_offset=offset)
        return SinkRecord("dlq", None, dl)
    return Finished(correlate.finished_early(record, "REJECTED", f"invalid:{outcome.reason}", now_ms))


def intake_result(
    data: bytes | None, decode: Decode, topic: str, partition: int, offset: int
) -> ResultIn | SinkRecord:
    record, dl = decode_or_dead_letter(data, decode, topic, partition, offset)
    if dl is not None:
        return dl
    millis_timestamps(record, RESULT_TIMESTAMPS)
    if not record.get("request_id"):
        dl = dead_letter(data, stage="correlate", reason="missing_field", error="result without request_id",
                         source_topic=topic, source_partition=partition, source_offset=offset)
        return SinkRecord("dlq", None, dl)
    return ResultIn(record)


def keyed_prompt(
    key: str | None, data: bytes | None, decode: Decode, topic: str, partition: int, offset: int,
    now_ms: int, templates=None,
) -> PromptIn | Finished | SinkRecord | Republish:
    """`intake_prompt` for a prompt read under Kafka key `key`: a valid prompt whose tenant_id is
    not its key goes back to the prompts topic under its tenant_id (`Republish`)."""
    out = intake_prompt(data, decode, topic, partition, offset, now_ms, templates)
    if isinstance(out, PromptIn) and out.record["tenant_id"] != key:
        return Republish("prompt", out.record["tenant_id"], bytes(data))
    return out


def keyed_result(
    key: str | None, data: bytes | None, decode: Decode, topic: str, partition: int, offset: int,
) -> ResultIn | SinkRecord | Republish:
    """`intake_result` for a result read under Kafka key `key` (the request_id, as workers write it)."""
    out = intake_result(data, decode, topic, partition, offset)
    if isinstance(out, ResultIn) and str(out.record["request_id"]) != key:
        return Republish("result", str(out.record["request_id"]), bytes(data))
    return out


def control_updates(event: dict) -> list[tuple[str, Any]]:
    """Broadcast-state entries a control event sets.

    A breaker command is kept as the pool's last command, so a FORCE_OPEN survives a
    restore (the control source resumes from its checkpointed offset and does not replay it).
    """
    updates = []
    if event.get("tenant_policy"):
        updates.append((TENANT + event["tenant_policy"]["tenant_id"], dict(event["tenant_policy"])))
    if event.get("rollout"):
        updates.append((ROLLOUT + event["rollout"]["pool"], dict(event["rollout"])))
    if event.get("breaker"):
        updates.append((BREAKER + event["breaker"]["pool"], dict(event["breaker"])))
    return updates
