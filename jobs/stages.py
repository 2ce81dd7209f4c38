"""The pipeline's steps as plain Python: what each Flink function does with one input.

Each step calls the operators (validate, moderation, quota, enrich, routing,
correlate, audit, dead_letters) and returns what the Flink glue must do, as
data: records for the next step (`Next`), records for a Kafka topic
(`SinkRecord`), state to keep and timers to set (`Effects`). Nothing here
touches Flink or Kafka, so unit tests drive whole request lifecycles.

Envelopes travel between Flink operators pickled:
- `PromptIn`: a validated prompt on its way to the tenant gate (keyed by tenant),
- `Admitted`, `Finished`, `ResultIn`: inputs of the orchestrator (keyed by request_id).
Every final record leaves through the orchestrator, even refusals decided
earlier, so the per-request tombstone drops a duplicated prompt or result
whatever stage it reaches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

from operators import correlate, routing
from operators.audit import build_records
from operators.correlate import Outcome, OutcomeKind, PendingRequest
from operators.dead_letters import dead_letter
from operators.enrich import RAG_FEATURE, enrich
from operators.moderation import BlockedTerms, moderate_input, moderate_output
from operators.quota import TenantPolicy, TokenBucket, admit, default_policy, policy_from_dict
from operators.records import to_ms
from operators.validate import validate_prompt
from jobs.config import JOB_VERSION
from rscf.settings import SETTINGS
from schemas.serde import DecodeError

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- envelopes


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

    def __reduce__(self):
        return (PromptIn, (self.record, self.sanitized_prompt))


@dataclass(frozen=True)
class Admitted:
    record: dict[str, Any]  # prompt after redaction and RAG
    sanitized_prompt: str
    verdicts: list[dict[str, Any]]
    tier: str
    features: frozenset[str]
    accepted_at_ms: int

    def __reduce__(self):
        return (Admitted, (self.record, self.sanitized_prompt, self.verdicts, self.tier, self.features,
                           self.accepted_at_ms))


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

    The job keys prompts by their Kafka key (the tenant_id) and results by theirs (the
    request_id) without a Python operator in front: a record whose key does not match its
    payload would reach the wrong keyed state, so it takes one more trip through Kafka instead.
    """

    role: str  # "prompt" | "result": the topic it goes back to
    key: str
    data: bytes

    def __reduce__(self):
        return (Republish, (self.role, self.key, self.data))


@dataclass(frozen=True)
class Next:
    value: Union[PromptIn, Admitted, Finished, ResultIn]


Out = Union[Next, SinkRecord, Republish]


def request_key(value: Any) -> str:
    """Key of orchestrator inputs."""
    if isinstance(value, Finished):
        return value.state.request_id
    return str(value.record.get("request_id") or "")


# ----------------------------------------------------------------------------- decode + validate

PROMPT_TIMESTAMPS = ("created_at",)
RESULT_TIMESTAMPS = ("completed_at",)


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
    data: bytes | None, decode: Callable[[bytes], dict], topic: str, partition: int, offset: int
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
    data: bytes | None, decode: Callable[[bytes], dict], topic: str, partition: int, offset: int,
    now_ms: int, templates=None,
) -> list[Out]:
    """Decode and validate one prompt; refusals become a REJECTED final (DLQ without a request_id)."""
    record, dl = decode_or_dead_letter(data, decode, topic, partition, offset)
    if dl is not None:
        return [dl]
    millis_timestamps(record, PROMPT_TIMESTAMPS)
    outcome = validate_prompt(record, templates)
    if outcome.ok:
        return [Next(PromptIn(outcome.record, outcome.record["prompt"]))]
    if not isinstance(record.get("request_id"), str) or not record["request_id"].strip():
        dl = dead_letter(data, stage="validate", reason=outcome.reason, error=outcome.detail,
                         source_topic=topic, source_partition=partition, source_offset=offset)
        return [SinkRecord("dlq", None, dl)]
    state = correlate.finished_early(record, "REJECTED", f"invalid:{outcome.reason}", now_ms)
    return [Next(Finished(state))]


