"""A model-free handler: answers at once, so pipeline benchmarks measure the pipeline, not a model."""

from __future__ import annotations

import time
from typing import Any, Hashable, Sequence

from rscf.pools import ECHO, pool
from rscf.settings import SETTINGS

from .base import InferenceOutput, ModelHandler, RequestRejected

_ECHO_POOL = pool(ECHO)


class EchoHandler(ModelHandler[None]):
    model_name = _ECHO_POOL.model
    model_version = _ECHO_POOL.default_version
    modality = "TEXT"

    def __init__(
        self,
        mode: str = "reverse",
        prefix: str = "echo: ",
        batch_latency_ms: float | None = None,
        item_latency_ms: float | None = None,
        max_batch: int | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
        **_: Any,
    ):
        if mode not in ("reverse", "prefix"):
            raise ValueError(f"unknown echo mode {mode!r}")
        self.mode = mode
        self.prefix = prefix
        # optional simulated model cost, to exercise batching without a model
        self.batch_latency_ms = SETTINGS.limits.echo_batch_ms if batch_latency_ms is None else batch_latency_ms
        self.item_latency_ms = SETTINGS.limits.echo_item_ms if item_latency_ms is None else item_latency_ms
        self.max_batch = max_batch or _ECHO_POOL.max_batch
        self.model_name = model_name or self.model_name
        self.model_version = model_version or self.model_version

    def load_model(self) -> None:
        return None

    def validate(self, request: dict) -> None:
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise RequestRejected("empty_prompt")
        if len(prompt) > SETTINGS.limits.max_prompt_chars:
            raise RequestRejected("prompt_too_long")

    def batch_key(self, request: dict) -> Hashable:
        return None

    def run_inference(self, batch: Sequence[dict], model: None) -> list[InferenceOutput]:
        delay = self.batch_latency_ms + self.item_latency_ms * len(batch)
        if delay > 0:
            time.sleep(delay / 1000.0)
        outputs = []
        for request in batch:
            prompt = request["prompt"]
            text = prompt[::-1] if self.mode == "reverse" else self.prefix + prompt
            outputs.append(InferenceOutput(text=text, content_type="text/plain",
                                           tokens_out=len(text.split())))
        return outputs

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": "cpu", "dtype": None, "max_batch": self.max_batch,
                "mode": self.mode}
