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

    from jobs.config import job_redis_url

    return redis.Redis.from_url(job_redis_url(cfg), socket_timeout=2, socket_connect_timeout=2)


_SHARED: dict[str, Any] = {}


def caching_embedder():
    """The process's one `CachingEmbedder` around the embedding service client: the classifier (input
    and output), RAG and the gate's micro-batches share it, so a prompt is embedded once for its
    moderation and its retrieval, and a text seen before not at all (issue #14)."""
    if "caching" not in _SHARED:
        from operators.embedding import CachingEmbedder, RemoteEmbedder

        _SHARED["caching"] = CachingEmbedder(RemoteEmbedder())
    return _SHARED["caching"]


def shared_embedder() -> Callable[[], Any]:
    """The embedding service client (behind the process's `caching_embedder`).

    The model runs in its own process (inference_workers/embedding_service.py):
    torch inside a thread-mode operator stalled it and its checkpoints (measured).
    While the service is marked down, `embed` raises at once (`EmbedderUnavailable`)
    and the caller records what it skipped: answering None instead hid the outage
    from every final but the first of each backoff window (issue #13).
    """
    embedder = caching_embedder()
    return lambda: embedder


def shared_classifier() -> Callable[[], Any]:
    """The moderation classifier: remote embeddings + the small logistic regression, loaded here.

    Always the classifier, the embedding service down or not (see `shared_embedder`)."""
    if "classifier" not in _SHARED:
        from operators import moderation_model

        embedder = caching_embedder()
        _SHARED["classifier"] = (embedder, moderation_model.load(embedder))
    _embedder, classifier = _SHARED["classifier"]
    return lambda: classifier


def payload_store():
    """One object store client per process for claim checks of dead letters (`rscf.s3.ObjectStorePayloads`)."""
    if "payloads" not in _SHARED:
        from rscf.s3 import ObjectStorePayloads
        from rscf.s3_security import JOB

        _SHARED["payloads"] = ObjectStorePayloads(identity=JOB)
    return _SHARED["payloads"]
