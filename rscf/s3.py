"""The one S3 client factory: the artifact store, the model registry, the stack and the demo use it."""

from __future__ import annotations

from typing import Any

from rscf.settings import SETTINGS


def fail_fast_http_client() -> Any:
    """HTTP pool that fails fast when S3 is down, so the caller's backoff is the only retry loop: the
    minio default retries a refused connection 5 times (about 6 s) inside each call and waits up to
    5 minutes on a silent socket, which hid an outage from the metrics and stretched every backoff step."""
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
        maxsize=10,
        # connect=0: a refused connection is reported at once; one retry for a stale pooled socket.
        retries=urllib3.Retry(total=1, connect=0, backoff_factor=0.1),
    )


def s3_client(endpoint: str | None = None, fail_fast: bool = False) -> Any:
    """A minio client for the configured object store (``endpoint`` overrides, e.g. a fault proxy)."""
    from minio import Minio

    return Minio(
        endpoint or SETTINGS.s3_endpoint,
        access_key=SETTINGS.s3.access_key,
        secret_key=SETTINGS.s3.secret_key,
        secure=False,
        http_client=fail_fast_http_client() if fail_fast else None,
    )
