"""The embedding model as a small loopback HTTP service, shared by the pipeline job and the CLI.

Why a service: loading and running torch inside a thread-mode PyFlink operator
(pemja) stalled the operator for minutes and with it the checkpoint barriers
(measured: checkpoints expired, the job restarted in a loop). Serving the model
from its own process keeps torch out of the TaskManager, lets one warm model
serve every operator instance, and lets the job degrade (rules-only moderation,
no retrieval) when the model is away instead of stopping.

Speed (issue #14): the model is MiniLM int8 ONNX when its export is installed (~3 ms a text
on one thread vs 6-15 ms in torch, same quality: `operators.embedding_onnx`), or torch in half
precision on a CUDA GPU when one is present (`choose_backend`). Model threads serve every
connection through a `Batcher`: requests that arrive while a forward runs are embedded together
in the next one (no added wait when idle), each distinct text once, and a `VectorCache` answers
texts seen before without the model. Before, each request took a lock for its own forward:
callers queued behind one another one text at a time.

API: ``POST /embed`` with ``{"texts": [...]}`` answers ``{"dim": 384, "vectors":
"<base64 of float32 rows>"}``; ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import signal
import threading
import time
from typing import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from rscf.settings import SETTINGS

log = logging.getLogger("rscf.embedder")

MAX_TEXTS = 256
MAX_BODY_BYTES = 4 * 1024 * 1024


GPU_DEVICE_FILE = "/dev/nvidiactl"  # present once the NVIDIA driver is loaded; checked before importing torch
GPU_MAX_BATCH = 256  # texts per forward on a GPU (MAX_TEXTS a request): batching pays there, unlike this CPU


def choose_backend(name: str, onnx_exported: bool, gpu_present: bool) -> str:
    """"torch-cuda", "onnx-int8" or "torch" for `RSCF_EMBEDDER_BACKEND` (auto, cuda, onnx, torch).

    Why auto prefers a GPU (issue #14): on this CPU the int8 model costs ~1.3 ms a text and is most of
    the full path's CPU; a GPU embeds a batch of 256 short texts in a few ms and frees the cores."""
    if name not in ("auto", "cuda", "onnx", "torch"):
        raise ValueError(f"embedder backend must be auto, cuda, onnx or torch, not {name!r}")
    if name == "cuda" or (name == "auto" and gpu_present):
        if not gpu_present:
            raise RuntimeError("RSCF_EMBEDDER_BACKEND=cuda but no CUDA device is present")
        return "torch-cuda"
    if name == "onnx" or (name == "auto" and onnx_exported):
        return "onnx-int8"
    return "torch"


def gpu_present() -> bool:
    import os

    if not os.path.exists(GPU_DEVICE_FILE):
        return False
    import torch

    return bool(torch.cuda.is_available())


def make_backend(name: str = SETTINGS.limits.embedder_backend):
    """(embedder, backend name, model threads, forward size) for `choose_backend`'s choice.

    A GPU gets one model thread (its forwards queue on one device anyway) and forwards of up to
    GPU_MAX_BATCH texts in half precision; the CPU backends keep RSCF_EMBED_MODEL_THREADS threads."""
    from operators import embedding_onnx
    from operators.embedding import Embedder

    backend = choose_backend(name, embedding_onnx.is_exported(), gpu_present())
    threads, batch = SETTINGS.limits.embed_model_threads, SETTINGS.limits.embed_max_batch
    if backend == "torch-cuda":
        return Embedder(batch_size=GPU_MAX_BATCH, device="cuda", dtype="float16"), backend, 1, GPU_MAX_BATCH
    if backend == "onnx-int8":
        return embedding_onnx.OnnxEmbedder(threads=SETTINGS.limits.torch_threads), backend, threads, batch
    if name == "auto":
        log.warning("no ONNX export (run `python -m operators.embedding_onnx export`): serving torch MiniLM")
    return Embedder(threads=SETTINGS.limits.torch_threads), backend, threads, batch


class _Job:
    __slots__ = ("texts", "done", "vectors", "error")

    def __init__(self, texts: Sequence[str]):
        self.texts, self.done, self.vectors, self.error = list(texts), threading.Event(), None, None


class Batcher:
    """`threads` model threads; each puts the requests queued while it worked into its next forward.

    `embed` blocks its caller until its rows are ready. The cache is looked up first, so a
    request whose texts are all known never waits for the model."""

    def __init__(self, embedder, max_batch: int = SETTINGS.limits.embed_max_batch, cache=None, on_batch=None,
                 threads: int = SETTINGS.limits.embed_model_threads):
        from operators.embedding import VectorCache

        self.embedder = embedder
        self.max_batch = max_batch
        self.cache = cache if cache is not None else VectorCache()
        self.batches = 0
        self.batched_texts = 0
        self.on_batch = on_batch  # called with the distinct texts of each forward (metrics)
        self._queue: "queue.Queue[_Job]" = queue.Queue()
        self._count_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"embed-batcher-{i}", daemon=True)
                         for i in range(max(threads, 1))]
        for thread in self._threads:
            thread.start()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        found = self.cache.get_many(texts)
        missing = [t for t, v in zip(texts, found) if v is None]
        if missing:
            job = _Job(dict.fromkeys(missing))
            self._queue.put(job)
            job.done.wait()
            if job.error is not None:
                raise job.error
            fresh = dict(zip(job.texts, job.vectors))
            found = [v if v is not None else fresh[t] for t, v in zip(texts, found)]
        if not found:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack(found).astype(np.float32, copy=False)

    def _run(self) -> None:
        while True:
            jobs = [self._queue.get()]
            size = len(jobs[0].texts)
            while size < self.max_batch:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
                size += len(jobs[-1].texts)
            texts = list(dict.fromkeys(t for job in jobs for t in job.texts))
            try:
                vectors = np.asarray(self.embedder.embed(texts), dtype=np.float32)
                self.cache.put_many(texts, vectors)
                rows = dict(zip(texts, vectors))
                for job in jobs:
                    job.vectors = [rows[t] for t in job.texts]
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
                for job in jobs:
                    job.error = exc
            with self._count_lock:
                self.batches += 1
                self.batched_texts += len(texts)
            if self.on_batch is not None:
                self.on_batch(len(texts))
            for job in jobs:
                job.done.set()


