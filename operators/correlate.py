"""The pending-request state machine: dispatch, results, timeouts, retries, fallback, dedup.

Pure functions of (state, input, now_ms) returning an `Outcome` the Flink glue
acts on mechanically, in this order:

1. store `outcome.state` (None: clear the key's state),
2. emit `outcome.request` to `genai.inference.requests.<pool>` if not None,
3. register a timer for each of `outcome.timers` and call `on_timer` when it fires,
4. when `outcome.kind is OutcomeKind.EMIT_FINAL`, run output moderation for a
   SUCCEEDED state and build ContentResult/AuditRecord with `operators.audit`,
5. apply `outcome.breaker_event` (pool, event) to that pool's breaker and
   increment `outcome.counter` if set.

Ladder on an error (retryable) or a timeout: retry the same pool and version
with exponential backoff (retry_base_ms * 2^(attempt-1), capped at
retry_cap_ms) until max_attempts; then one attempt on a fallback pool, if the
`fallback` callback finds a healthy one; then FAILED with reason
`<timeout|error>_after_<n>_attempts`. A non-retryable error ends at once.
A finished request stays as a tombstone for dedup_ttl_ms so duplicate results
(at-least-once workers, retried attempts) are dropped instead of producing a
second final record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable, ClassVar, Mapping

from operators.records import full_params, to_ms
from rscf.settings import SETTINGS, Limits


class OutcomeKind(str, Enum):
    EMIT_REQUEST = "EMIT_REQUEST"  # send outcome.request now
    SCHEDULE_RETRY = "SCHEDULE_RETRY"  # a retry is due at outcome.timers[0] (after outcome.delay_ms)
    EMIT_FINAL = "EMIT_FINAL"  # the state is finished: build and emit the final records
    DROP_DUPLICATE = "DROP_DUPLICATE"
    DROP_LATE = "DROP_LATE"
    WAIT = "WAIT"  # nothing to do (a stale timer)
    CLEAR = "CLEAR"  # dedup tombstone expired: clear state


@dataclass
class PendingRequest:
    """Keyed state for one request_id: small, picklable, with everything audit needs."""

    request_id: str
    tenant_id: str
    modality: str
    priority: str
    prompt: str  # final prompt sent to the model (after templates, redaction, RAG)
    prompt_sha256: str  # of the sanitised prompt, before RAG context
    params: dict[str, Any]
    created_at_ms: int
    accepted_at_ms: int
    tier: str = "STANDARD"
    pool: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    fallback_from: str | None = None
    fallback_used: bool = False
    attempt: int = 0
    max_attempts: int = 3
    sent_at_ms: int | None = None
    deadline_ms: int | None = None
    send_at_ms: int | None = None  # a retry waiting for its backoff
    trace: dict[str, Any] | None = None
    input_verdicts: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None  # None while pending; SUCCEEDED, REJECTED or FAILED
    reason: str | None = None
    result: dict[str, Any] | None = None  # the InferenceResult that ended it (success)
    finished_at_ms: int | None = None
    duplicates: int = 0
    late: int = 0

    @property
    def finished(self) -> bool:
        return self.status is not None


_PENDING_FIELDS = frozenset(PendingRequest.__dataclass_fields__)


def evolve(state: PendingRequest, **changes: Any) -> PendingRequest:
    """`dataclasses.replace` for PendingRequest at a fraction of the cost (it re-runs a 28-field
    __init__; PendingRequest has no __post_init__ or init=False fields to honour). Called
    several times per request on the job's hot path."""
    if not changes.keys() <= _PENDING_FIELDS:
        raise TypeError(f"PendingRequest has no field(s) {sorted(changes.keys() - _PENDING_FIELDS)}")
    new = object.__new__(PendingRequest)
    new.__dict__.update(state.__dict__)
    new.__dict__.update(changes)
    return new


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    state: PendingRequest | None
    request: dict[str, Any] | None = None
    delay_ms: int = 0
    timers: tuple[int, ...] = ()
    drop_reason: str | None = None
    breaker_event: tuple[str, str] | None = None
    counter: str | None = None

    EMIT_REQUEST: ClassVar[OutcomeKind] = OutcomeKind.EMIT_REQUEST
    SCHEDULE_RETRY: ClassVar[OutcomeKind] = OutcomeKind.SCHEDULE_RETRY
    EMIT_FINAL: ClassVar[OutcomeKind] = OutcomeKind.EMIT_FINAL
    DROP_DUPLICATE: ClassVar[OutcomeKind] = OutcomeKind.DROP_DUPLICATE
    DROP_LATE: ClassVar[OutcomeKind] = OutcomeKind.DROP_LATE
    WAIT: ClassVar[OutcomeKind] = OutcomeKind.WAIT
    CLEAR: ClassVar[OutcomeKind] = OutcomeKind.CLEAR


