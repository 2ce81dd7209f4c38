"""Final ContentResult and AuditRecord from a finished PendingRequest.

Latency: total = completed - created_at (the producer's timestamp); queue and
inference come from the InferenceResult that ended the request; pipeline is the
rest (Kafka hops, Flink operators, retries and backoff), never negative.
Cost units: a per-pool price table times what the pool produces: output tokens
for text (tokens_out, or words*1.3 of the output when a worker leaves it out),
images for image, audio seconds for speech (estimated at 15 characters of
prompt per second, as the result carries no duration), plus a per-request fee.
Only SUCCEEDED requests cost anything. Output moderation can turn a success
into REJECTED (reason `moderation:<check>`) or redact its text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from operators.correlate import PendingRequest, sha256_text
from operators.moderation import ModerationOutcome

AUDIO_CHARS_PER_SECOND = 15.0


@dataclass(frozen=True)
class PoolPrice:
    per_request: float = 0.0
    per_1k_tokens: float = 0.0
    per_image: float = 0.0
    per_audio_second: float = 0.0


PRICES: dict[str, PoolPrice] = {
    "text-small": PoolPrice(per_request=0.01, per_1k_tokens=0.5),
    "text-large": PoolPrice(per_request=0.02, per_1k_tokens=2.0),
    "image": PoolPrice(per_request=0.02, per_image=1.0),
    "speech": PoolPrice(per_request=0.01, per_audio_second=0.05),
    "echo": PoolPrice(),
}


def prompt_sha256(sanitized_prompt: str) -> str:
    return sha256_text(sanitized_prompt)


def cost_units(pool: str | None, modality: str, result: dict[str, Any] | None, prompt: str,
               prices: dict[str, PoolPrice] = PRICES) -> float:
    if pool is None or result is None:
        return 0.0
    price = prices.get(pool, PoolPrice())
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


def build_records(
    state: PendingRequest,
    now_ms: int,
    job_version: str,
    output: ModerationOutcome | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ContentResult, AuditRecord) for a finished state; `output` is moderate_output of a success."""
    if not state.finished:
        raise ValueError(f"request {state.request_id} is still pending")
    status, reason = state.status, state.reason
    result = state.result or {}
    output_text = result.get("output_text")
    verdicts = list(state.input_verdicts)
    if output is not None:
        verdicts.extend(output.verdicts)
        if status == "SUCCEEDED" and output.action == "BLOCK":
            status, reason, output_text = "REJECTED", output.reason, None
        elif output.action == "REDACT":
            output_text = output.prompt
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
        "attempts": state.attempt,
        "latency": lat,
        "cost_units": cost,
        "recorded_at": now_ms,
        "job_version": job_version,
    }
    return content, audit