class EmbeddingService:
    def __init__(self, host: str = SETTINGS.host, port: int = SETTINGS.ports.embedder) -> None:
        self.embedder, self.backend, model_threads, max_batch = make_backend()
        self.ready = threading.Event()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rscf_embedder_requests", "embedding requests", ["status"], registry=self.registry
        )
        self.texts = Counter("rscf_embedder_texts", "texts embedded", registry=self.registry)
        self.seconds = Histogram(
            "rscf_embedder_seconds",
            "time to embed one request",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=self.registry,
        )
        self.cache_hits = Counter("rscf_embedder_cache_hits", "texts answered from the cache",
                                  registry=self.registry)
        self.batch_texts = Histogram("rscf_embedder_batch_texts", "distinct texts per model forward",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batcher = Batcher(self.embedder, max_batch=max_batch, on_batch=self.batch_texts.observe,
                               threads=model_threads)
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True

    def load(self) -> None:
        t0 = time.monotonic()
        self.embedder.embed(["warm up"])
        self.ready.set()
        log.info("embedding model (%s) ready in %.1f s", self.backend, time.monotonic() - t0)

    def embed(self, texts: list[str]) -> np.ndarray:
        hits = self.batcher.cache.hits
        vectors = self.batcher.embed(texts)
        self.cache_hits.inc(max(self.batcher.cache.hits - hits, 0))  # approximate under concurrency
        return vectors

    def _handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the job and CLI reuse one connection
            # Without it a kept-alive connection meets Nagle + delayed ACK: ~40 ms per call (measured:
            # 25 prompts/s with the CPU idle).
            disable_nagle_algorithm = True
            def log_message(self, fmt: str, *args) -> None:  # access logs would drown the useful ones
                return

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, reason: str) -> None:
                service.requests.labels(status=str(code)).inc()
                self._send(code, json.dumps({"error": reason}).encode())

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._send(200, b'{"ok": true}')
                elif self.path == "/stats":
                    cache = service.batcher.cache
                    self._send(200, json.dumps({
                        "backend": service.backend, "cache_hits": cache.hits, "cache_misses": cache.misses,
                        "batches": service.batcher.batches, "batched_texts": service.batcher.batched_texts,
                    }).encode())
                elif self.path == "/readyz":
                    ok = service.ready.is_set()
                    self._send(200 if ok else 503, json.dumps({"ready": ok}).encode())
                elif self.path == "/metrics":
                    self._send(200, generate_latest(service.registry), CONTENT_TYPE_LATEST)
                else:
                    self._error(404, "not found")

            def do_POST(self) -> None:
                if self.path != "/embed":
                    return self._error(404, "not found")
                if not service.ready.is_set():
                    return self._error(503, "model loading")
                length = int(self.headers.get("Content-Length") or 0)
                if length <= 0 or length > MAX_BODY_BYTES:
                    return self._error(413 if length else 400, f"body must be 1..{MAX_BODY_BYTES} bytes")
                try:
                    texts = json.loads(self.rfile.read(length))["texts"]
                    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                        raise ValueError("texts must be a list of strings")
                    if len(texts) > MAX_TEXTS:
                        raise ValueError(f"at most {MAX_TEXTS} texts per request")
                except (ValueError, KeyError, TypeError) as exc:
                    return self._error(400, f"bad request: {exc}")
                with service.seconds.time():
                    vectors = service.embed(texts)
                service.texts.inc(len(texts))
                service.requests.labels(status="200").inc()
                body = {"dim": int(vectors.shape[1]), "n": len(texts),
                        "vectors": base64.b64encode(vectors.astype("<f4").tobytes()).decode()}
                self._send(200, json.dumps(body).encode())

        return Handler

    def serve_forever(self) -> None:
        threading.Thread(target=self.load, name="load-model", daemon=True).start()
        self.server.serve_forever(poll_interval=0.5)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    service = EmbeddingService()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=service.server.shutdown).start())
    log.info("embedding service on http://%s:%d", *service.server.server_address[:2])
    service.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