FallbackFn = Callable[[PendingRequest], Any]  # returns a RouteDecision-like object (pool, model_name, model_version) or None


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def backoff_ms(attempt: int, limits: Limits | None = None) -> int:
    """Delay before attempt `attempt + 1` after attempt `attempt` failed."""
    limits = limits or SETTINGS.limits
    return int(min(limits.retry_base_ms * 2 ** max(attempt - 1, 0), limits.retry_cap_ms))


def new_pending(
    record: Mapping[str, Any],
    decision: Any,
    accepted_at_ms: int,
    sanitized_prompt: str | None = None,
    input_verdicts: list[dict[str, Any]] | None = None,
    tier: str = "STANDARD",
    limits: Limits | None = None,
) -> PendingRequest:
    """State for a routed record (not yet dispatched). `record.prompt` is the final prompt."""
    limits = limits or SETTINGS.limits
    return PendingRequest(
        request_id=record["request_id"],
        tenant_id=record["tenant_id"],
        modality=record["modality"],
        priority=record.get("priority") or "NORMAL",
        prompt=record["prompt"],
        prompt_sha256=sha256_text(sanitized_prompt if sanitized_prompt is not None else record["prompt"]),
        params=full_params(record.get("params")),
        created_at_ms=to_ms(record.get("created_at", accepted_at_ms)),
        accepted_at_ms=accepted_at_ms,
        tier=tier,
        pool=decision.pool,
        model_name=decision.model_name,
        model_version=decision.model_version,
        fallback_from=decision.fallback_from,
        max_attempts=limits.max_attempts,
        trace=record.get("trace"),
        input_verdicts=list(input_verdicts or []),
    )


def finished_early(
    record: Mapping[str, Any],
    status: str,
    reason: str,
    now_ms: int,
    sanitized_prompt: str | None = None,
    input_verdicts: list[dict[str, Any]] | None = None,
) -> PendingRequest:
    """A finished state for requests that end before dispatch (invalid, quota, moderation, no pool)."""
    prompt = sanitized_prompt if sanitized_prompt is not None else str(record.get("prompt") or "")
    created = record.get("created_at")
    return PendingRequest(
        request_id=str(record.get("request_id") or ""),
        tenant_id=str(record.get("tenant_id") or ""),
        modality=record.get("modality") or "UNKNOWN",
        priority=record.get("priority") or "NORMAL",
        prompt=prompt,
        prompt_sha256=sha256_text(prompt),
        params=full_params(record.get("params")),
        created_at_ms=to_ms(created) if created is not None else now_ms,
        accepted_at_ms=now_ms,
        trace=record.get("trace"),
        input_verdicts=list(input_verdicts or []),
        status=status,
        reason=reason,
        finished_at_ms=now_ms,
    )


def inference_request(state: PendingRequest) -> dict[str, Any]:
    """The InferenceRequest record for the state's current attempt."""
    return {
        "request_id": state.request_id,
        "attempt": state.attempt,
        "tenant_id": state.tenant_id,
        "pool": state.pool,
        "model_name": state.model_name,
        "model_version": state.model_version,
        "modality": state.modality,
        "prompt": state.prompt,
        "params": dict(state.params),
        "priority": state.priority,
        "deadline": state.deadline_ms,
        "created_at": state.created_at_ms,
        "trace": state.trace,
    }


def _send(state: PendingRequest, now_ms: int, limits: Limits) -> Outcome:
    deadline = now_ms + limits.request_timeout_ms
    sent = evolve(state, sent_at_ms=now_ms, deadline_ms=deadline, send_at_ms=None)
    return Outcome(OutcomeKind.EMIT_REQUEST, sent, request=inference_request(sent), timers=(deadline,))


def on_dispatch(state: PendingRequest, now_ms: int, limits: Limits | None = None) -> Outcome:
    """First attempt: emit the request and a timeout timer."""
    limits = limits or SETTINGS.limits
    return _send(evolve(state, attempt=1, history=list(state.history)), now_ms, limits)


def _finish(state: PendingRequest, status: str, reason: str | None, now_ms: int, limits: Limits,
            result: dict[str, Any] | None = None, breaker: tuple[str, str] | None = None) -> Outcome:
    done = evolve(state, status=status, reason=reason, result=result, finished_at_ms=now_ms,
                   deadline_ms=None, send_at_ms=None)
    return Outcome(OutcomeKind.EMIT_FINAL, done, timers=(now_ms + limits.dedup_ttl_ms,), breaker_event=breaker)


