"""Test-only handlers."""

from __future__ import annotations

import time
from typing import Any, Sequence

from inference_workers.handlers.base import InferenceOutput, ModelHandler


class DelayedHandler(ModelHandler):
    """Wraps a handler and sleeps per batch: lets chaos tests kill a worker mid-batch."""

    def __init__(self, inner: ModelHandler, delay_ms: float) -> None:
        self.inner = inner
        self.delay_s = delay_ms / 1000.0
        self.model_name = inner.model_name
        self.model_version = inner.model_version
        self.modality = inner.modality

    def load_model(self):
        return self.inner.load_model()

    def validate(self, request: dict) -> None:
        self.inner.validate(request)

    def batch_key(self, request: dict):
        return self.inner.batch_key(request)

    def run_inference(self, batch: Sequence[dict], model) -> list[InferenceOutput]:
        time.sleep(self.delay_s)
        return self.inner.run_inference(batch, model)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "delay_ms": self.delay_s * 1000}
