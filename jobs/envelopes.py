"""The values that travel between the job's steps and the keyed state the steps keep.

Envelopes cross Flink operators pickled, one per record, so each pickles
positionally (`__reduce__`: no field names in the bytes, no dataclass __init__
keyword parsing when unpickled):
- `PromptIn`: a validated prompt on its way to the tenant gate (keyed by tenant),
- `Admitted`, `Finished`, `ResultIn`: inputs of the orchestrator (keyed by the request's
  (tenant_id, request_id), `schemas.keys.identity_key`),
- `SinkRecord`: a record for a Kafka topic, `Republish`: raw bytes for their own topic
  under the right key.
Every final record leaves through the orchestrator, even refusals decided
earlier, so the per-request tombstone drops a duplicated prompt or result
whatever stage it reaches.

Keyed state: `Slot` (per request identity), a list of held `PromptIn` and an
`operators.admit.TokenBucket` (per tenant). Their pickles name these classes, so
restoring a savepoint needs them importable under the names they were written with
(`RETIRED_STATE_CLASSES`).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any, Union

from operators import admit
from operators.correlate import PendingRequest
from schemas.keys import identity_key


@dataclass(frozen=True)
class SinkRecord:
    """One record for Kafka: `role` picks the topic (content, audit, dlq, request + pool)."""

    role: str
    key: str | None
    record: dict[str, Any]
    pool: str | None = None

    def __reduce__(self):  # positional pickles: envelopes cross Flink operators pickled, per record
        return (SinkRecord, (self.role, self.key, self.record, self.pool))


@dataclass(frozen=True)
class PromptIn:
    record: dict[str, Any]  # validated, sanitised PromptRequest
    sanitized_prompt: str
    source: tuple[int, int] | None = None  # (partition, offset) it was read from: a replay reads the same

    def __reduce__(self):
        return (PromptIn, (self.record, self.sanitized_prompt, self.source))


@dataclass(frozen=True)
class Admitted:
    record: dict[str, Any]  # prompt after redaction and RAG
    sanitized_prompt: str
    verdicts: list[dict[str, Any]]
    tier: str
    features: frozenset[str]
    accepted_at_ms: int
    degraded: tuple[dict[str, Any], ...] = ()  # steps the gate skipped (classifier, RAG) and why
    moderation_fail_closed: bool = False  # the tenant's policy, for output moderation
    source: tuple[int, int] | None = None  # PromptIn.source

    def __reduce__(self):
        return (Admitted, (self.record, self.sanitized_prompt, self.verdicts, self.tier, self.features,
                           self.accepted_at_ms, self.degraded, self.moderation_fail_closed, self.source))


@dataclass(frozen=True)
class Finished:
    """A request that ended before dispatch (invalid, moderation, quota)."""

    state: PendingRequest
    features: frozenset[str] = frozenset()

    def __reduce__(self):
        return (Finished, (self.state, self.features))


@dataclass(frozen=True)
class ResultIn:
    record: dict[str, Any]  # InferenceResult

    def __reduce__(self):
        return (ResultIn, (self.record,))


@dataclass(frozen=True)
class Republish:
    """An input read under the wrong Kafka key, written back to its topic under the right one.

    The job keys prompts by their Kafka key (the tenant_id) and results by theirs (tenant_id,
    U+001F, request_id: `schemas.keys`) without a Python operator in front: a record whose key
    does not match its payload would reach the wrong keyed state, so it takes one more trip
    through Kafka instead.
    """

    role: str  # "prompt" | "result": the topic it goes back to
    key: str
    data: bytes

    def __reduce__(self):
        return (Republish, (self.role, self.key, self.data))


OrchestratorInput = Union[Admitted, Finished, ResultIn]


def request_key(value: OrchestratorInput | SinkRecord | Republish) -> str:
    """Key of what goes to the orchestrator: the request's (tenant_id, request_id) as `schemas.keys`
    writes it for its inputs, "" for dead letters and records to republish passing through."""
    if isinstance(value, (SinkRecord, Republish)):
        return ""
    if isinstance(value, Finished):
        return identity_key(value.state.tenant_id, value.state.request_id)
    return identity_key(value.record.get("tenant_id"), str(value.record.get("request_id") or ""))


@dataclass(frozen=True)
class Slot:
    """Keyed state of one request identity: the correlate state and the tenant features output moderation needs."""

    pending: PendingRequest
    features: frozenset[str] = frozenset()

    def __reduce__(self):  # keyed state is pickled on every update: keep it positional
        return (Slot, (self.pending, self.features))


# Keyed state is pickled, and a pickle names its classes by module path. Savepoints of versions before
# the job's steps had modules of their own (issue #12) name `jobs.stages.Slot`, `jobs.stages.PromptIn`
# and `operators.quota.TokenBucket`. The keyed functions make those paths resolvable before they read
# state, so such a savepoint restores; each value is written back under its new name at its next
# update, and tombstones expire by state TTL.
RETIRED_STATE_CLASSES = {
    "jobs.stages": (sys.modules[__name__], ("Slot", "PromptIn")),
    "operators.quota": (admit, ("TokenBucket",)),
}


def resolve_retired_state_classes() -> None:
    """Make the class paths in `RETIRED_STATE_CLASSES` importable (pickle looks them up in sys.modules)."""
    for name, (module, classes) in RETIRED_STATE_CLASSES.items():
        if name not in sys.modules:
            alias = types.ModuleType(name, f"classes of keyed state written before they moved to {module.__name__}")
            for cls in classes:
                setattr(alias, cls, getattr(module, cls))
            sys.modules[name] = alias
