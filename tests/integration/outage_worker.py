"""A worker process for the outage tests: an image-like pool whose "model" draws a tiny PNG.

Run as a script with RSCF_* variables pointing at a private stack, so the runtime's own
settings (S3 endpoint, bootstrap, registry) reach the private services. The PNG carries
the request_id in a text chunk, so a test can prove each artifact belongs to its request.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
import time
from typing import Sequence

from inference_workers.handlers.base import InferenceOutput, ModelHandler
from inference_workers.worker import WorkerSettings, serve


def png_for(request_id: str, prompt: str) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    colour = tuple(hashlib.sha256(prompt.encode()).digest()[:3])
    info = PngInfo()
    info.add_text("request_id", request_id)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


class PngHandler(ModelHandler):
    model_name = "outage-png"
    model_version = "1"
    modality = "IMAGE"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def load_model(self):
        return "png"

    def run_inference(self, batch: Sequence[dict], model) -> list[InferenceOutput]:
        time.sleep(self.delay_s)
        return [
            InferenceOutput(artifact=png_for(str(r["request_id"]), str(r["prompt"])), content_type="image/png")
            for r in batch
        ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests-topic", required=True)
    ap.add_argument("--results-topic", required=True)
    ap.add_argument("--dlq-topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--delay-s", type=float, default=0.0)
    ap.add_argument("--max-batch", type=int, default=4)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = WorkerSettings(
        max_batch=args.max_batch, max_wait_ms=20, requests_topic=args.requests_topic,
        results_topic=args.results_topic, dlq_topic=args.dlq_topic, group_id=args.group,
        metrics_port=args.metrics_port, s3_retry_max_s=120.0,
    )
    serve("image", PngHandler(args.delay_s), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
