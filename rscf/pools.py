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
    in_demo: bool = True  # `rscf demo` starts a replica of it
    # Where it runs on Kubernetes (deploy/k8s_pools.py renders the worker Deployment and KEDA ScaledObject):
    gpu: bool = False
    min_replicas: int = 0  # 0: scaled to zero when idle (a model load on the first request)
    max_replicas: int = 4
    grace_s: int = 60  # terminationGracePeriodSeconds: longer than the slowest batch
    cpu_request: str = "1"
    memory_request: str = "1Gi"
    memory_limit: str = "3Gi"


TEXT_SMALL, TEXT_LARGE, IMAGE, SPEECH, ECHO = "text-small", "text-large", "image", "speech", "echo"

_GPU = dict(gpu=True, grace_s=300, memory_request="2Gi", memory_limit="16Gi")

POOL_TABLE: tuple[Pool, ...] = (
    Pool(TEXT_SMALL, "TEXT", "smollm2-135m", "1", (TEXT_LARGE,), PoolPrice(per_request=0.01, per_1k_tokens=0.5),
         min_replicas=1, max_replicas=6),
    Pool(TEXT_LARGE, "TEXT", "smollm2-135m", "1", (TEXT_SMALL,), PoolPrice(per_request=0.02, per_1k_tokens=2.0),
         **_GPU),
    Pool(IMAGE, "IMAGE", "shapes-ddpm", "1", (), PoolPrice(per_request=0.02, per_image=1.0), **_GPU),
    Pool(SPEECH, "AUDIO", "piper-joe", "1", (), PoolPrice(per_request=0.01, per_audio_second=0.05)),
    # Benchmarks and tests: answers at once, costs nothing; a tenant with the `echo` feature goes here.
    Pool(ECHO, "ANY", "echo", "1", (), PoolPrice(), max_batch=256, in_demo=False,
         min_replicas=1, max_replicas=8, cpu_request="250m", memory_request="256Mi", memory_limit="512Mi"),
)

POOL_BY_NAME: dict[str, Pool] = {p.name: p for p in POOL_TABLE}
POOLS: tuple[str, ...] = tuple(p.name for p in POOL_TABLE)
DEMO_POOLS: tuple[str, ...] = tuple(p.name for p in POOL_TABLE if p.in_demo)


def pool(name: str) -> Pool:
    """The row of a pool; KeyError names the known pools."""
    try:
        return POOL_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown pool {name!r}; known: {', '.join(POOLS)}") from None