def intake_result(
    data: bytes | None, decode: Callable[[bytes], dict], topic: str, partition: int, offset: int
) -> list[Out]:
    record, dl = decode_or_dead_letter(data, decode, topic, partition, offset)
    if dl is not None:
        return [dl]
    millis_timestamps(record, RESULT_TIMESTAMPS)
    if not record.get("request_id"):
        dl = dead_letter(data, stage="correlate", reason="missing_field", error="result without request_id",
                         source_topic=topic, source_partition=partition, source_offset=offset)
        return [SinkRecord("dlq", None, dl)]
    return [Next(ResultIn(record))]


def _republish_mismatched(outs: list[Out], envelope: type, key_of: Callable[[Any], str], role: str,
                          key: str | None, data: bytes | None) -> list[Out]:
    """Replace each `envelope` whose own key is not the Kafka `key` by a `Republish` of `data`."""
    return [Republish(role, key_of(out.value), bytes(data))
            if isinstance(out, Next) and isinstance(out.value, envelope) and key_of(out.value) != key else out
            for out in outs]


def keyed_prompt(
    key: str | None, data: bytes | None, decode: Callable[[bytes], dict], topic: str, partition: int, offset: int,
    now_ms: int, templates=None,
) -> list[Out]:
    """`intake_prompt` for a prompt read under Kafka key `key`: a valid prompt whose tenant_id is
    not its key goes back to the prompts topic under its tenant_id (`Republish`)."""
    outs = intake_prompt(data, decode, topic, partition, offset, now_ms, templates)
    return _republish_mismatched(outs, PromptIn, lambda p: p.record["tenant_id"], "prompt", key, data)


def keyed_result(
    key: str | None, data: bytes | None, decode: Callable[[bytes], dict], topic: str, partition: int, offset: int,
) -> list[Out]:
    """`intake_result` for a result read under Kafka key `key` (the request_id, as workers write it)."""
    outs = intake_result(data, decode, topic, partition, offset)
    return _republish_mismatched(outs, ResultIn, lambda r: str(r.record["request_id"]), "result", key, data)


# ----------------------------------------------------------------------------- tenant gate


@dataclass
class Moderation:
    """Rule checks always; the learned classifier once loaded, for tenants with the feature."""

    blocked_terms: BlockedTerms = field(default_factory=BlockedTerms)
    classifier_source: Callable[[], Any] | None = None  # returns the classifier or None (not ready)

    def classifier(self, features: frozenset[str]):
        if "moderation_model" not in features or self.classifier_source is None:
            return None
        return self.classifier_source()

    def input(self, text: str, policy: TenantPolicy):
        return moderate_input(text, policy, self.classifier(policy.features), self.blocked_terms)

    def output(self, text: str, features: frozenset[str]):
        return moderate_output(text, features, self.classifier(features), self.blocked_terms)


@dataclass(frozen=True)
class GateResult:
    bucket: TokenBucket | None  # new token bucket state (unchanged when moderation refused)
    out: Out
    counters: tuple[str, ...] = ()


def policy_for(tenant_id: str, policies: Mapping[str, Any]) -> TenantPolicy:
    """The tenant's policy from broadcast state (dicts as the control event carries them) or the default."""
    raw = policies.get(tenant_id)
    if raw is None:
        return default_policy(tenant_id)
    return raw if isinstance(raw, TenantPolicy) else policy_from_dict(raw)


def gate(
    prompt: PromptIn, policy: TenantPolicy, bucket: TokenBucket | None, now_ms: int,
    moderation: Moderation, enricher: Callable[[dict, frozenset[str]], dict] | None = None,
) -> GateResult:
    """Moderate input, then spend a token, then enrich. A blocked prompt costs no token."""
    record = prompt.record
    mod = moderation.input(record["prompt"], policy)
    verdicts = list(mod.verdicts)
    if mod.blocked:
        state = correlate.finished_early(record, "REJECTED", mod.reason or "moderation", now_ms,
                                         prompt.sanitized_prompt, verdicts)
        return GateResult(bucket, Next(Finished(state, policy.features)), ("rejected_moderation",))
    ok, new_bucket, _retry_after = admit(bucket, policy, now_ms)
    if not ok:
        state = correlate.finished_early(record, "REJECTED", "quota_exceeded", now_ms,
                                         prompt.sanitized_prompt, verdicts)
        return GateResult(new_bucket, Next(Finished(state, policy.features)), ("rejected_quota",))
    record = dict(record, prompt=mod.prompt)
    counters: tuple[str, ...] = ()
    if enricher is not None and RAG_FEATURE in policy.features and record.get("modality") == "TEXT":
        try:
            record = enricher(record, policy.features)
            counters = ("rag_enriched",)
        except Exception as exc:  # noqa: BLE001 - RAG is an improvement, not a requirement: go on without it
            metadata = dict(record.get("metadata") or {})
            metadata["rag_error"] = f"{type(exc).__name__}: {exc}"[:200]
            record = dict(record, metadata=metadata)
            counters = ("rag_failed",)
    admitted = Admitted(record, prompt.sanitized_prompt, verdicts, policy.tier, policy.features, now_ms)
    return GateResult(new_bucket, Next(admitted), counters)


