"""The artifact store and its key scheme (inference_workers/artifacts.py)."""

from __future__ import annotations

import socket
import time
from datetime import datetime, timezone

import pytest

from inference_workers.artifacts import ArtifactStore, artifact_key
from inference_workers.metrics import WorkerMetrics


def test_artifact_key_layout() -> None:
    at = int(datetime(2025, 3, 4, 12, tzinfo=timezone.utc).timestamp() * 1000)
    assert artifact_key("image", "abc", 2, "image/png", at) == "artifacts/image/2025-03-04/abc-2.png"
    assert artifact_key("speech", "a/b", 0, "audio/wav", at) == "artifacts/speech/2025-03-04/a_b-0.wav"
    assert artifact_key("x", "id", 0, None, at).endswith("id-0.bin")
    # request ids are unique per tenant only: two tenants' artifacts never share an object
    assert artifact_key("image", "abc", 2, "image/png", at, "acme") == "tenants/acme/artifacts/image/2025-03-04/abc-2.png"
    # tenants whose ids a plain character mapping would merge get different, separator-free prefixes
    odd = artifact_key("image", "abc", 2, "image/png", at, "a/b")
    assert odd.startswith("tenants/~") and odd.count("/") == 5
    assert odd != artifact_key("image", "abc", 2, "image/png", at, "a_b")
    assert artifact_key("image", "abc", 2, "image/png", at, "..").startswith("tenants/~")
    assert artifact_key("image", "abc", 2, "image/png", at, "beta") != artifact_key("image", "abc", 2, "image/png", at, "acme")


def test_artifact_store_reports_a_refused_s3_at_once_and_gives_up_after_its_budget() -> None:
    """A closed port stands in for S3 being down: the first failure is counted right away (the
    client's own hidden retries used to delay it by ~6 s per call) and the store's backoff ends
    at max_retry_s with the error raised, so the worker answers retryable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    metrics = WorkerMetrics("image", "unit")
    store = ArtifactStore("rscf-artifacts", metrics, max_retry_s=1.0, endpoint=f"127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(Exception):
        store.put_artifact("image", {"request_id": "x", "attempt": 1}, b"png", "image/png")
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, f"gave up after {elapsed:.1f} s, not within the 1 s budget plus one step"
    assert metrics.outages.labels("image", "s3")._value.get() == 1
