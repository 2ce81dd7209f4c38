"""Result records: the InferenceResult a worker answers each request with, and the units it counts."""

from __future__ import annotations

from dataclasses import dataclass

from inference_workers.batching import to_epoch_ms
from inference_workers.handlers.base import InferenceOutput, ModelHandler
from rscf.clock import now_ms


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
