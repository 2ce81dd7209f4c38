"""The one place where every port, topic, path and limit of RSCF is named.

Values come from environment variables prefixed ``RSCF_`` where a deployment
needs to change them, otherwise from the defaults below. Everything binds to
127.0.0.1 on a local stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rscf.pools import POOLS

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    return os.environ.get(f"RSCF_{name}", default)


def _env_int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(_env(name, str(default)))


@dataclass(frozen=True)
class Paths:
    """Runtime data lives in the repo's git-ignored ``.data``; downloads in a cache that survives clones."""

    repo: Path = REPO_ROOT
    data: Path = field(default_factory=lambda: Path(_env("DATA_DIR", str(REPO_ROOT / ".data"))))
    cache: Path = field(
        default_factory=lambda: Path(_env("CACHE_DIR", str(Path.home() / ".cache" / "rscf")))
    )
    venv: Path = field(default_factory=lambda: Path(_env("VENV", str(REPO_ROOT / ".venv"))))

    @property
    def logs(self) -> Path:
        return self.data / "logs"

    @property
    def pids(self) -> Path:
        return self.data / "pids"

    @property
    def connector_jar(self) -> Path:
        """Flink's Kafka SQL connector, downloaded by deploy/local/install.sh."""
        return (self.cache / "jars" / "flink-connectors"
                / f"flink-sql-connector-kafka-{Versions.flink_kafka_connector}.jar")

    @property
    def s3_plugin_jar(self) -> Path:
        """Flink's S3 filesystem plugin (Hadoop S3A), downloaded by deploy/local/install.sh (backfills read s3://)."""
        return self.cache / "jars" / "flink-plugins" / f"flink-s3-fs-hadoop-{Versions.flink_s3_plugin}.jar"

    @property
    def models(self) -> Path:
        """Local cache of model artifacts pulled from the object-store model registry."""
        return self.cache / "models"


@dataclass(frozen=True)
class Ports:
    kafka: int = _env_int("KAFKA_PORT", 9092)
    kafka_controller: int = _env_int("KAFKA_CONTROLLER_PORT", 9093)
    flink_rest: int = _env_int("FLINK_PORT", 8081)
    flink_rpc: int = _env_int("FLINK_RPC_PORT", 6123)
    # Flink's pull reporter binds every interface, so the local stack pushes to a loopback Pushgateway
    # instead; these ports are the pull reporter's in docker-compose and Kubernetes.
    flink_metrics_first: int = _env_int("FLINK_METRICS_PORT", 9249)
    flink_metrics_last: int = _env_int("FLINK_METRICS_PORT_LAST", 9250)
    registry: int = _env_int("REGISTRY_PORT", 8085)
    registry_management: int = _env_int("REGISTRY_MANAGEMENT_PORT", 8086)
    pushgateway: int = _env_int("PUSHGATEWAY_PORT", 9091)
    embedder: int = _env_int("EMBEDDER_PORT", 9420)
    s3: int = _env_int("S3_PORT", 8333)
    weed_master: int = _env_int("WEED_MASTER_PORT", 9333)
    weed_volume: int = _env_int("WEED_VOLUME_PORT", 8380)
    weed_filer: int = _env_int("WEED_FILER_PORT", 8888)
    redis: int = _env_int("REDIS_PORT", 6379)
    prometheus: int = _env_int("PROMETHEUS_PORT", 9090)
    worker_metrics_first: int = _env_int("WORKER_METRICS_PORT", 9400)
    autoscaler_metrics: int = _env_int("AUTOSCALER_METRICS_PORT", 9399)


@dataclass(frozen=True)
class Versions:
    flink: str = "2.2.1"
    kafka: str = "4.1.1"
    flink_kafka_connector: str = "5.0.0-2.2"
    flink_s3_plugin: str = "2.2.0"  # 2.2.1 is not on Maven Central
    apicurio: str = "3.3.3"


@dataclass(frozen=True)
class Topics:
    prompts: str = "genai.prompts"
    control: str = "genai.control"
    results: str = "genai.inference.results"
    content: str = "genai.content"
    audit: str = "genai.audit"
    dlq: str = "genai.dlq"
    request_prefix: str = "genai.inference.requests."
    partitions: int = _env_int("TOPIC_PARTITIONS", 4)

    def requests(self, pool: str) -> str:
        return f"{self.request_prefix}{pool}"

    def all(self) -> tuple[str, ...]:
        """Every topic of the pipeline: the one list the stack, the harness and the benches create."""
        return (self.prompts, self.control, self.results, self.content, self.audit, self.dlq,
                *(self.requests(p) for p in POOLS))


