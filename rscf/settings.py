"""The one place where every port, topic, path and limit of RSCF is named.

Values come from environment variables prefixed ``RSCF_`` where a deployment
needs to change them, otherwise from the defaults below. Everything binds to
127.0.0.1 on a local stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from rscf.pools import POOLS, PRIORITY_LANES
from rscf.secrets import redis_credential, s3_secret_key

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
    def secrets(self) -> Path:
        """Generated secrets (gateway signing key, API key hashes, local CA), mode 0700/0600; never committed."""
        return self.data / "secrets"

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
    # The SASL_SSL client listener (README "Kafka over TLS"): by default the client port + 50 (9142), so a
    # private stack that moves only RSCF_KAFKA_PORT (every test and env script from before) gets its own.
    kafka_tls: int = _env_int("KAFKA_TLS_PORT", _env_int("KAFKA_PORT", 9092) + 50)
    # `rscf chaos` kafka faults: the broker binds kafka_chaos, advertises kafka_chaos_proxy (Toxiproxy's)
    kafka_chaos: int = _env_int("KAFKA_CHAOS_PORT", _env_int("KAFKA_PORT", 9092) + 60)
    kafka_chaos_proxy: int = _env_int("KAFKA_CHAOS_PROXY_PORT", _env_int("KAFKA_PORT", 9092) + 70)
    flink_rest: int = _env_int("FLINK_PORT", 8081)  # Web UI and REST for people: the proxy in front (README)
    # The JobManager's own REST endpoint behind it: mutual TLS, only the stack's Flink REST certificate.
    flink_rest_internal: int = _env_int("FLINK_REST_INTERNAL_PORT", 8082)
    flink_rpc: int = _env_int("FLINK_RPC_PORT", 6123)
    # ZooKeeper keeps the JobManager's leadership and job graphs (Flink HA): a restarted JobManager
    # takes its jobs back from their latest checkpoint.
    zookeeper: int = _env_int("ZOOKEEPER_PORT", 2181)
    # Flink's pull reporter binds every interface, so the local stack pushes to a loopback Pushgateway
    # instead; these ports are the pull reporter's in docker-compose and Kubernetes.
    flink_metrics_first: int = _env_int("FLINK_METRICS_PORT", 9249)
    flink_metrics_last: int = _env_int("FLINK_METRICS_PORT_LAST", 9250)
    registry: int = _env_int("REGISTRY_PORT", 8085)
    registry_management: int = _env_int("REGISTRY_MANAGEMENT_PORT", 8086)
    registry_internal: int = _env_int("REGISTRY_INTERNAL_PORT", 8087)  # Apicurio itself, behind its proxy on `registry`
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
    pool_controller: int = _env_int("POOL_CONTROLLER_PORT", 9398)  # its /metrics and /readyz
    # Backfill-lane replicas (the pool controller's lane targets): first + pool index + replica * pools,
    # a block of their own below the live replicas' (9400...), so the two never meet.
    backfill_worker_metrics_first: int = _env_int("BACKFILL_WORKER_METRICS_PORT", 9370)
    gateway: int = _env_int("GATEWAY_PORT", 8443)  # HTTPS, certificate from the stack's local CA


@dataclass(frozen=True)
class Versions:
    flink: str = "2.2.1"
    caddy: str = "2.11.9"  # the proxy in front of Flink's REST API (deploy/local/flink_rest.py), built by install.sh
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
    # Topic suffix of the backfill lane (`genai.prompts.backfill`, ...; a bench's own: `backfill-<id>`): the
    # backfill's copy of the pipeline (deploy/local/backfills.py) and its pool-controller replicas.
    backfill_lane: str = "backfill"
    partitions: int = _env_int("TOPIC_PARTITIONS", 4)

    def requests(self, pool: str, priority: str | None = None) -> str:
        """A pool's request topic for a priority lane (None/NORMAL: the pool's original topic)."""
        return self.lane(f"{self.request_prefix}{pool}", priority)

    @staticmethod
    def lane(base: str, priority: str | None) -> str:
        """The lane of a request topic: NORMAL keeps the topic's name (compatible with older
        producers and consumers), HIGH and LOW append `.high` / `.low`. Applied after any test
        suffix, so the job and a worker given the same base topic agree on every lane."""
        p = (priority or "NORMAL").upper()
        return base if p not in PRIORITY_LANES or p == "NORMAL" else f"{base}.{p.lower()}"

    def lanes(self, base: str) -> tuple[str, ...]:
        """Every lane of a request topic, highest priority first."""
        return tuple(self.lane(base, p) for p in PRIORITY_LANES)

    def all(self) -> tuple[str, ...]:
        """Every topic of the pipeline: the one list the stack, the harness and the benches create."""
        return (self.prompts, self.control, self.results, self.content, self.audit, self.dlq,
                *(t for p in POOLS for t in self.lanes(self.requests(p))))


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
    """The stack's S3 identity. The access key is a name; the secret key is never committed: it comes
    from ``RSCF_S3_SECRET_KEY`` or the file ``RSCF_S3_SECRET_KEY_FILE`` names, or is generated once into
    ``<data>/secrets/s3_secret_key`` (0600)."""

    access_key: str = _env("S3_ACCESS_KEY", "rscf")
    # https to the endpoint (real S3: RSCF_S3_ENDPOINT=s3.<region>.amazonaws.com RSCF_S3_SECURE=1)
    secure: bool = _env("S3_SECURE", "0") == "1"
    region: str = _env("S3_REGION", "us-east-1")
    # SeaweedFS encrypts every chunk it writes to its volume files (AES-256-GCM, a random key per chunk kept in
    # the filer's metadata): volume files and their backups hold no readable artifact or audit record. The
    # filer's store (same data dir) holds the keys, so this protects volume disks, not the whole data dir.
    # Cost: `rscf bench s3-encryption` (README "Encryption at rest"). Objects written before stay readable.
    encrypt_at_rest: bool = _env("S3_ENCRYPT_AT_REST", "1") == "1"
    # SeaweedFS' internal gRPC ports (HTTP port + 10000) take only the stack's weed certificate (mutual TLS)
    grpc_mtls: bool = _env("S3_GRPC_MTLS", "1") == "1"

    @property
    def secret_key(self) -> str:
        return _s3_secret_key(str(Paths().data))

    def given(self) -> bool:
        """A key handed to this process (env): it then uses it for every S3 client (rscf/s3_security.py)."""
        return bool(_env("S3_SECRET_KEY", "") or _env("S3_SECRET_KEY_FILE", ""))


@lru_cache(maxsize=None)
def _s3_secret_key(data_dir: str) -> str:
    """One S3 key per data dir and process (rscf/secrets.py finds or makes it; env names stay here)."""
    return s3_secret_key(data_dir, _env("S3_SECRET_KEY", ""), _env("S3_SECRET_KEY_FILE", ""))


@dataclass(frozen=True)
class KafkaAuth:
    """Kafka authentication (rscf/kafka_security.py; README "Kafka authentication and ACLs"), read when
    asked: a data dir's broker keeps the mode it was formatted with, whatever these say."""

    # A new data dir's broker is formatted with this mode unless RSCF_KAFKA_AUTH says otherwise. A client
    # whose data dir has no broker (another stack's broker, a container) assumes none unless told.
    new_broker_mode: str = "scram"

    def requested_mode(self, default: str = "none") -> str:  # scram | none
        return _env("KAFKA_AUTH", default).strip().lower()

    @property
    def tls(self) -> bool:
        """RSCF_KAFKA_TLS=1: RSCF's own clients use the SASL_SSL listener (RSCF_KAFKA_TLS_PORT), not 9092's
        SASL_PLAINTEXT (README "Kafka over TLS"); off by default."""
        return _env("KAFKA_TLS", "0").strip().lower() in ("1", "true", "yes", "on")

    def given_credential(self) -> tuple[str, str, str]:
        """(principal, password, password file) handed to this process (a container's Secret), or ''s."""
        return _env("KAFKA_PRINCIPAL", ""), _env("KAFKA_PASSWORD", ""), _env("KAFKA_PASSWORD_FILE", "")


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
    final_readback_ms: int = 300_000  # finals a restored job reads back (< dedup_ttl_ms: jobs/replay_filter.py)
    voices: tuple[str, ...] = ("joe", "en_US-joe-medium", "en-us")  # AUDIO params.voice (speech worker names)
    # Each checkpoint commits the final hop (exactly-once, the default): a final waits for it (jobs/README.md).
    checkpoint_interval_ms: int = _env_int("CHECKPOINT_INTERVAL_MS", 200)
    rag_top_k: int = 3
    rag_token_budget: int = 256
    worker_max_batch: int = _env_int("WORKER_MAX_BATCH", 8)
    worker_max_wait_ms: int = _env_int("WORKER_MAX_WAIT_MS", 20)
    torch_threads: int = _env_int("TORCH_THREADS", 1)
    # Embeddings (issue #14): the service's backend (auto: a CUDA GPU, else int8 ONNX, else torch), batch across requests,
    # forwards at once (the gate's call need not queue behind the orchestrator's), the service's and job's caches.
    embedder_backend: str = _env("EMBEDDER_BACKEND", "auto")
    embed_max_batch: int = _env_int("EMBED_MAX_BATCH", 64)
    embed_model_threads: int = _env_int("EMBED_MODEL_THREADS", 3)
    embed_cache_entries: int = _env_int("EMBED_CACHE_ENTRIES", 20_000)
    # The gate embeds a tenant's prompts in micro-batches: at most this many, waiting at most this long.
    gate_batch_max: int = _env_int("GATE_BATCH_MAX", 64)
    gate_batch_wait_ms: int = _env_int("GATE_BATCH_WAIT_MS", 5)
    # VSIM exploration factor for RAG (0: Redis' default); 500 finds more true neighbours in a large
    # knowledge base at ~2x the cost per query (`rscf bench vectors`, jobs/README.md).
    rag_ef: int = _env_int("RAG_EF", 0)
    # The echo model's simulated cost (0: answers at once); `rscf evaluate` sets it, the same everywhere.
    echo_batch_ms: float = _env_float("ECHO_BATCH_MS", 0.0)
    echo_item_ms: float = _env_float("ECHO_ITEM_MS", 0.0)
    # Hot-path producers (job sink, benchmark) wait this long to fill a batch: broker CPU goes by requests (2 -> 5 ms,
    # jobs/README.md). A worker's results come a micro-batch at a time: 1 ms (p99 at 500/s -5 ms, same ceiling).
    producer_linger_ms: int = _env_int("PRODUCER_LINGER_MS", 5)
    worker_linger_ms: int = _env_int("WORKER_LINGER_MS", 1)
    # After a (re)start, a prompt of a tenant without a known policy waits for the control topic's end, at most
    # this long (jobs/policy_wait.py; a fixed 3 s let 28 of 30 backlog prompts overtake their policy in CI).
    policy_wait_ms: int = _env_int("POLICY_WAIT_MS", 30_000)
    # Largest key + value any RSCF producer writes: the job's Java producer refuses a request above max.request.size
    # (1 MiB), librdkafka a message above message.max.bytes (1 000 000); the margin covers headers and batches. Larger
    # dead letters, finals and worker results are cut down or kept in object storage (claim check) instead.
    max_record_bytes: int = 900_000
    # The pool controller never runs more replicas than these budgets hold (rscf/pools.py: a replica's cost). CPU:
    # 2x the cores (requests, as on Kubernetes: every pool gets a replica on 2 cores); GPU memory 0: no GPU.
    # A killed worker's partitions wait this long before another replica takes them (#13: 10 s, then 6 s).
    # Heartbeats every third of it (1 s): a false expiry only moves partitions (cooperative rebalance), it
    # loses nothing. The broker accepts down to 2 s (group.min.session.timeout.ms in deploy/local/services.py).
    worker_session_timeout_ms: int = _env_int("WORKER_SESSION_TIMEOUT_MS", 3_000)
    # `rscf up` runs the pool controller unless RSCF_POOL_CONTROLLER=off (replicas by hand: `rscf workers`)
    pool_controller: bool = _env("POOL_CONTROLLER", "on").lower() not in ("off", "0", "false", "no")
    pool_cpu_budget: float = _env_float("POOL_CPU_BUDGET", 2.0 * (os.cpu_count() or 1))
    pool_gpu_memory_gb: float = _env_float("POOL_GPU_MEMORY_GB", 0.0)
    # Lane replicas per pool (0 idle); backfill-only processes niced (weight 110 vs 1024), SCHED_IDLE if on (3)
    backfill_replicas_max: int = _env_int("BACKFILL_REPLICAS_MAX", 1)
    backfill_nice: int = _env_int("BACKFILL_NICE", 10)
    backfill_sched_idle: bool = _env("BACKFILL_SCHED_IDLE", "off").lower() not in ("off", "0", "false", "no")
    # "process": the ingest's and the lane's Python in niced workers, off the live job's interpreter lock
    # ("thread": in the TaskManager). Live p99 beside a backfill: 158-180 vs 392-1,186 ms (README).
    backfill_ingest_mode: str = _env("BACKFILL_INGEST_MODE", "process")
    backfill_lane_mode: str = _env("BACKFILL_LANE_MODE", "process")
    backfill_yield_busy: float = _env_float("BACKFILL_YIELD_BUSY", 0.0)  # halve the pace above this CPU (0: never)
    # Live first (jobs/backfill_pace.py): while the live prompts topics take more than live_busy prompts/s, a
    # backfill reads at most live_floor rows/s; its lane is never more than max_lag_s of its pace behind.
    backfill_live_busy_per_s: float = _env_float("BACKFILL_LIVE_BUSY_PER_S", 10.0)  # 0: never yields to live
    backfill_live_floor_rows_per_s: float = _env_float("BACKFILL_LIVE_FLOOR_ROWS_PER_S", 5.0)
    backfill_max_lag_s: float = _env_float("BACKFILL_MAX_LAG_S", 10.0)  # 0: no bound; > the loop (~4 s): README
    # Lane and ingest checkpoints (the ingest's commit its rows to the lane): a backfill row does not mind 1-2 s
    backfill_lane_checkpoint_ms: int = _env_int("BACKFILL_LANE_CHECKPOINT_MS", 2_000)
    backfill_ingest_checkpoint_ms: int = _env_int("BACKFILL_INGEST_CHECKPOINT_MS", 1_000)
    # A backfill row's attempt deadline in the lane's job: nobody waits for it, and behind live traffic
    # (LOW lane) it queues. With the live 30 s, 5,713 of 100,000 rows EXPIRED and 2,375 FAILED beside live.
    backfill_request_timeout_ms: int = _env_int("BACKFILL_REQUEST_TIMEOUT_MS", 900_000)