class EnricherNotReady(RuntimeError):
    pass


def rag_enricher(embedder_source: Callable[[], Any], index) -> Callable[[dict, frozenset[str]], dict]:
    """RAG through the embedding service; raises EnricherNotReady while it is down (gate records why)."""
    def run(record: dict, features: frozenset[str]) -> dict:
        embedder = embedder_source()
        if embedder is None:
            raise EnricherNotReady("embedding service unavailable")
        return enrich(record, features, embedder, index)
    return run


# ----------------------------------------------------------------------------- orchestrator


@dataclass(frozen=True)
class Slot:
    """Keyed state of one request_id: the correlate state and the tenant features output moderation needs."""

    pending: PendingRequest
    features: frozenset[str] = frozenset()

    def __reduce__(self):  # keyed state is pickled on every update: keep it positional
        return (Slot, (self.pending, self.features))


@dataclass
class Effects:
    """What the Flink function does after one input: keep `slot` (None: clear), emit, set timers, count."""

    slot: Slot | None
    sinks: list[SinkRecord] = field(default_factory=list)
    timers: list[int] = field(default_factory=list)
    counters: list[str] = field(default_factory=list)
    cancel_timers: list[int] = field(default_factory=list)  # timers that can no longer do anything


@dataclass(frozen=True)
class _Tier:
    tier: str