@dataclass(frozen=True)
class Buckets:
    artifacts: str = "rscf-artifacts"
    models: str = "rscf-models"
    audit: str = "rscf-audit"
    backfill: str = "rscf-backfill"

    def all(self) -> tuple[str, ...]:
        return (self.artifacts, self.models, self.audit, self.backfill)


@dataclass(frozen=True)
class S3Credentials:
    access_key: str = _env("S3_ACCESS_KEY", "rscf")
    secret_key: str = _env("S3_SECRET_KEY", "rscf-local-secret")
    # https to the endpoint (real S3: RSCF_S3_ENDPOINT=s3.<region>.amazonaws.com RSCF_S3_SECURE=1)
    secure: bool = _env("S3_SECURE", "0") == "1"
    region: str = _env("S3_REGION", "us-east-1")


@dataclass(frozen=True)
class Limits:
    """Validation limits and pipeline knobs; a tenant policy may tighten but not widen them."""

    max_prompt_chars: int = 4000
    max_text_tokens: int = 512
    min_image_size: int = 16
    max_image_size: int = 1024
    max_image_steps: int = 200
    max_audio_chars: int = 1000
    request_timeout_ms: int = _env_int("REQUEST_TIMEOUT_MS", 30_000)
    max_attempts: int = _env_int("MAX_ATTEMPTS", 3)
    retry_base_ms: int = 200
    retry_cap_ms: int = 5_000  # exponential backoff stops growing here
    dedup_ttl_ms: int = 600_000  # how long a finished request's tombstone drops duplicates
    voices: tuple[str, ...] = ("joe", "en_US-joe-medium", "en-us")  # AUDIO params.voice (speech worker names)
    # Each checkpoint commits the job's final hop (exactly-once delivery, the default): a final waits
    # for the next one. Chosen by measurement: jobs/README.md, "Delivery".
    checkpoint_interval_ms: int = _env_int("CHECKPOINT_INTERVAL_MS", 200)
    rag_top_k: int = 3
    rag_token_budget: int = 256
    worker_max_batch: int = _env_int("WORKER_MAX_BATCH", 8)
    worker_max_wait_ms: int = _env_int("WORKER_MAX_WAIT_MS", 20)
    torch_threads: int = _env_int("TORCH_THREADS", 1)
    # Producers of the hot path (job sink, workers, benchmark) wait this long to fill a batch:
    # the broker's CPU goes by requests, not records (2 -> 5 ms, measured in jobs/README.md).
    producer_linger_ms: int = _env_int("PRODUCER_LINGER_MS", 5)
    # After the job (re)starts, a prompt of a tenant without a known policy waits this long for it.
    policy_wait_ms: int = _env_int("POLICY_WAIT_MS", 3_000)
    # Largest key + value any RSCF producer writes: the job's Java producer refuses a request above
    # max.request.size (1 MiB) and librdkafka a message above message.max.bytes (1 000 000); the
    # margin covers headers and batch overhead. Larger dead letters, finals and worker results are
    # cut down or kept in object storage (claim check) instead of failing their producer.
    max_record_bytes: int = 900_000


@dataclass(frozen=True)
class Settings:
    host: str = _env("HOST", "127.0.0.1")  # bind/connect host; containers set endpoint overrides below
    paths: Paths = field(default_factory=Paths)
    ports: Ports = field(default_factory=Ports)
    versions: Versions = field(default_factory=Versions)
    topics: Topics = field(default_factory=Topics)
    buckets: Buckets = field(default_factory=Buckets)
    s3: S3Credentials = field(default_factory=S3Credentials)
    limits: Limits = field(default_factory=Limits)

    @property
    def kafka_bootstrap(self) -> str:
        return _env("KAFKA_BOOTSTRAP", f"{self.host}:{self.ports.kafka}")

    @property
    def registry_url(self) -> str:
        """Confluent-compatible API of the registry."""
        return _env("REGISTRY_URL", f"http://{self.host}:{self.ports.registry}/apis/ccompat/v7")

    @property
    def s3_endpoint(self) -> str:
        return _env("S3_ENDPOINT", f"{self.host}:{self.ports.s3}")

    @property
    def redis_url(self) -> str:
        return _env("REDIS_URL", f"redis://{self.host}:{self.ports.redis}/0")

    @property
    def flink_url(self) -> str:
        return _env("FLINK_URL", f"http://{self.host}:{self.ports.flink_rest}")

    @property
    def embedder_url(self) -> str:
        return f"http://{self.host}:{self.ports.embedder}"

    @property
    def prometheus_url(self) -> str:
        return _env("PROMETHEUS_URL", f"http://{self.host}:{self.ports.prometheus}")


def load() -> Settings:
    return Settings()


SETTINGS = load()
