"""Orchestrate: route, dispatch, correlate, output moderation and audit, for one request.

A request is known by (tenant_id, request_id): request ids are unique per tenant only, and the
orchestrator is keyed by both (`schemas.keys.identity_key`), so two tenants never share state.
A tenant that sends another prompt under a request id it is still using (pending, or finished
within the dedup TTL) gets a REJECTED final for it, reason `duplicate_request_id`
(`Orchestrator.on_duplicate`).

`Orchestrator.on_input` takes what reaches the orchestrator function (an `Admitted`
prompt, a `Finished` refusal, a `ResultIn`) with the request's `Slot`, and
`on_timer` a timer of its key; both return the `operators.correlate.Effects` the
Flink glue applies. Every step is one visible call:

    route -> dispatch -> correlate (results, timers) -> output moderation -> audit

A routed prompt becomes pending state and its first attempt is dispatched; results
and timers go through the correlate decider, which asks `route(..., exclude=pool)`
for a fallback; a finished request's output is moderated and its final records built.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from jobs.config import JOB_VERSION
from jobs.envelopes import Admitted, Finished, OrchestratorInput, ResultIn, Slot
from jobs.intake import BREAKER, ROLLOUT
from operators import correlate
from operators.admit import TenantPolicy
from operators.audit import build_records
from operators.correlate import EffectKind, Effects, FallbackFn, PendingRequest, evolve
from operators.dispatch import inference_request, new_pending
from operators.moderate import Moderator
from operators.records import to_ms
from operators.output_moderation import ModeratedFinal, moderate_output, moderated_final, text_to_moderate
from operators.route import (
    DEFAULT_ROLLOUTS, DISPATCH, BreakerConfig, CircuitBreaker, Rollout, RouteDecision, apply_breaker_command,
    apply_rollout_event, route,
)
from rscf.settings import SETTINGS, Limits


class Orchestrator:
    """The orchestrate step of one subtask, with the control state it routes by.

    Rollouts mirror the broadcast state. Circuit breakers live only here: they
    are per-subtask soft state (not checkpointed), rebuilt from traffic after a
    restart, and each parallel subtask judges pool health from its own share.
    """

    def __init__(self, moderator: Moderator | None = None, job_version: str = JOB_VERSION,
                 breaker_cfg: BreakerConfig = BreakerConfig(), tombstone_timers: bool = True,
                 limits: Limits | None = None):
        """`tombstone_timers=False` when the state backend expires tombstones itself (state TTL =
        dedup_ttl_ms): one timer registration and one timer callback less per request. `limits`: the
        job's (`JobConfig.limits()`: the backfill lane's attempts have a longer deadline)."""
        self.limits = limits or SETTINGS.limits
        self.rollouts: dict[str, Rollout] = dict(DEFAULT_ROLLOUTS)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.moderator = moderator or Moderator()
        self.job_version = job_version
        self.breaker_cfg = breaker_cfg
        self.tombstone_timers = tombstone_timers
        self.intake = ResultIntakeLag()

    # -- control
    def on_control(self, event: Mapping[str, Any], now_ms: int) -> None:
        self.rollouts = apply_rollout_event(self.rollouts, event)
        self.breakers = apply_breaker_command(self.breakers, event, now_ms)

    def restore_control(self, entries: Iterable[tuple[str, Any]], now_ms: int) -> None:
        """Re-apply checkpointed control state (broadcast-state entries) to a fresh instance."""
        for key, entry in entries:
            if key.startswith(ROLLOUT):
                self.on_control({"rollout": entry}, now_ms)
            elif key.startswith(BREAKER) and entry.get("action") == "FORCE_OPEN":
                self.on_control({"breaker": entry}, now_ms)

    # -- inputs
    def on_input(self, value: OrchestratorInput, slot: Slot | None, now_ms: int) -> Effects:
        if isinstance(value, ResultIn):
            return self.on_result(value.record, slot, now_ms)
        if slot is not None:  # the same (tenant_id, request_id) again, pending or within the dedup TTL
            return self.on_duplicate(value, slot, now_ms)
        if isinstance(value, Finished):
            return self._settle(correlate.on_finished(value.state, now_ms, self.limits), value.features, now_ms)
        return self.on_admitted(value, now_ms)

    def on_duplicate(self, value: Admitted | Finished, slot: Slot, now_ms: int) -> Effects:
        """A prompt under a (tenant_id, request_id) that already has a request, pending or finished.

        The same Kafka record read again (same partition and offset: a replay, e.g. after an upgrade
        that dropped a source's state) is the same request: dropped, it has or will get its one
        final. Any other prompt under the id, a client's re-send included, gets a final of its own,
        REJECTED with reason `duplicate_request_id`, and its audit record; the first request and
        its state are untouched.
        """
        if same_record(value, slot.pending):
            return Effects(EffectKind.DROP_DUPLICATE, slot.pending, counter="duplicate_prompts",
                           features=slot.features)
        if isinstance(value, Finished):
            dup = evolve(value.state, status="REJECTED", reason=DUPLICATE_REQUEST_ID, finished_at_ms=now_ms)
        else:
            dup = correlate.finished_early(value.record, "REJECTED", DUPLICATE_REQUEST_ID, now_ms,
                                           value.sanitized_prompt, value.verdicts, value.degraded, value.source)
        effects = Effects(EffectKind.REJECT_DUPLICATE, slot.pending, counter="duplicate_request_ids",
                          features=slot.features)
        effects.final = build_records(dup, now_ms, self.job_version)
        return effects

    def on_admitted(self, value: Admitted, now_ms: int) -> Effects:
        policy = TenantPolicy(value.record["tenant_id"], value.tier, features=value.features)
        decision = route(value.record, policy, self.rollouts, self.breakers, now_ms, self.breaker_cfg)
        if decision.failed:
            state = correlate.finished_early(value.record, "FAILED", decision.reason, now_ms,
                                             value.sanitized_prompt, value.verdicts, value.degraded, value.source)
            effects = correlate.on_finished(state, now_ms, self.limits)
            effects.counter = "no_healthy_pool"
            return self._settle(effects, value.features, now_ms)
        pending = new_pending(value.record, decision, value.accepted_at_ms, value.sanitized_prompt,
                              value.verdicts, tier=value.tier, degraded=value.degraded,
                              moderation_fail_closed=value.moderation_fail_closed, source=value.source)
        return self._settle(correlate.on_dispatch(pending, now_ms, self.limits), value.features, now_ms)

    def on_result(self, result: Mapping[str, Any], slot: Slot | None, now_ms: int) -> Effects:
        self.intake.observe(result, now_ms)
        pending = slot.pending if slot else None
        features = slot.features if slot else frozenset()
        effects = self._settle(correlate.on_result(pending, result, now_ms, self._fallback(features, now_ms),
                                                   self.limits), features, now_ms)
        deadline = pending.deadline_ms if pending is not None else None
        if deadline is not None and (effects.state is None or effects.state.deadline_ms != deadline):
            effects.cancel_timers = (deadline,)  # answered: its timeout timer would only find nothing to do
        return effects

    def on_timer(self, slot: Slot | None, now_ms: int) -> Effects:
        if slot is None:
            return Effects(EffectKind.WAIT, None)
        return self._settle(correlate.on_timer(slot.pending, now_ms, self._fallback(slot.features, now_ms),
                                               self.limits, self.intake.lag_ms(now_ms)), slot.features, now_ms)

    # -- steps
    def dispatch(self, effects: Effects, now_ms: int) -> None:
        """Hand the state's current attempt to its pool: the InferenceRequest record, and a DISPATCH
        on the pool's breaker (so half-open probes are counted when they are sent)."""
        effects.request = inference_request(effects.state)
        self._breaker(effects.state.pool, DISPATCH, now_ms)

    def moderate_output(self, state: PendingRequest, features: frozenset[str]) -> ModeratedFinal:
        """Output moderation of a finished request (only a success's text is checked)."""
        text = text_to_moderate(state)
        if text is None:
            return moderated_final(state)
        policy = TenantPolicy(state.tenant_id, state.tier, features=features,  # as admitted (Slot.features)
                              moderation_fail_closed=state.moderation_fail_closed)
        outcome = moderate_output(text, policy, self.moderator.classifier(policy), self.moderator.blocked_terms)
        return moderated_final(state, outcome)

    def audit(self, effects: Effects, final: ModeratedFinal, now_ms: int) -> None:
        """The final ContentResult and AuditRecord; the tombstone keeps the status they carry."""
        state = effects.state
        effects.final = build_records(state, now_ms, self.job_version, final)
        effects.state = correlate.tombstone(evolve(state, status=final.status, reason=final.reason))
        if not self.tombstone_timers:
            effects.timers = ()

    # -- helpers
    def _settle(self, effects: Effects, features: frozenset[str], now_ms: int) -> Effects:
        """Complete a correlate decision with what this step owns: breakers, dispatch, the final records."""
        effects.features = features
        if effects.breaker_event is not None:
            self._breaker(*effects.breaker_event, now_ms)
        if effects.kind is EffectKind.EMIT_REQUEST:
            self.dispatch(effects, now_ms)
        elif effects.kind is EffectKind.EMIT_FINAL:
            self.audit(effects, self.moderate_output(effects.state, features), now_ms)
        return effects

    def _fallback(self, features: frozenset[str], now_ms: int) -> FallbackFn:
        def choose(state: PendingRequest) -> RouteDecision:
            policy = TenantPolicy(state.tenant_id, state.tier, features=features)
            record = {"request_id": state.request_id, "modality": state.modality, "prompt": state.prompt,
                      "params": state.params, "priority": state.priority}  # what it was routed by
            return route(record, policy, self.rollouts, self.breakers, now_ms, self.breaker_cfg, exclude=state.pool)
        return choose

    def _breaker(self, pool: str | None, event: str, now_ms: int) -> None:
        if pool:
            current = self.breakers.get(pool, CircuitBreaker())
            self.breakers[pool] = current.on_event(event, now_ms, self.breaker_cfg)


DUPLICATE_REQUEST_ID = "duplicate_request_id"


def number_final(effects: Effects) -> str | None:
    """The name of the final `effects` carries, the same on a replay from a checkpoint and different for
    any other final (`jobs.replay_filter`): its number under the request identity (0 first, 1 for a
    re-sent id's REJECTED final, ..., counted in the state it keeps, which a restore brings back) and the
    Kafka position of the prompt that made that state (a job started afresh numbers from 0 again, but
    its prompts are other records). None: no final, or no state to count in."""
    state = effects.state
    if effects.final is None or state is None:
        return None
    effects.state = evolve(state, final_seq=state.final_seq + 1)
    where = f"@{state.source[0]}:{state.source[1]}" if state.source else ""
    return f"{state.final_seq}{where}"


class ResultIntakeLag:
    """How far behind this subtask reads results: read time minus the worker's `completed_at`.

    Why (issue #14): when the job is the bottleneck, answers wait in its own input while their
    requests' deadlines pass; counting those timeouts opened the breakers of healthy pools
    (2,726 of 4,000 prompts FAILED no_healthy_pool at 200/s). The lag of the latest result read
    is that wait; it holds for `fresh_ms` after it was seen (no results at all: no lag to blame)."""

    def __init__(self, fresh_ms: int = 5_000):
        self.fresh_ms = fresh_ms
        self._lag_ms = 0
        self._seen_at_ms = 0

    def observe(self, result: Mapping[str, Any], now_ms: int) -> None:
        completed = result.get("completed_at")
        if completed is None:
            return
        try:
            self._lag_ms = max(now_ms - to_ms(completed), 0)
        except (TypeError, ValueError):
            return
        self._seen_at_ms = now_ms

    def lag_ms(self, now_ms: int) -> int:
        return self._lag_ms if now_ms - self._seen_at_ms <= self.fresh_ms else 0


def same_record(value: Admitted | Finished, pending: PendingRequest) -> bool:
    """Whether `value` comes from the Kafka record `pending` was made from (read again)."""
    source = value.state.source if isinstance(value, Finished) else value.source
    return source is not None and source == pending.source
