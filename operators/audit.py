"""Final ContentResult and AuditRecord from a finished PendingRequest.

Latency: total = completed - created_at (the producer's timestamp); queue and
inference come from the InferenceResult that ended the request; pipeline is the
rest (Kafka hops, Flink operators, retries and backoff), never negative.
Cost units: the pool's price (`rscf.pools`) times what the pool produces: output tokens
for text (tokens_out, or words*1.3 of the output when a worker leaves it out),
images for image, audio seconds for speech (estimated at 15 characters of
prompt per second, as the result carries no duration), plus a per-request fee.
Only SUCCEEDED requests cost anything; the status, reason, text and verdicts are
those after output moderation (`operators.output_moderation.ModeratedFinal`).
`degraded` lists every step skipped or refused because a dependency was down
(classifier, RAG, templates from the request's state and its output moderation;
artifact uploads from its attempts' errors), in both records.
"""

from __future__ import annotations

import math
from typing import Any

from operators.correlate import PendingRequest
from operators.output_moderation import ModeratedFinal, moderated_final
from operators.records import degradation
from rscf.pools import POOL_BY_NAME, PoolPrice

AUDIO_CHARS_PER_SECOND = 15.0
NO_PRICE = PoolPrice()  # a pool the table does not know costs nothing


def cost_units(pool: str | None, modality: str, result: dict[str, Any] | None, prompt: str) -> float:
    if pool is None or result is None:
        return 0.0
    row = POOL_BY_NAME.get(pool)
    price = row.price if row is not None else NO_PRICE
    cost = price.per_request
    if modality == "TEXT":
        tokens = result.get("tokens_out")
        if tokens is None:
            tokens = math.ceil(len((result.get("output_text") or "").split()) * 1.3)
        cost += price.per_1k_tokens * tokens / 1000.0
    elif modality == "IMAGE":
        cost += price.per_image * max(len(result.get("artifact_uris") or []), 1)
    elif modality == "AUDIO":
        cost += price.per_audio_second * len(prompt) / AUDIO_CHARS_PER_SECOND
    return round(cost, 6)


def latency(state: PendingRequest, completed_ms: int) -> dict[str, int]:
    total = max(completed_ms - state.created_at_ms, 0)
    result = state.result or {}
    queue = int(result.get("queue_ms") or 0)
    inference = int(result.get("inference_ms") or 0)
    return {
        "total_ms": total,
        "pipeline_ms": max(total - queue - inference, 0),
        "queue_ms": queue,
        "inference_ms": inference,
    }


# Worker errors that say a dependency of the worker was down rather than the model failing.
ATTEMPT_DEPENDENCIES = {"artifact_upload_failed": ("artifacts", "object_storage")}


def attempt_degradations(state: PendingRequest) -> list[dict[str, Any]]:
    """For a request that did not succeed, a `degraded` entry per dependency its attempts failed on
    (object storage down for an artifact: the final's reason only says `error_after_<n>_attempts`)."""
    if state.status == "SUCCEEDED":
        return []
    out, seen = [], set()
    for entry in state.history:
        code = str(entry.get("error") or "").split(":", 1)[0].strip()
        if code in ATTEMPT_DEPENDENCIES and code not in seen:
            seen.add(code)
            stage, dependency = ATTEMPT_DEPENDENCIES[code]
            out.append(degradation(stage, "failed", dependency, f"attempt {entry.get('attempt')}: {entry.get('error')}"))
    return out


def build_records(
    state: PendingRequest,
    now_ms: int,
    job_version: str,
    final: ModeratedFinal | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ContentResult, AuditRecord) for a finished state; `final`: its output moderation (none: unmoderated)."""
    if not state.finished:
        raise ValueError(f"request {state.request_id} is still pending")
    status, reason, output_text, verdicts, degraded = final if final is not None else moderated_final(state)
    degraded = [*degraded, *attempt_degradations(state)]
    result = state.result or {}
    succeeded = status == "SUCCEEDED"
    lat = latency(state, now_ms)
    cost = cost_units(state.pool, state.modality, state.result, state.prompt) if succeeded else 0.0
    dispatched = state.attempt > 0
    content = {
        "request_id": state.request_id,
        "tenant_id": state.tenant_id,
        "modality": state.modality,
        "status": status,
        "reason": reason,
        "output_text": output_text if succeeded else None,
        "artifact_uris": list(result.get("artifact_uris") or []) if succeeded else [],
        "model_name": state.model_name if dispatched else None,
        "model_version": state.model_version if dispatched else None,
        "pool": state.pool if dispatched else None,
        "attempts": state.attempt,
        "verdicts": verdicts,
        "degraded": degraded,
        "latency": lat,
        "cost_units": cost,
        "created_at": state.created_at_ms,
        "completed_at": now_ms,
    }
    audit = {
        "request_id": state.request_id,
        "tenant_id": state.tenant_id,
        "status": status,
        "reason": reason,
        "prompt_sha256": state.prompt_sha256,
        "model_name": content["model_name"],
        "model_version": content["model_version"],
        "pool": content["pool"],
        "verdicts": verdicts,
        "degraded": degraded,
        "attempts": state.attempt,
        "latency": lat,
        "cost_units": cost,
        "recorded_at": now_ms,
        "job_version": job_version,
    }
    return content, audit
