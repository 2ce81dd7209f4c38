"""Orchestrate: route, dispatch, correlate, output moderation and audit, for one request_id.

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
from operators.output_moderation import ModeratedFinal, moderate_output, moderated_final, text_to_moderate
from operators.route import (
    DEFAULT_ROLLOUTS, DISPATCH, BreakerConfig, CircuitBreaker, Rollout, RouteDecision, apply_breaker_command,
    apply_rollout_event, route,
)


class Orchestrator:
    """The orchestrate step of one subtask, with the control state it routes by.

    Rollouts mirror the broadcast state. Circuit breakers live only here: they
    are per-subtask soft state (not checkpointed), rebuilt from traffic after a
    restart, and each parallel subtask judges pool health from its own share.
    """

    def __init__(self, moderator: Moderator | None = None, job_version: str = JOB_VERSION,
                 breaker_cfg: BreakerConfig = BreakerConfig(), tombstone_timers: bool = True):
        """`tombstone_timers=False` when the state backend expires tombstones itself (state TTL =
        dedup_ttl_ms): one timer registration and one timer callback less per request."""
        self.rollouts: dict[str, Rollout] = dict(DEFAULT_ROLLOUTS)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.moderator = moderator or Moderator()
        self.job_version = job_version
        self.breaker_cfg = breaker_cfg
        self.tombstone_timers = tombstone_timers

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
        if slot is not None:  # the same request_id again (producer retry, replay): one final only
            return Effects(EffectKind.DROP_DUPLICATE, slot.pending, counter="duplicate_prompts",
                           features=slot.features)
        if isinstance(value, Finished):
            return self._settle(correlate.on_finished(value.state, now_ms), value.features, now_ms)
        return self.on_admitted(value, now_ms)

    def on_admitted(self, value: Admitted, now_ms: int) -> Effects:
        policy = TenantPolicy(value.record["tenant_id"], value.tier, features=value.features)
        decision = route(value.record, policy, self.rollouts, self.breakers, now_ms, self.breaker_cfg)
        if decision.failed:
            state = correlate.finished_early(value.record, "FAILED", decision.reason, now_ms,
                                             value.sanitized_prompt, value.verdicts)
            effects = correlate.on_finished(state, now_ms)
            effects.counter = "no_healthy_pool"
            return self._settle(effects, value.features, now_ms)
        pending = new_pending(value.record, decision, value.accepted_at_ms, value.sanitized_prompt,
                              value.verdicts, tier=value.tier)
        return self._settle(correlate.on_dispatch(pending, now_ms), value.features, now_ms)

    def on_result(self, result: Mapping[str, Any], slot: Slot | None, now_ms: int) -> Effects:
        pending = slot.pending if slot else None
        features = slot.features if slot else frozenset()
        effects = self._settle(correlate.on_result(pending, result, now_ms, self._fallback(features, now_ms)),
                               features, now_ms)
        deadline = pending.deadline_ms if pending is not None else None
        if deadline is not None and (effects.state is None or effects.state.deadline_ms != deadline):
            effects.cancel_timers = (deadline,)  # answered: its timeout timer would only find nothing to do
        return effects

    def on_timer(self, slot: Slot | None, now_ms: int) -> Effects:
        if slot is None:
            return Effects(EffectKind.WAIT, None)
        return self._settle(correlate.on_timer(slot.pending, now_ms, self._fallback(slot.features, now_ms)),
                            slot.features, now_ms)

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
        policy = TenantPolicy(state.tenant_id, state.tier, features=features)  # as admitted (Slot.features)
        outcome = moderate_output(text, policy, self.moderator.classifier(policy), self.moderator.blocked_terms)
        return moderated_final(state, outcome)

    def audit(self, effects: Effects, final: ModeratedFinal, now_ms: int) -> None:
        """The final ContentResult and AuditRecord; the tombstone keeps the status they carry."""
        state = effects.state
        effects.final = build_records(state, now_ms, self.job_version, final)
        if final.status != state.status or final.reason != state.reason:
            effects.state = evolve(state, status=final.status, reason=final.reason)
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
