"""Clients of the stack's services for the job's Flink functions: schema registry, Redis, the
embedding service, the moderation classifier and object storage for claim checks (one per
process where they can be shared)."""

from __future__ import annotations

from typing import Any, Callable

from jobs.config import JobConfig, ROLE_SCHEMAS


def topic_serde(cfg: JobConfig, topic: str, role: str):
    from schemas.serde import TopicSerde

    return TopicSerde(topic, cfg.registry_url, schema_name=ROLE_SCHEMAS[role])


def redis_client(cfg: JobConfig):
    import redis

    return redis.Redis.from_url(cfg.redis_url, socket_timeout=2, socket_connect_timeout=2)


_SHARED: dict[str, Any] = {}


def shared_embedder() -> Callable[[], Any]:
    """The embedding service client.

    The model runs in its own process (inference_workers/embedding_service.py):
    torch inside a thread-mode operator stalled it and its checkpoints (measured).
    While the service is marked down, `embed` raises at once (`EmbedderUnavailable`)
    and the caller records what it skipped: answering None instead hid the outage
    from every final but the first of each backoff window (issue #13).
    """
    if "embedder" not in _SHARED:
        from operators.embedding import RemoteEmbedder

        _SHARED["embedder"] = RemoteEmbedder()
    embedder = _SHARED["embedder"]
    return lambda: embedder


def shared_classifier() -> Callable[[], Any]:
    """The moderation classifier: remote embeddings + the small logistic regression, loaded here.

    Always the classifier, the embedding service down or not (see `shared_embedder`)."""
    if "classifier" not in _SHARED:
        from operators import moderation_model
        from operators.embedding import RemoteEmbedder

        embedder = RemoteEmbedder()
        _SHARED["classifier"] = (embedder, moderation_model.load(embedder))
    _embedder, classifier = _SHARED["classifier"]
    return lambda: classifier


class ObjectStorePayloads:
    """Payloads of dead letters too large for Kafka, in object storage (`operators.dead_letters.PayloadStore`).

    The S3 client fails fast (`rscf.s3.fail_fast_http_client`): with object storage down a
    dead letter waits for one refused connection, not minio's retries.
    """

    def __init__(self, bucket: str | None = None, endpoint: str | None = None):
        from rscf.s3 import s3_client
        from rscf.settings import SETTINGS

        self.bucket = bucket or SETTINGS.buckets.audit
        self.client = s3_client(endpoint, fail_fast=True)
        self._bucket_checked = False

    def put(self, key: str, data: bytes) -> str:
        import io

        if not self._bucket_checked:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
            self._bucket_checked = True
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type="application/octet-stream")
        return f"s3://{self.bucket}/{key}"


def payload_store() -> ObjectStorePayloads:
    """One object store client per process for claim checks (built when the first one is needed)."""
    if "payloads" not in _SHARED:
        _SHARED["payloads"] = ObjectStorePayloads()
    return _SHARED["payloads"]