@dataclass(frozen=True)
class GatewayLimits:
    """The HTTP gateway's edge limits (LiteLLM-style per-key limits; OWASP LLM10 unbounded consumption)."""

    rate_per_s: float = _env_float("GATEWAY_RATE_PER_S", 200.0)  # per API key (token bucket refill)
    burst: int = _env_int("GATEWAY_BURST", 400)
    max_body_bytes: int = 64 * 1024  # a prompt is <= 4,000 characters; 64 KiB leaves room for vars/metadata
    token_ttl_s: int = _env_int("GATEWAY_TOKEN_TTL_S", 900)  # OAuth2 access tokens
    presign_ttl_s: int = _env_int("GATEWAY_PRESIGN_TTL_S", 300)  # artifact URLs
    results_lookback_s: int = _env_int("GATEWAY_RESULTS_LOOKBACK_S", 3600)  # finals read back at start
    results_per_tenant: int = 10_000  # finals kept in memory per tenant (oldest dropped)
    issuer: str = "rscf-gateway"
    audience: str = "rscf-api"


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
    gateway: GatewayLimits = field(default_factory=GatewayLimits)
    kafka_auth: KafkaAuth = field(default_factory=KafkaAuth)

    @property
    def kafka_bootstrap(self) -> str:
        port = self.ports.kafka_tls if self.kafka_auth.tls else self.ports.kafka
        return _env("KAFKA_BOOTSTRAP", f"{self.host}:{port}")

    @property
    def registry_internal_url(self) -> str:  # Apicurio itself (deploy/local/registry_proxy.py)
        return f"http://{self.host}:{self.ports.registry_internal if self.registry_auth else self.ports.registry}/apis/ccompat/v7"

    @property
    def registry_url(self) -> str:
        """Confluent-compatible API of the registry."""
        return _env("REGISTRY_URL", f"http://{self.host}:{self.ports.registry}/apis/ccompat/v7")

    @property
    def s3_endpoint(self) -> str:
        return _env("S3_ENDPOINT", f"{self.host}:{self.ports.s3}")

    @property
    def redis_url(self) -> str:
        """RSCF_REDIS_URL, with RSCF_REDIS_USER + RSCF_REDIS_PASSWORD[_FILE] (a container's Secret) in it."""
        return redis_credential(_env("REDIS_URL", f"redis://{self.host}:{self.ports.redis}/0"),
                                _env("REDIS_USER", ""), _env("REDIS_PASSWORD", ""), _env("REDIS_PASSWORD_FILE", ""))

    @property
    def flink_url(self) -> str:
        """Flink's Web UI and REST API as people and outside clients reach them: reads are open, anything
        else (job submission is code execution) asks for the operator's password (README)."""
        return _env("FLINK_URL", f"http://{self.host}:{self.ports.flink_rest}")

    @property
    def registry_auth(self) -> bool:
        """RSCF_REGISTRY_AUTH=0: the registry takes writes without a credential (rscf/registry_security.py)."""
        return _env("REGISTRY_AUTH", "1").strip().lower() not in ("0", "false", "no", "off")

    @property
    def registry_key_file(self) -> str:
        """RSCF_REGISTRY_KEY_FILE: another stack's registry signing key (a test's private data dir)."""
        return _env("REGISTRY_KEY_FILE", "")

    @property
    def flink_rest_auth(self) -> bool:
        """RSCF_FLINK_REST_AUTH=0: the JobManager serves REST itself on flink_rest, plain HTTP, no credential."""
        return _env("FLINK_REST_AUTH", "1").strip().lower() not in ("0", "false", "no", "off")

    @property
    def embedder_url(self) -> str:
        return f"http://{self.host}:{self.ports.embedder}"

    @property
    def gateway_url(self) -> str:
        return _env("GATEWAY_URL", f"https://{self.host}:{self.ports.gateway}")

    @property
    def prometheus_url(self) -> str:
        return _env("PROMETHEUS_URL", f"http://{self.host}:{self.ports.prometheus}")


def load() -> Settings:
    return Settings()


SETTINGS = load()
