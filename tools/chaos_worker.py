"""The fault matrix's echo worker: the pool runtime of `rscf worker run` with a handler that counts
its model calls, can be slowed down, crashes on a poison marker and makes artifacts for images.

    python -m tools.chaos_worker --requests-topic T --results-topic R --dlq-topic D --group G \
        --calls-log FILE [--delay-ms N] [--poison MARKER]

Every request that reaches the model appends one line ``tenant<TAB>request_id<TAB>attempt`` to
``--calls-log`` with a single O_APPEND write, so the lines survive a SIGKILL and several workers
can share one file: duplicate model calls are counted from it, not guessed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference_workers.handlers.base import InferenceOutput, ModelHandler
from inference_workers.handlers.echo import EchoHandler
from rscf.pools import ECHO

POISON_MARKER = "CHAOS-POISON"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ModelCrashed(RuntimeError):
    """What a model raises on the poison input (a CUDA assert, a segfaulting kernel caught as an error)."""


class ChaosHandler(ModelHandler):
    """EchoHandler plus: a call log, a per-batch delay, a poison marker, an S3 artifact for IMAGE requests."""

    def __init__(self, calls_log: str, delay_ms: float = 0.0, poison: str = POISON_MARKER) -> None:
        self.inner = EchoHandler()
        self.model_name, self.model_version, self.modality = (self.inner.model_name, self.inner.model_version,
                                                              self.inner.modality)
        self.max_batch = self.inner.max_batch
        self.delay_s = delay_ms / 1000.0
        self.poison = poison
        self._fd = os.open(calls_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def load_model(self) -> None:
        return None

    def validate(self, request: dict) -> None:
        self.inner.validate(request)

    def batch_key(self, request: dict):
        return None

    def run_inference(self, batch: Sequence[dict], model: Any) -> list[InferenceOutput]:
        lines = "".join(f"{r.get('tenant_id')}\t{r.get('request_id')}\t{r.get('attempt')}\n" for r in batch)
        os.write(self._fd, lines.encode())
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.poison and any(self.poison in (r.get("prompt") or "") for r in batch):
            raise ModelCrashed("model crashed on a poison input")
        outputs = self.inner.run_inference(batch, None)
        for request, out in zip(batch, outputs):
            if request.get("modality") == "IMAGE":  # exercises the artifact store (object storage faults)
                out.artifact = PNG_MAGIC + str(request.get("request_id")).encode()
                out.content_type = "image/png"
        return outputs

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "handler": type(self).__name__, "delay_ms": self.delay_s * 1000}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chaos_worker")
    p.add_argument("--requests-topic", required=True)
    p.add_argument("--results-topic", required=True)
    p.add_argument("--dlq-topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--calls-log", required=True)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--poison", default=POISON_MARKER)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    from inference_workers.worker import WorkerSettings, serve

    args = parse(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = WorkerSettings(requests_topic=args.requests_topic, results_topic=args.results_topic,
                              dlq_topic=args.dlq_topic, group_id=args.group, metrics_port=-1)
    if args.bootstrap:
        settings.bootstrap = args.bootstrap
    serve(ECHO, ChaosHandler(args.calls_log, args.delay_ms, args.poison), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
