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
from operators.admit import policy_from_dict
from operators.dead_letters import dead_letter
from operators.records import degradation, to_ms
from operators.validate import validate_prompt
from schemas.keys import identity_key, is_legacy_key
from schemas.serde import DecodeError

Decode = Callable[[bytes], dict]

PROMPT_TIMESTAMPS = ("created_at",)
RESULT_TIMESTAMPS = ("completed_at",)

TEMPLATES_UNAVAILABLE = "templates_unavailable"  # the template store (Redis) is down

# Broadcast-state keys of control events: "tenant:<id>" -> TenantPolicy dict,
# "rollout:<pool>" -> ModelRollout dict, "breaker:<pool>" -> the pool's last breaker command,
# "position:<partition>" -> offset of the last control record applied (`jobs.policy_wait`).
TENANT, ROLLOUT, BREAKER, POSITION = "tenant:", "rollout:", "breaker:", "position:"
SOURCE = "_source"  # the (partition, offset) a control event came from, set by the control intake


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
        return PromptIn(outcome.record, outcome.record["prompt"], (partition, offset))
    if not isinstance(record.get("request_id"), str) or not record["request_id"].strip():
        tenant = record.get("tenant_id") if isinstance(record.get("tenant_id"), str) else None
        dl = dead_letter(data, stage="validate", reason=outcome.reason, error=outcome.detail,
                         source_topic=topic, source_partition=partition, source_offset=offset, tenant_id=tenant)
        return SinkRecord("dlq", None, dl)
    if outcome.reason == TEMPLATES_UNAVAILABLE:  # the store is down, not the prompt wrong: FAILED, and why
        down = degradation("templates", "failed", "redis", outcome.detail or "")
        return Finished(correlate.finished_early(record, "FAILED", TEMPLATES_UNAVAILABLE, now_ms, degraded=(down,),
                                                 source=(partition, offset)))
    return Finished(correlate.finished_early(record, "REJECTED", f"invalid:{outcome.reason}", now_ms,
                                             source=(partition, offset)))


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
    """`intake_result` for a result read under Kafka key `key`: workers write its identity key
    (tenant_id, U+001F, request_id; the request_id alone before results had a tenant).

    A result under its request_id alone is taken as it is: its request may be one a job before
    identity keys kept under that key (an upgrade from its savepoint; `to_legacy_key`). Any other
    key: back to the topic under the right one.
    """
    out = intake_result(data, decode, topic, partition, offset)
    if isinstance(out, ResultIn):
        request_id = str(out.record["request_id"])
        right = identity_key(out.record.get("tenant_id"), request_id)
        if key != right and key != request_id:
            return Republish("result", right, bytes(data))
    return out


def to_legacy_key(key: str, result: ResultIn, data: bytes) -> Republish | None:
    """Where a result goes next when no request is kept under its Kafka key `key`: None (it is late)
    or, under its identity key, one more trip to the request_id alone.

    A request in flight in a savepoint of the version before identity keys is kept under its
    request_id alone, and a worker of this version answers it (or a retry of it) under the
    identity key. The trip is one way: under the request_id alone a result with no request is
    late, so nothing loops. A result without a tenant (a worker older than the field) is only
    matched under the request_id alone, where only requests from before identity keys are: for
    newer ones it is late and its request is retried after its timeout (jobs/README.md).
    """
    if is_legacy_key(key) or not result.record.get("tenant_id"):
        return None
    return Republish("result", str(result.record["request_id"]), bytes(data))


def checked_control(
    record: dict, data: bytes, topic: str, partition: int, offset: int
) -> tuple[dict | None, SinkRecord | None]:
    """(event, None) when its broadcast-state entries can be built and its policy read, else (None, dead
    letter): a bad event is refused once here, not by every subtask that receives the broadcast."""
    try:
        for key, entry in control_updates(record):
            if key.startswith(TENANT):
                policy_from_dict(entry)
        return record, None
    except Exception as exc:  # noqa: BLE001 - whatever a malformed event breaks, it is the event's fault
        dl = dead_letter(data, stage="control", reason="invalid_control_event", error=f"{type(exc).__name__}: {exc}",
                         source_topic=topic, source_partition=partition, source_offset=offset)
        return None, SinkRecord("dlq", None, dl)


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
    if event.get(SOURCE):
        partition, offset = event[SOURCE]
        updates.append((POSITION + str(partition), offset))
    return updates
