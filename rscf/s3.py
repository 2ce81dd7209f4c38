"""The one S3 client factory: the artifact store, the model registry, the stack and the demo use it;
and `ObjectStorePayloads`, where dead letters too large for Kafka keep their payload (claim check)."""

from __future__ import annotations

from typing import Any

from rscf.s3_security import ADMIN, credential
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


def s3_client(endpoint: str | None = None, fail_fast: bool = False, identity: str = ADMIN) -> Any:
    """A minio client for the configured object store (``endpoint`` overrides, e.g. a fault proxy), with
    ``identity``'s key (`rscf.s3_security`: a component's, or the admin's for the operator CLI). A
    scoped identity cannot ask a bucket's region, so the client is given it."""
    from minio import Minio

    access, secret = credential(identity)
    return Minio(
        endpoint or SETTINGS.s3_endpoint,
        access_key=access,
        secret_key=secret,
        secure=False,
        region=SETTINGS.s3.region,
        http_client=fail_fast_http_client() if fail_fast else None,
    )


class ObjectStorePayloads:
    """Payloads kept in object storage by key (`put(key, data) -> "s3://bucket/key"`), raising when it is down.

    For claim checks of dead letters too large for Kafka (the job's and the workers'), in the audit
    bucket by default, and the workers' artifacts (`ArtifactStore` retries around it). The client fails fast: a dead letter waits for one refused connection, not
    minio's retries. Only the admin creates a missing bucket; a component's key may write, not ask
    (`rscf up` provisions the buckets).
    """

    def __init__(self, bucket: str | None = None, endpoint: str | None = None, identity: str = ADMIN):
        self.bucket = bucket or SETTINGS.buckets.audit
        self.endpoint = endpoint
        self.identity = identity
        self._client: Any = None
        self._bucket_checked = False

    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        import io

        if self._client is None:
            self._client = s3_client(self.endpoint, fail_fast=True, identity=self.identity)
        if not self._bucket_checked:
            from minio.error import S3Error

            try:
                if not self._client.bucket_exists(self.bucket):
                    self._client.make_bucket(self.bucket)
            except S3Error as exc:  # a write-only key may not ask: the bucket is provisioned
                if exc.code != "AccessDenied":
                    raise
            self._bucket_checked = True
        self._client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                                content_type=content_type or "application/octet-stream")
        return f"s3://{self.bucket}/{key}"