def _failed_attempt(
    state: PendingRequest, cause: str, now_ms: int, fallback: FallbackFn | None, limits: Limits,
    retryable: bool = True,
) -> Outcome:
    """Next rung of the ladder after attempt `state.attempt` failed with `cause` (timeout/error)."""
    breaker = (state.pool, "timeout" if cause == "timeout" else "failure")
    if not retryable:
        return _finish(state, "FAILED", "non_retryable_error", now_ms, limits, breaker=breaker)
    if not state.fallback_used and state.attempt < state.max_attempts:
        delay = backoff_ms(state.attempt, limits)
        nxt = evolve(state, attempt=state.attempt + 1, send_at_ms=now_ms + delay, deadline_ms=None)
        return Outcome(OutcomeKind.SCHEDULE_RETRY, nxt, delay_ms=delay, timers=(now_ms + delay,),
                       breaker_event=breaker, counter="retries")
    if not state.fallback_used and fallback is not None:
        decision = fallback(state)
        if decision is not None and getattr(decision, "pool", None):
            moved = evolve(
                state, attempt=state.attempt + 1, fallback_used=True, fallback_from=state.pool,
                pool=decision.pool, model_name=decision.model_name, model_version=decision.model_version,
            )
            out = _send(moved, now_ms, limits)
            return replace(out, breaker_event=breaker, counter="fallbacks")  # Outcome
    return _finish(state, "FAILED", f"{cause}_after_{state.attempt}_attempts", now_ms, limits, breaker=breaker)


def _history(state: PendingRequest, entry: dict[str, Any]) -> PendingRequest:
    return evolve(state, history=[*state.history, entry])


def _drop(state: PendingRequest | None, kind: OutcomeKind, why: str) -> Outcome:
    if state is None:
        return Outcome(kind, None, drop_reason=why, counter="late_results")
    if kind is OutcomeKind.DROP_DUPLICATE:
        return Outcome(kind, evolve(state, duplicates=state.duplicates + 1), drop_reason=why,
                       counter="duplicate_results")
    return Outcome(kind, evolve(state, late=state.late + 1), drop_reason=why, counter="late_results")


def on_result(
    state: PendingRequest | None,
    result: Mapping[str, Any],
    now_ms: int,
    fallback: FallbackFn | None = None,
    limits: Limits | None = None,
) -> Outcome:
    """Apply an InferenceResult. `fallback(state)` proposes a fallback route or None."""
    limits = limits or SETTINGS.limits
    if state is None:
        return _drop(None, OutcomeKind.DROP_LATE, "unknown_request")
    if state.finished:
        return _drop(state, OutcomeKind.DROP_DUPLICATE, "already_finished")
    attempt = int(result.get("attempt") or 0)
    if attempt < state.attempt or (attempt == state.attempt and state.send_at_ms is not None):
        return _drop(state, OutcomeKind.DROP_LATE, "superseded_attempt")
    if attempt > state.attempt or state.sent_at_ms is None:
        return _drop(state, OutcomeKind.DROP_DUPLICATE, "unexpected_attempt")

    ok = result.get("status") == "OK"
    entry = {
        "attempt": attempt,
        "pool": state.pool,
        "model_version": state.model_version,
        "outcome": "ok" if ok else "error",
        "error": None if ok else (result.get("error") or "unknown error"),
        "at_ms": now_ms,
        "queue_ms": int(result.get("queue_ms") or 0),
        "inference_ms": int(result.get("inference_ms") or 0),
    }
    state = _history(state, entry)
    if ok:
        return _finish(state, "SUCCEEDED", None, now_ms, limits, result=dict(result),
                       breaker=(state.pool, "success"))
    return _failed_attempt(state, "error", now_ms, fallback, limits, retryable=bool(result.get("retryable", True)))


def on_timeout(
    state: PendingRequest | None, now_ms: int, fallback: FallbackFn | None = None, limits: Limits | None = None
) -> Outcome:
    """The current attempt's deadline passed without a result."""
    limits = limits or SETTINGS.limits
    if state is None or state.finished or state.deadline_ms is None or now_ms < state.deadline_ms:
        return Outcome(OutcomeKind.WAIT, state)
    state = _history(state, {"attempt": state.attempt, "pool": state.pool, "model_version": state.model_version,
                             "outcome": "timeout", "error": None, "at_ms": now_ms, "queue_ms": 0,
                             "inference_ms": 0})
    return _failed_attempt(state, "timeout", now_ms, fallback, limits)


def on_timer(
    state: PendingRequest | None, now_ms: int, fallback: FallbackFn | None = None, limits: Limits | None = None
) -> Outcome:
    """Any timer of the key fired: send a due retry, time out the attempt, or expire the tombstone."""
    limits = limits or SETTINGS.limits
    if state is None:
        return Outcome(OutcomeKind.WAIT, None)
    if state.finished:
        if now_ms >= (state.finished_at_ms or 0) + limits.dedup_ttl_ms:
            return Outcome(OutcomeKind.CLEAR, None)
        return Outcome(OutcomeKind.WAIT, state)
    if state.send_at_ms is not None:
        if now_ms >= state.send_at_ms:
            return _send(state, now_ms, limits)
        return Outcome(OutcomeKind.WAIT, state)
    return on_timeout(state, now_ms, fallback, limits)
