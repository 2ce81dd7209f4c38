"""Where a handler runs: one place decides device, dtype, batch size and the memory guard.

CUDA when present (half precision, larger batches, a guard that refuses batches
whose estimated memory would exceed a fraction of the free device memory);
otherwise CPU with a deliberate thread count, because on a shared box torch's
default of one thread per core ran 2.6x slower under contention.
Models are cached per process so a pool process holds exactly one copy.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence, TypeVar

from rscf.settings import SETTINGS

from .base import ModelHandler

T = TypeVar("T")


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cuda", "cuda:1", "cpu"
    dtype: Any  # torch.dtype
    max_batch: int
    memory_fraction: float = 0.85

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": str(self.dtype).replace("torch.", ""),
                "max_batch": self.max_batch}


def plan_device(
    device: str | None = None,
    dtype: str | None = None,
    max_batch: int | None = None,
    gpu_max_batch: int = 32,
) -> DevicePlan:
    """Pick device and dtype; `device`/`dtype` force a choice (e.g. "cpu", "float32")."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if dtype is None:
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        batch = max_batch or max(gpu_max_batch, SETTINGS.limits.worker_max_batch)
    else:
        torch.set_num_threads(max(1, SETTINGS.limits.torch_threads))
        dtype = dtype or "float32"  # CPU half precision is slower than fp32
        batch = max_batch or SETTINGS.limits.worker_max_batch
    return DevicePlan(device=device, dtype=getattr(torch, dtype), max_batch=batch)


class MemoryGuard:
    """Refuses work whose estimated bytes exceed `fraction` of free CUDA memory (CPU: always fits)."""

    def __init__(self, plan: DevicePlan):
        self.plan = plan

    def free_bytes(self) -> int | None:
        if not self.plan.is_cuda:
            return None
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(self.plan.device))
        return int(free)

    def fits(self, estimate_bytes: int) -> bool:
        free = self.free_bytes()
        return free is None or estimate_bytes <= free * self.plan.memory_fraction


def split_to_fit(
    items: Sequence[T],
    max_batch: int,
    estimate: Callable[[Sequence[T]], int] | None = None,
    guard: MemoryGuard | None = None,
) -> list[list[T]]:
    """Cut a batch into in-order chunks of at most `max_batch` that the memory guard admits.

    A single item that still does not fit is returned alone: the handler reports it
    as an error rather than dropping it.
    """
    chunks: list[list[T]] = []
    pending = [list(items[i : i + max_batch]) for i in range(0, len(items), max(1, max_batch))]
    while pending:
        chunk = pending.pop(0)
        if len(chunk) > 1 and guard is not None and estimate is not None and not guard.fits(estimate(chunk)):
            half = len(chunk) // 2
            pending[0:0] = [chunk[:half], chunk[half:]]
            continue
        chunks.append(chunk)
    return chunks


_MODELS: dict[Hashable, Any] = {}
_MODELS_LOCK = threading.Lock()


def shared_model(key: Hashable, loader: Callable[[], T]) -> T:
    """Load once per process per key; later callers get the same object."""
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = loader()
        return _MODELS[key]


def forget_models() -> None:
    """Drop cached models (tests, or a worker switching versions)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def stable_seed(request: dict) -> int:
    """The request's seed, else one derived from its id, so a retried request regenerates the same output."""
    import hashlib

    params = request.get("params") or {}
    seed = params.get("seed")
    if seed is not None:
        return int(seed) & 0x7FFF_FFFF_FFFF_FFFF
    digest = hashlib.sha256(str(request.get("request_id", "")).encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def param(request: dict, name: str, default: Any = None) -> Any:
    """A GenerationParams field, treating null as absent."""
    value = (request.get("params") or {}).get(name)
    return default if value is None else value


class TorchModelHandler(ModelHandler[T]):
    """A handler of a torch model on the planned device: the constructor arguments every such
    handler shares, and one loaded copy per (kind, path, device, dtype) per process."""

    def __init__(self, model_path: str, model_name: str | None = None, model_version: str | None = None,
                 device: str | None = None, dtype: str | None = None, max_batch: int | None = None) -> None:
        self.model_path = str(model_path)
        self.model_name = model_name or self.model_name
        self.model_version = model_version or self.model_version
        self.plan: DevicePlan = plan_device(device, dtype, max_batch)
        self.guard = MemoryGuard(self.plan)

    def load_model(self) -> T:
        key = (self.modality, self.model_path, self.plan.device, str(self.plan.dtype))
        return shared_model(key, self._load)

    @abstractmethod
    def _load(self) -> T:
        """Load the model from `model_path` onto `plan.device` (called once per process and key)."""
