"""The embedding model as a small loopback HTTP service, shared by the pipeline job and the CLI.

Why a service: loading and running torch inside a thread-mode PyFlink operator
(pemja) stalled the operator for minutes and with it the checkpoint barriers
(measured: checkpoints expired, the job restarted in a loop). Serving the model
from its own process keeps torch out of the TaskManager, lets one warm model
serve every operator instance, and lets the job degrade (rules-only moderation,
no retrieval) when the model is away instead of stopping.

API: ``POST /embed`` with ``{"texts": [...]}`` answers ``{"dim": 384, "vectors":
"<base64 of float32 rows>"}``; ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from rscf.settings import SETTINGS

log = logging.getLogger("rscf.embedder")

MAX_TEXTS = 256
MAX_BODY_BYTES = 4 * 1024 * 1024


class EmbeddingService:
    def __init__(self, host: str = SETTINGS.host, port: int = SETTINGS.ports.embedder) -> None:
        from operators.embedding import Embedder

        self.embedder = Embedder(threads=SETTINGS.limits.torch_threads)
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
        self._model_lock = threading.Lock()  # one forward pass at a time: torch runs on one thread
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True

    def load(self) -> None:
        t0 = time.monotonic()
        self.embedder.embed(["warm up"])
        self.ready.set()
        log.info("embedding model ready in %.1f s", time.monotonic() - t0)

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._model_lock:
            return self.embedder.embed(texts)

    def _handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
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
