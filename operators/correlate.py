"""Correlate: the pending-request state machine (results, timeouts, retries, fallback, dedup).

Pure functions of (state, input, now_ms) returning the one `Effects` value the
Flink glue applies, in this order:

1. keep `effects.state` with the key (None: clear the key's state),
2. cancel `effects.cancel_timers`, register `effects.timers` and call `on_timer`
   when one fires,
3. EMIT_REQUEST: send `effects.request`, the state's current attempt, to its pool,
4. EMIT_FINAL: send `effects.final`, the ContentResult and AuditRecord,
5. count `effects.counter` if set.

The orchestrator (`jobs.orchestrate`) completes what a decision here cannot know:
it applies `effects.breaker_event` (pool, event) to the breakers it holds, builds
the request record (its `dispatch` step), runs output moderation and audit for a
final, and adds the tenant features kept with the state and the timers an answer
made useless.

Ladder on an error (retryable) or a timeout: retry the same pool and version
with exponential backoff (retry_base_ms * 2^(attempt-1), capped at
retry_cap_ms) until max_attempts; then one attempt on a fallback pool, if the
`fallback` callback finds a healthy one; then FAILED with reason
`<timeout|error>_after_<n>_attempts`. A non-retryable error ends at once.
A timeout the job caused is not the pool's (issue #14): when the job's own intake of results is
behind (`job_lag_ms`: how old the results it is reading now were when it read them, measured by
the orchestrator), a deadline that passes is moved on by that lag instead (`DEFER_TIMEOUT`, no
breaker event, at most `MAX_JOB_WAITS` times): the answer may be sitting in the job's input.
Only a timeout while the job keeps up, and a pool's own error results, count against its breaker.

A finished request stays as a tombstone for dedup_ttl_ms so duplicate results
(at-least-once workers, retried attempts) are dropped instead of producing a
second final record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping

from operators.records import full_params, to_ms
from operators.route import RouteDecision
from rscf.clock import backoff
from rscf.settings import SETTINGS, Limits


class EffectKind(str, Enum):
    EMIT_REQUEST = "EMIT_REQUEST"  # send the state's current attempt now
    SCHEDULE_RETRY = "SCHEDULE_RETRY"  # a retry is due at timers[0] (after delay_ms)
    EMIT_FINAL = "EMIT_FINAL"  # the state is finished: emit the final records
    DROP_DUPLICATE = "DROP_DUPLICATE"
    REJECT_DUPLICATE = "REJECT_DUPLICATE"  # another prompt under a request id in use: emit its REJECTED final
    DROP_LATE = "DROP_LATE"
    WAIT = "WAIT"  # nothing to do (a stale timer)
    DEFER_TIMEOUT = "DEFER_TIMEOUT"  # deadline passed while the job itself was behind: wait on, breaker untouched
    CLEAR = "CLEAR"  # dedup tombstone expired: clear state


@dataclass
class PendingRequest:
    """Keyed state for one request (tenant_id, request_id): small, picklable, with everything audit needs."""

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
    # Added by issue #13. Immutable defaults are class attributes, so a state pickled before they
    # existed (a savepoint of the previous version) reads them as these defaults.
    degraded: tuple[dict[str, Any], ...] = ()  # steps skipped or refused for want of a dependency
    moderation_fail_closed: bool = False  # the tenant's policy when the classifier is unavailable
    source: tuple[int, int] | None = None  # (partition, offset) of the prompt: the same record read again matches
    job_waits: int = 0  # issue #14: deadlines moved on because the job itself was behind (`DEFER_TIMEOUT`)
    final_seq: int = 0  # finals this identity has had: the next one's number (`jobs.replay_filter`)

    @property
    def finished(self) -> bool:
        return self.status is not None

    def __reduce__(self):
        """Positional pickles (no field names: ~0.6 kB less per state, which Flink pickles at every
        update and keeps in every checkpoint). New fields go at the end with a default, so a state
        pickled by an older version (positional or, before this, by name) still loads."""
        return (PendingRequest, tuple(getattr(self, name) for name in _PENDING_ORDER))


_PENDING_FIELDS = frozenset(PendingRequest.__dataclass_fields__)
_PENDING_ORDER = tuple(PendingRequest.__dataclass_fields__)


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


@dataclass(slots=True)
class Effects:
    """What the glue does after one input (see the module docstring for the order)."""

    kind: EffectKind
    state: PendingRequest | None  # keep (None: clear the key's state)
    timers: tuple[int, ...] = ()
    delay_ms: int = 0  # SCHEDULE_RETRY: the backoff
    breaker_event: tuple[str, str] | None = None  # (pool, event) for that pool's circuit breaker
    counter: str | None = None
    # Set by the orchestrator:
    request: dict[str, Any] | None = None  # EMIT_REQUEST: the InferenceRequest record
    final: tuple[dict[str, Any], dict[str, Any]] | None = None  # EMIT_FINAL: (ContentResult, AuditRecord)
    features: frozenset[str] = frozenset()  # tenant features kept with the state (output moderation reads them)
    cancel_timers: tuple[int, ...] = ()  # timers that can no longer do anything


FallbackFn = Callable[[PendingRequest], RouteDecision | None]  # a healthy route for another pool, or None


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def backoff_ms(attempt: int, limits: Limits | None = None) -> int:
    """Delay before attempt `attempt + 1` after attempt `attempt` failed."""
    limits = limits or SETTINGS.limits
    return int(backoff(attempt, limits.retry_base_ms, limits.retry_cap_ms))


def finished_early(
    record: Mapping[str, Any],
    status: str,
    reason: str,
    now_ms: int,
    sanitized_prompt: str | None = None,
    input_verdicts: list[dict[str, Any]] | None = None,
    degraded: tuple[dict[str, Any], ...] = (),
    source: tuple[int, int] | None = None,
) -> PendingRequest:
    """A finished state for requests that end before dispatch (invalid, quota, moderation, no pool,
    a duplicate request id)."""
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
        degraded=tuple(degraded),
        source=source,
    )


def tombstone(state: PendingRequest) -> PendingRequest:
    """What a finished request keeps for `dedup_ttl_ms` once its final records are built: identity,
    route, status and the prompt's source offset (to tell a replay from a re-sent id), not the prompt,
    its parameters, verdicts, history or the model's answer. Pickled, a text request's state is
    ~1.3 kB finished (by field name, before positional pickles) and ~0.2 kB as a tombstone (`test_operators_correlate.py` bounds it); at 500
    prompts/s and a 10-minute TTL that is 300,000 tombstones in every checkpoint."""
    return evolve(state, prompt="", params={}, trace=None, input_verdicts=[], history=[], result=None,
                  degraded=())


def on_finished(state: PendingRequest, now_ms: int, limits: Limits | None = None) -> Effects:
    """A request that ended before dispatch (`finished_early`): emit its final, keep its tombstone."""
    limits = limits or SETTINGS.limits
    return Effects(EffectKind.EMIT_FINAL, state, timers=(now_ms + limits.dedup_ttl_ms,))


def _send(state: PendingRequest, now_ms: int, limits: Limits) -> Effects:
    deadline = now_ms + limits.request_timeout_ms
    sent = evolve(state, sent_at_ms=now_ms, deadline_ms=deadline, send_at_ms=None)
    return Effects(EffectKind.EMIT_REQUEST, sent, timers=(deadline,))


def on_dispatch(state: PendingRequest, now_ms: int, limits: Limits | None = None) -> Effects:
    """First attempt: send it, with a timeout timer."""
    limits = limits or SETTINGS.limits
    return _send(evolve(state, attempt=1, history=list(state.history)), now_ms, limits)


def _finish(state: PendingRequest, status: str, reason: str | None, now_ms: int, limits: Limits,
            result: dict[str, Any] | None = None, breaker: tuple[str, str] | None = None) -> Effects:
    done = evolve(state, status=status, reason=reason, result=result, finished_at_ms=now_ms,
                   deadline_ms=None, send_at_ms=None)
    return Effects(EffectKind.EMIT_FINAL, done, timers=(now_ms + limits.dedup_ttl_ms,), breaker_event=breaker)


def _failed_attempt(
    state: PendingRequest, cause: str, now_ms: int, fallback: FallbackFn | None, limits: Limits,
    retryable: bool = True,
) -> Effects:
    """Next rung of the ladder after attempt `state.attempt` failed with `cause` (timeout/error)."""
    breaker = (state.pool, "timeout" if cause == "timeout" else "failure")
    if not retryable:
        return _finish(state, "FAILED", "non_retryable_error", now_ms, limits, breaker=breaker)
    if not state.fallback_used and state.attempt < state.max_attempts:
        delay = backoff_ms(state.attempt, limits)
        nxt = evolve(state, attempt=state.attempt + 1, send_at_ms=now_ms + delay, deadline_ms=None)
        return Effects(EffectKind.SCHEDULE_RETRY, nxt, timers=(now_ms + delay,), delay_ms=delay,
                       breaker_event=breaker, counter="retries")
    if not state.fallback_used and fallback is not None:
        decision = fallback(state)
        if decision is not None and not decision.failed:
            moved = evolve(
                state, attempt=state.attempt + 1, fallback_used=True, fallback_from=state.pool,
                pool=decision.pool, model_name=decision.model_name, model_version=decision.model_version,
            )
            out = _send(moved, now_ms, limits)
            out.breaker_event, out.counter = breaker, "fallbacks"
            return out
    return _finish(state, "FAILED", f"{cause}_after_{state.attempt}_attempts", now_ms, limits, breaker=breaker)


DEADLINE_EXCEEDED = "deadline_exceeded"  # the worker's error code (inference_workers/batching.py)


def _history(state: PendingRequest, entry: dict[str, Any]) -> PendingRequest:
    return evolve(state, history=[*state.history, entry])


def _drop(state: PendingRequest | None, kind: EffectKind) -> Effects:
    if state is None:
        return Effects(kind, None, counter="late_results")
    if kind is EffectKind.DROP_DUPLICATE:
        return Effects(kind, evolve(state, duplicates=state.duplicates + 1), counter="duplicate_results")
    return Effects(kind, evolve(state, late=state.late + 1), counter="late_results")


def on_result(
    state: PendingRequest | None,
    result: Mapping[str, Any],
    now_ms: int,
    fallback: FallbackFn | None = None,
    limits: Limits | None = None,
) -> Effects:
    """Apply an InferenceResult. `fallback(state)` proposes a fallback route or None."""
    limits = limits or SETTINGS.limits
    if state is None:
        return _drop(None, EffectKind.DROP_LATE)  # unknown request (its tombstone expired, or never seen)
    if state.finished:
        return _drop(state, EffectKind.DROP_DUPLICATE)  # already finished
    attempt = int(result.get("attempt") or 0)
    if attempt < state.attempt or (attempt == state.attempt and state.send_at_ms is not None):
        return _drop(state, EffectKind.DROP_LATE)  # superseded attempt
    if attempt > state.attempt or state.sent_at_ms is None:
        return _drop(state, EffectKind.DROP_DUPLICATE)  # an attempt never sent

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
    if result.get("error") == DEADLINE_EXCEEDED:  # the worker found it past its deadline and did not run it
        return _finish(state, "EXPIRED", DEADLINE_EXCEEDED, now_ms, limits)  # not the pool's fault
    return _failed_attempt(state, "error", now_ms, fallback, limits, retryable=bool(result.get("retryable", True)))


MAX_JOB_WAITS = 20  # a request waits on through at most this many job-side delays
JOB_LAG_MIN_MS = 1_000  # a results intake this far behind is the job's backlog, not jitter


def on_timeout(
    state: PendingRequest | None, now_ms: int, fallback: FallbackFn | None = None, limits: Limits | None = None,
    job_lag_ms: int = 0,
) -> Effects:
    """The current attempt's deadline passed without a result (while the job was `job_lag_ms` behind)."""
    limits = limits or SETTINGS.limits
    if state is None or state.finished or state.deadline_ms is None or now_ms < state.deadline_ms:
        return Effects(EffectKind.WAIT, state)
    # A timer that fires well after its deadline fired late because the job was not running then (a
    # TaskManager restored from a checkpoint) or was far behind: the answer may be waiting in its input.
    # Measured (rscf chaos taskmanager-kill, loaded machine): charging those timeouts opened the echo
    # breaker and failed 949 of 1,250 prompts with no_healthy_pool after the restore.
    late_ms = now_ms - state.deadline_ms
    behind_ms = max(job_lag_ms, min(late_ms, limits.request_timeout_ms) if late_ms >= JOB_LAG_MIN_MS else 0)
    if behind_ms >= JOB_LAG_MIN_MS and state.job_waits < MAX_JOB_WAITS:
        deadline = now_ms + behind_ms
        return Effects(EffectKind.DEFER_TIMEOUT, evolve(state, deadline_ms=deadline, job_waits=state.job_waits + 1),
                       timers=(deadline,), counter="timeouts_deferred_job_behind")
    state = _history(state, {"attempt": state.attempt, "pool": state.pool, "model_version": state.model_version,
                             "outcome": "timeout", "error": None, "at_ms": now_ms, "queue_ms": 0,
                             "inference_ms": 0})
    return _failed_attempt(state, "timeout", now_ms, fallback, limits)


def on_timer(
    state: PendingRequest | None, now_ms: int, fallback: FallbackFn | None = None, limits: Limits | None = None,
    job_lag_ms: int = 0,
) -> Effects:
    """Any timer of the key fired: send a due retry, time out the attempt, or expire the tombstone."""
    limits = limits or SETTINGS.limits
    if state is None:
        return Effects(EffectKind.WAIT, None)
    if state.finished:
        if now_ms >= (state.finished_at_ms or 0) + limits.dedup_ttl_ms:
            return Effects(EffectKind.CLEAR, None)
        return Effects(EffectKind.WAIT, state)
    if state.send_at_ms is not None:
        if now_ms >= state.send_at_ms:
            return _send(state, now_ms, limits)
        return Effects(EffectKind.WAIT, state)
    return on_timeout(state, now_ms, fallback, limits, job_lag_ms)
