"""The pool table: every worker pool named once, with what routing, audit, the catalog, metrics,
the demo and the deployment manifests need to know about it.

A pool is one model family and version on one kind of hardware. Adding a pool is one row here
(plus a handler for a new modality); everything else reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolPrice:
    """Cost units charged per successful request (audit records and the evaluation read these)."""

    per_request: float = 0.0
    per_1k_tokens: float = 0.0
    per_image: float = 0.0
    per_audio_second: float = 0.0


@dataclass(frozen=True)
class Pool:
    name: str
    modality: str  # TEXT | IMAGE | AUDIO (echo serves any modality)
    model: str  # registry name of the model it serves (RSCF_POOL_MODEL_<POOL> overrides at load time)
    default_version: str
    fallbacks: tuple[str, ...]  # pools tried, in order, when this one fails a request
    price: PoolPrice
    max_batch: int | None = None  # None: the handler's device plan decides (SETTINGS.limits.worker_max_batch on CPU)
    # How long a worker's batcher waits for company while its model is idle; None: SETTINGS.limits.worker_max_wait_ms
    max_wait_ms: float | None = None
    in_demo: bool = True  # `rscf demo` starts a replica of it
    # Where it runs on Kubernetes (deploy/k8s_pools.py renders the worker Deployment and KEDA ScaledObject):
    gpu: bool = False
    # 0 (every pool): an idle stack runs no replica; the first request wakes one (`rscf bench coldstart`)
    min_replicas: int = 0
    max_replicas: int = 4
    grace_s: int = 60  # terminationGracePeriodSeconds: longer than the slowest batch
    cpu_request: str = "1"
    memory_request: str = "1Gi"
    memory_limit: str = "3Gi"
    # Scaling (the local pool controller and the KEDA ScaledObject read the same numbers):
    lag_threshold: int = 50  # KEDA lagThreshold: unanswered requests per replica
    activation_lag: int = 0  # KEDA activationLagThreshold: lag above this wakes a pool at zero
    cooldown_s: int = 60  # KEDA cooldownPeriod: idle this long before a min-0 pool goes to zero
    stabilization_s: int = 30  # HPA scaleDown stabilizationWindowSeconds: highest wish in it wins
    scale_down_period_s: int = 15  # at most one replica removed per period
    gpu_memory_gb: float = 0.0  # GPU memory per replica where a GPU budget is set (RSCF_POOL_GPU_MEMORY_GB)
    replica_rps: float = 0.0  # requests/s one replica sustains (predictive scaling); 0: learnt from metrics
    standby: int = 0  # warm replicas parked with the model loaded (a scale-up activates one): memory, no CPU

    @property
    def replica_cores(self) -> float:
        """CPU cores one replica costs: the Kubernetes cpu request ("1", "250m") as a number."""
        text = self.cpu_request.strip()
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


TEXT_SMALL, TEXT_LARGE, IMAGE, SPEECH, ECHO = "text-small", "text-large", "image", "speech", "echo"

_GPU = dict(gpu=True, grace_s=300, memory_request="2Gi", memory_limit="16Gi", gpu_memory_gb=8.0)

POOL_TABLE: tuple[Pool, ...] = (
    Pool(TEXT_SMALL, "TEXT", "smollm2-135m", "1", (TEXT_LARGE,), PoolPrice(per_request=0.01, per_1k_tokens=0.5),
         max_replicas=6, replica_rps=4.0),
    Pool(TEXT_LARGE, "TEXT", "smollm2-135m", "1", (TEXT_SMALL,), PoolPrice(per_request=0.02, per_1k_tokens=2.0),
         **_GPU),
    Pool(IMAGE, "IMAGE", "shapes-ddpm", "1", (), PoolPrice(per_request=0.02, per_image=1.0), **_GPU),
    Pool(SPEECH, "AUDIO", "piper-joe", "1", (), PoolPrice(per_request=0.01, per_audio_second=0.05)),
    # Benchmarks and tests: answers at once, costs nothing; a tenant with the `echo` feature goes here. A model
    # that costs nothing gains nothing by waiting for a fuller batch: it takes what is there (500/s: p99 55 -> 46-50 ms).
    Pool(ECHO, "ANY", "echo", "1", (), PoolPrice(), max_batch=256, max_wait_ms=0.0, in_demo=False,
         max_replicas=8, cpu_request="250m", memory_request="256Mi", memory_limit="512Mi",
         lag_threshold=200, replica_rps=1000.0),
)

# Priority lanes: each pool has a request topic per priority (rscf/settings.py Topics.lane); a worker
# drains them highest first, so a NORMAL/LOW backlog never sits in front of a HIGH request.
PRIORITY_LANES: tuple[str, ...] = ("HIGH", "NORMAL", "LOW")

POOL_BY_NAME: dict[str, Pool] = {p.name: p for p in POOL_TABLE}
POOLS: tuple[str, ...] = tuple(p.name for p in POOL_TABLE)
DEMO_POOLS: tuple[str, ...] = tuple(p.name for p in POOL_TABLE if p.in_demo)


def pool(name: str) -> Pool:
    """The row of a pool; KeyError names the known pools."""
    try:
        return POOL_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown pool {name!r}; known: {', '.join(POOLS)}") from None
