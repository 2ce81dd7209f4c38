"""The artifact store: generated images and audio go to S3, never on Kafka; results carry their URIs."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from inference_workers.metrics import WorkerMetrics
from rscf.clock import backoff_delays, now_ms
from rscf.s3 import ObjectStorePayloads
from rscf.s3_security import WORKER
from schemas.keys import tenant_object_prefix

log = logging.getLogger(__name__)

_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/mpeg": "mp3",
    "text/plain": "txt",
    "application/json": "json",
}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def artifact_key(pool: str, request_id: str, attempt: int, content_type: str | None, at_ms: int,
                 tenant_id: str | None = None) -> str:
    """``tenants/<tenant>/artifacts/<pool>/<yyyy-mm-dd>/<request_id>-<attempt>.<ext>``: one object per attempt,
    so a duplicate run of the same attempt overwrites rather than piles up. The tenant prefix comes first
    (`schemas.keys.tenant_object_prefix`, injective) so a tenant's objects are one prefix: the gateway
    presigns only keys under the caller's own prefix (issue #16). A request without a tenant (never a
    valid one) goes under ``artifacts/`` and is served to nobody."""
    day = datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
    ext = _EXTENSIONS.get((content_type or "").split(";")[0].strip().lower(), "bin")
    prefix = tenant_object_prefix(tenant_id) if tenant_id else ""
    return f"{prefix}artifacts/{pool}/{day}/{_safe(request_id)}-{attempt}.{ext}"


class ArtifactStore:
    """Uploads artifacts to S3 with exponential backoff; counts outages.

    The S3 client fails fast (``rscf.s3.fail_fast_http_client``), so this backoff is the only retry loop."""

    def __init__(self, bucket: str, metrics: WorkerMetrics, max_retry_s: float, endpoint: str | None = None) -> None:
        self.bucket = bucket
        self.metrics = metrics
        self.max_retry_s = max_retry_s
        self.objects = ObjectStorePayloads(bucket, endpoint, identity=WORKER)  # write-only key

    def put_artifact(self, pool: str, request: dict, data: bytes, content_type: str | None) -> str:
        """Store one request's artifact under its ``artifact_key``; returns ``s3://bucket/key``."""
        key = artifact_key(pool, str(request["request_id"]), int(request.get("attempt") or 0), content_type, now_ms(),
                           request.get("tenant_id"))
        return self.put(key, data, content_type)

    def put(self, key: str, data: bytes, content_type: str | None) -> str:
        """Store and return ``s3://bucket/key``; raises after ``max_retry_s`` of failures."""
        deadline = time.monotonic() + self.max_retry_s
        down = False
        for delay in backoff_delays():
            try:
                uri = self.objects.put(key, data, content_type)
                if down:
                    log.info("artifact upload succeeded again after the outage")
                return uri
            except Exception as exc:  # noqa: BLE001 - S3 down, throttled, DNS...: retry
                if not down:
                    down = True
                    self.metrics.outages.labels(self.metrics.pool, "s3").inc()
                    log.warning("artifact upload failed, retrying: %s", exc)
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
        raise RuntimeError("unreachable")
