"""Dispatch: hand a routed request to its worker pool.

`new_pending` turns a route decision into the request's pending state, the value
`operators.correlate` tracks until a final; `inference_request` is the
InferenceRequest record of the state's current attempt, which the job writes to
`genai.inference.requests.<pool>` keyed by (tenant_id, request_id) (`schemas.keys`). The record names its
attempt, so a result says which attempt it answers (correlate drops late and
duplicate ones), and its deadline, so a worker skips a request nobody waits for.
"""

from __future__ import annotations

from typing import Any, Mapping

from operators.correlate import PendingRequest, sha256_text
from operators.records import full_params, to_ms
from operators.route import RouteDecision
from rscf.settings import SETTINGS, Limits


def new_pending(
    record: Mapping[str, Any],
    decision: RouteDecision,
    accepted_at_ms: int,
    sanitized_prompt: str | None = None,
    input_verdicts: list[dict[str, Any]] | None = None,
    tier: str = "STANDARD",
    limits: Limits | None = None,
    degraded: tuple[dict[str, Any], ...] = (),
    moderation_fail_closed: bool = False,
    source: tuple[int, int] | None = None,
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
        degraded=tuple(degraded),
        moderation_fail_closed=moderation_fail_closed,
        source=source,
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
