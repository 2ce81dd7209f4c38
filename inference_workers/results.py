"""Result records: the InferenceResult a worker answers each request with, its Kafka key, and the units it counts.

A result is keyed by its request's identity (tenant_id, U+001F, request_id: `schemas.keys`), as the job
keys its state. A result too large for Kafka (`SETTINGS.limits.max_record_bytes`) would fail its
produce call and never be answered: its text goes to the artifact store and the result carries a
preview and the artifact's URI (`fit_to_kafka`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from inference_workers.batching import to_epoch_ms
from inference_workers.handlers.base import InferenceOutput, ModelHandler
from rscf.clock import now_ms
from rscf.settings import SETTINGS
from schemas.keys import identity_key

PREVIEW_CHARS = 2000  # of a text kept as an artifact, inline in its result
TRUNCATED = " ...[truncated: the whole text is the first artifact]"


def result_key(result: dict) -> bytes:
    """The Kafka key of a result: its request's identity key."""
    return identity_key(result.get("tenant_id"), str(result["request_id"])).encode("utf-8")


def fit_to_kafka(result: dict, encode: Callable[[dict], bytes], store_text: Callable[[bytes], str] | None,
                 limit: int | None = None) -> tuple[dict, bytes]:
    """(result, its encoding) within `limit` with its key: a text too large goes to `store_text` (an
    artifact; the result keeps a preview and its URI), and when that fails, or the bulk is not the
    text, the result is a non-retryable error `result_too_large` (the same input would be as large)."""
    limit = limit if limit is not None else SETTINGS.limits.max_record_bytes
    value = encode(result)
    key_bytes = len(result_key(result))
    if len(value) + key_bytes <= limit:
        return result, value
    size = len(value)
    text = result.get("output_text") or ""
    if text and store_text is not None:
        try:
            uri = store_text(text.encode("utf-8"))
            moved = dict(result, output_text=text[:PREVIEW_CHARS] + TRUNCATED,
                         artifact_uris=[uri, *(result.get("artifact_uris") or [])])
            moved_value = encode(moved)
            if len(moved_value) + key_bytes <= limit:
                return moved, moved_value
        except Exception as exc:  # noqa: BLE001 - artifact store down: answer with an error instead
            size_note = f"{size} bytes > {limit}; the artifact store failed: {type(exc).__name__}: {exc}"
        else:
            size_note = f"{size} bytes > {limit} even with the text as an artifact"
    else:
        size_note = f"{size} bytes > {limit}"
    failed = dict(result, status="ERROR", output_text=None, artifact_uris=[], retryable=False,
                  error=f"result_too_large: {size_note}"[:1000])
    return failed, encode(failed)


def error_code(error: str | None) -> str:
    """Stable reason code of an error string ("rejected: too long" -> "rejected")."""
    return (error or "unknown").split(":", 1)[0].strip() or "unknown"


def output_units(output: InferenceOutput) -> tuple[str, float]:
    """What one output counts as: its tokens, one image, one audio clip, or one request."""
    if output.tokens_out:
        return "tokens", float(output.tokens_out)
    ctype = (output.content_type or "").lower()
    if ctype.startswith("image/"):
        return "images", 1.0
    if ctype.startswith("audio/"):
        return "audio_clips", 1.0
    return "requests", 1.0


@dataclass(frozen=True)
class ResultBuilder:
    """Result records of one worker: who answered (pool, worker, model) and what came of the request."""

    pool: str
    worker_id: str
    handler: ModelHandler

    def base(self, req: dict) -> dict:
        return {
            "request_id": str(req.get("request_id")),
            "tenant_id": str(req.get("tenant_id") or ""),  # request ids are unique per tenant only
            "attempt": int(req.get("attempt") or 0),
            "pool": self.pool,
            "worker_id": self.worker_id,
            "model_name": self.handler.model_name,
            "model_version": self.handler.model_version,
            "status": "OK",
            "output_text": None,
            "artifact_uris": [],
            "content_type": None,
            "error": None,
            "retryable": True,
            "queue_ms": 0,
            "inference_ms": 0,
            "batch_size": 0,
            "tokens_out": None,
            "completed_at": now_ms(),
        }

    def error(self, req: dict, error: str, retryable: bool) -> dict:
        result = self.base(req)
        created = to_epoch_ms(req.get("created_at"))
        if created:
            result["queue_ms"] = max(0, now_ms() - created)
        result.update(status="ERROR", error=error, retryable=retryable)
        return result

    def ok(self, req: dict, output: InferenceOutput, started: int, inference_ms: int, batch_size: int) -> dict:
        """The result of a request the model ran (``started``: epoch ms its batch began); status ERROR
        when the handler reported a failure for this request alone. Artifacts are stored by the caller."""
        created = to_epoch_ms(req.get("created_at"))
        result = self.base(req)
        result.update(
            queue_ms=max(0, started - created) if created else 0,
            inference_ms=inference_ms,
            batch_size=batch_size,
            output_text=output.text,
            content_type=output.content_type,
            tokens_out=output.tokens_out,
        )
        if output.error:
            result.update(status="ERROR", error=output.error, retryable=bool(output.retryable))
        return result