class Orchestrator:
    """Routing and correlation for one subtask.

    Rollouts mirror the broadcast state. Circuit breakers live only here: they
    are per-subtask soft state (not checkpointed), rebuilt from traffic after a
    restart, and each parallel subtask judges pool health from its own share.
    """

    def __init__(self, moderation: Moderation | None = None, job_version: str = JOB_VERSION,
                 breaker_cfg: routing.BreakerConfig = routing.BreakerConfig(), tombstone_timers: bool = True):
        """`tombstone_timers=False` when the state backend expires tombstones itself (state TTL =
        dedup_ttl_ms): one timer registration and one timer callback less per request."""
        self.rollouts: dict[str, routing.Rollout] = dict(routing.DEFAULT_ROLLOUTS)
        self.breakers: dict[str, routing.CircuitBreaker] = {}
        self.moderation = moderation or Moderation()
        self.job_version = job_version
        self.breaker_cfg = breaker_cfg
        self.tombstone_timers = tombstone_timers

    # -- control
    def on_control(self, event: Mapping[str, Any], now_ms: int) -> None:
        self.rollouts = routing.apply_rollout_event(self.rollouts, event)
        self.breakers = routing.apply_breaker_command(self.breakers, event, now_ms)

    def restore_control(self, entries: Iterable[tuple[str, Any]], now_ms: int) -> None:
        """Re-apply checkpointed control state (broadcast-state entries) to a fresh instance."""
        for key, entry in entries:
            if key.startswith("rollout:"):
                self.on_control({"rollout": entry}, now_ms)
            elif key.startswith("breaker:") and entry.get("action") == "FORCE_OPEN":
                self.on_control({"breaker": entry}, now_ms)

    # -- inputs
    def on_input(self, value: Any, slot: Slot | None, now_ms: int) -> Effects:
        if isinstance(value, ResultIn):
            return self.on_result(value.record, slot, now_ms)
        if slot is not None:  # the same request_id again (producer retry, replay): one final only
            return Effects(slot, counters=["duplicate_prompts"])
        if isinstance(value, Finished):
            return self._final(value.state, value.features, now_ms, [])
        return self.on_admitted(value, now_ms)

    def on_admitted(self, value: Admitted, now_ms: int) -> Effects:
        policy = _Tier(value.tier)
        policy_full = TenantPolicy(value.record["tenant_id"], value.tier, features=value.features)
        decision = routing.route(value.record, policy_full, self.rollouts, self.breakers, now_ms, self.breaker_cfg)
        if decision.failed:
            state = correlate.finished_early(value.record, "FAILED", decision.reason, now_ms,
                                             value.sanitized_prompt, value.verdicts)
            return self._final(state, value.features, now_ms, ["no_healthy_pool"])
        pending = correlate.new_pending(value.record, decision, value.accepted_at_ms, value.sanitized_prompt,
                                        value.verdicts, tier=policy.tier)
        return self._apply(correlate.on_dispatch(pending, now_ms), value.features, now_ms)

    def on_result(self, result: Mapping[str, Any], slot: Slot | None, now_ms: int) -> Effects:
        pending = slot.pending if slot else None
        features = slot.features if slot else frozenset()
        eff = self._apply(correlate.on_result(pending, result, now_ms, self._fallback(now_ms)), features, now_ms)
        deadline = pending.deadline_ms if pending is not None else None
        if deadline is not None and (eff.slot is None or eff.slot.pending.deadline_ms != deadline):
            eff.cancel_timers.append(deadline)  # answered: its timeout timer would only find nothing to do
        return eff

    def on_timer(self, slot: Slot | None, now_ms: int) -> Effects:
        if slot is None:
            return Effects(None)
        return self._apply(correlate.on_timer(slot.pending, now_ms, self._fallback(now_ms)), slot.features, now_ms)

    # -- helpers
    def _fallback(self, now_ms: int):
        def choose(state: PendingRequest):
            return routing.fallback_route({"request_id": state.request_id}, state.pool, _Tier(state.tier),
                                          self.rollouts, self.breakers, now_ms, self.breaker_cfg)
        return choose

    def _breaker(self, pool: str | None, event: str, now_ms: int) -> None:
        if pool:
            current = self.breakers.get(pool, routing.CircuitBreaker())
            self.breakers[pool] = current.on_event(event, now_ms, self.breaker_cfg)

    def _apply(self, outcome: Outcome, features: frozenset[str], now_ms: int) -> Effects:
        counters = [outcome.counter] if outcome.counter else []
        if outcome.breaker_event:
            self._breaker(*outcome.breaker_event, now_ms)
        if outcome.kind is OutcomeKind.EMIT_FINAL:
            return self._final(outcome.state, features, now_ms, counters, timers=list(outcome.timers))
        if outcome.kind is OutcomeKind.CLEAR:
            return Effects(None, counters=counters)
        slot = Slot(outcome.state, features) if outcome.state is not None else None
        eff = Effects(slot, timers=list(outcome.timers), counters=counters)
        if outcome.request is not None:
            self._breaker(outcome.request["pool"], routing.DISPATCH, now_ms)
            eff.sinks.append(SinkRecord("request", outcome.request["request_id"], outcome.request,
                                        pool=outcome.request["pool"]))
            counters.append("dispatched")
        return eff

    def _final(self, state: PendingRequest, features: frozenset[str], now_ms: int, counters: list[str],
               timers: list[int] | None = None) -> Effects:
        output = None
        if state.status == "SUCCEEDED" and (state.result or {}).get("output_text"):
            output = self.moderation.output(state.result["output_text"], features)
        content, audit = build_records(state, now_ms, self.job_version, output)
        if not self.tombstone_timers:
            timers = []
        elif timers is None:  # finished before dispatch: keep a tombstone against duplicates all the same
            timers = [now_ms + SETTINGS.limits.dedup_ttl_ms]
        finished = correlate.evolve(state, status=content["status"], reason=content["reason"])
        return Effects(
            Slot(finished, features),
            sinks=[SinkRecord("content", state.request_id, content), SinkRecord("audit", state.request_id, audit)],
            timers=timers,
            counters=[*counters, f"final_{content['status']}"],
        )

