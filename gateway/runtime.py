"""What one gateway process holds: key store, token service, finals cache and reader, Kafka sender, serdes,
the artifact presigner. Built from settings; tests build one on private topics and a private secrets dir."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from gateway.apikeys import KeyStore
from gateway.finals import FinalsCache, FinalsReader
from gateway.tokens import TokenService
from rscf.settings import SETTINGS


@dataclass
class Runtime:
    keys: KeyStore
    tokens: TokenService
    cache: FinalsCache
    reader: FinalsReader | None
    sender: Any
    prompt_serde: Any
    control_serde: Any
    templates: Any
    presign: Callable[[str, str, timedelta], str]
    prompts_topic: str
    control_topic: str
    artifacts_bucket: str
    rate_per_s: float
    burst: int
    max_body_bytes: int
    presign_ttl_s: int

    def close(self) -> None:
        if self.reader is not None:
            self.reader.stopping.set()
            if self.reader.is_alive():
                self.reader.join(5)
        if self.sender is not None:
            self.sender.close()


def presigner(endpoint: str | None = None) -> Callable[[str, str, timedelta], str]:
    """Presigned GETs, signed locally (the region is given, so no request to S3 per URL) with the gateway's
    key, which reads only under ``tenants/`` of the artifacts bucket (rscf/s3_security.py)."""
    from rscf.s3 import s3_client
    from rscf.s3_security import GATEWAY

    client = s3_client(endpoint, identity=GATEWAY)
    return lambda bucket, key, ttl: client.presigned_get_object(bucket, key, expires=ttl)


def build(prompts_topic: str | None = None, content_topic: str | None = None, control_topic: str | None = None,
          secrets_base: Path | None = None, start_reader: bool = True, signing_key: Path | None = None,
          **overrides: Any) -> Runtime:
    from gateway.sender import Sender
    from operators.templates import RedisTemplateStore
    from rscf import redis_security
    from schemas.serde import TopicSerde

    g, t = SETTINGS.gateway, SETTINGS.topics
    prompts_topic = prompts_topic or t.prompts
    content_topic = content_topic or t.content
    control_topic = control_topic or t.control
    cache = FinalsCache()
    content_serde = TopicSerde(content_topic, schema_name="content_result", auto_register=False)
    reader = FinalsReader(cache, content_topic, SETTINGS.kafka_bootstrap, content_serde.decode) if start_reader else None
    rt = Runtime(
        keys=KeyStore(secrets_base), tokens=TokenService(secrets_base, key_file=signing_key), cache=cache,
        reader=reader,
        sender=Sender(SETTINGS.kafka_bootstrap),
        prompt_serde=TopicSerde(prompts_topic, schema_name="prompt_request", auto_register=False),
        control_serde=TopicSerde(control_topic, schema_name="control_event", auto_register=False),
        templates=RedisTemplateStore(redis_security.client(redis_security.GATEWAY, socket_timeout=0.5)),
        presign=presigner(), prompts_topic=prompts_topic, control_topic=control_topic,
        artifacts_bucket=SETTINGS.buckets.artifacts, rate_per_s=g.rate_per_s, burst=g.burst,
        max_body_bytes=g.max_body_bytes, presign_ttl_s=g.presign_ttl_s)
    for name, value in overrides.items():
        setattr(rt, name, value)
    if reader is not None:
        reader.start()
    return rt
