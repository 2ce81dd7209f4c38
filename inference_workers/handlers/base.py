"""One interface for every model a worker pool serves, after Apache Beam's RunInference `ModelHandler`.

The runtime only ever talks to this interface: it loads once, asks which
requests batch well together, runs a batch, and reports what it serves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Generic, Hashable, Sequence, TypeVar

ModelT = TypeVar("ModelT")


@dataclass
class InferenceOutput:
    """What a handler returns for one request; the runtime turns it into an InferenceResult."""

    text: str | None = None
    artifact: bytes | None = None  # stored in object storage by the runtime, never sent on Kafka
    content_type: str | None = None  # e.g. "image/png", "audio/wav", "text/plain"
    tokens_out: int | None = None
    error: str | None = None  # set when this request failed; the rest of the batch is unaffected
    retryable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class RequestRejected(ValueError):
    """The model cannot serve this request (too long, unsupported size or voice): not retryable."""


class ModelHandler(ABC, Generic[ModelT]):
    """Load, batch, generate, describe."""

    #: model family name as stored in the model registry, e.g. "smollm2-135m"
    model_name: str = "unnamed"
    model_version: str = "0"
    modality: str = "TEXT"

    @abstractmethod
    def load_model(self) -> ModelT:
        """Load weights once per process (the runtime calls this before consuming)."""

    def validate(self, request: dict) -> None:
        """Raise RequestRejected with a reason when this model cannot serve the request."""

    def batch_key(self, request: dict) -> Hashable:
        """Requests with equal keys may share a batch (same image size, same step count...)."""
        return None

    @abstractmethod
    def run_inference(self, batch: Sequence[dict], model: ModelT) -> list[InferenceOutput]:
        """Generate for a whole batch; one output per request, in order."""

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "modality": self.modality,
            "handler": type(self).__name__,
        }
