"""Worker metrics and the tiny health/metrics HTTP server.

Each Worker owns its own prometheus ``CollectorRegistry`` so that several workers
(benchmark, tests) can live in one process without clashing on metric names.
"""

from __future__ import annotations

import json
import sys
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rscf.pools import POOLS
from rscf.settings import SETTINGS

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_MS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


LANE_REPLICA_BASE = 100  # first replica index of a backfill lane (backfill_lanes.py); live replicas stay below


def metrics_port(pool: str, replica: int = 0) -> int:
    """Port of a replica's health/metrics server: replica 0 of each pool gets first+pool index,
    further replicas follow in blocks of len(POOLS), so no two replicas on a host collide. Backfill
    lane replicas (index from LANE_REPLICA_BASE) count the same way from their own first port."""
    pool_index = POOLS.index(pool) if pool in POOLS else len(POOLS) - 1
    if replica >= LANE_REPLICA_BASE:
        return SETTINGS.ports.backfill_worker_metrics_first + pool_index + (replica - LANE_REPLICA_BASE) * len(POOLS)
    return SETTINGS.ports.worker_metrics_first + pool_index + replica * len(POOLS)


class WorkerMetrics:
    """Everything a worker reports; labels are bounded (pool, reason codes, unit kinds)."""

    def __init__(self, pool: str, worker_id: str) -> None:
        self.registry = CollectorRegistry()
        self.pool = pool
        r = self.registry
        labels = ["pool"]
        self.batch_size = Histogram(
            "rscf_worker_batch_size", "Requests per model call", labels, buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_ms = Histogram(
            "rscf_worker_queue_ms", "Time from request creation to the start of its batch (ms)",
            labels, buckets=_MS_BUCKETS, registry=r,
        )
        self.inference_ms = Histogram(
            "rscf_worker_inference_ms", "Model time per batch (ms)", labels, buckets=_MS_BUCKETS, registry=r
        )
        self.requests = Counter(
            "rscf_worker_requests", "Requests answered, by status", labels + ["status"], registry=r
        )
        self.errors = Counter(
            "rscf_worker_errors", "Error results and dead letters, by reason code", labels + ["reason"], registry=r
        )
        self.units = Counter(
            "rscf_worker_output_units", "Generated units (tokens, images, audio clips)", labels + ["unit"], registry=r
        )
        self.units_per_s = Gauge(
            "rscf_worker_output_units_per_second", "Units per second over the last batch",
            labels + ["unit"], registry=r,
        )
        self.outages = Counter(
            "rscf_worker_outages", "Times a dependency was found down (then retried)", labels + ["service"], registry=r
        )
        self.commits = Counter("rscf_worker_commits", "Offset commits", labels, registry=r)
        # Model calls per final (benchmarks, fault tests) = model_calls / finals; a request the job
        # dispatched again after a restore is answered from the replica's cache (inference_workers/answered.py).
        self.model_calls = Counter(
            "rscf_worker_model_calls", "Requests run through the model (each request of a batch counts once)",
            labels, registry=r,
        )
        self.duplicates = Counter(
            "rscf_worker_duplicate_requests",
            "Re-delivered requests answered from the results already produced, without the model", labels, registry=r,
        )
        self.buffered = Gauge("rscf_worker_buffered", "Requests waiting in the micro-batcher", labels, registry=r)
        self.ready = Gauge("rscf_worker_ready", "1 when the model is loaded and partitions are assigned", labels, registry=r)
        self.info = Gauge("rscf_worker_info", "Worker identity", labels + ["worker_id"], registry=r)
        self.info.labels(pool, worker_id).set(1)
        self.gpu_mem = Gauge("rscf_worker_gpu_memory_bytes", "torch.cuda allocated bytes", labels + ["device"], registry=r)
        self.gpu_util = Gauge("rscf_worker_gpu_utilization", "GPU utilisation percent", labels + ["device"], registry=r)

    def sample_gpu(self) -> None:
        """Refresh GPU gauges when torch sees a GPU; nothing on CPU-only hosts or model-free pools
        (torch is only consulted when a handler already imported it: importing it takes seconds)."""
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:

            if not torch.cuda.is_available():
                return
            for i in range(torch.cuda.device_count()):
                self.gpu_mem.labels(self.pool, str(i)).set(torch.cuda.memory_allocated(i))
                try:
                    self.gpu_util.labels(self.pool, str(i)).set(torch.cuda.utilization(i))
                except Exception:  # noqa: BLE001 - needs pynvml; memory alone is still useful
                    pass
        except Exception:  # noqa: BLE001
            log.debug("gpu sampling failed", exc_info=True)

    def render(self) -> bytes:
        self.sample_gpu()
        return generate_latest(self.registry)


def scrape_target_file(name: str):
    """file_sd target file the local Prometheus reads (deploy/local/services.py: job rscf-workers)."""
    return SETTINGS.paths.data / "prometheus" / "targets" / f"{name}.json"


def register_scrape_target(name: str, port: int, labels: dict[str, str]) -> None:
    """Announce a /metrics endpoint to the local Prometheus; harmless where no Prometheus runs."""
    path = scrape_target_file(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [f"{SETTINGS.host}:{port}"], "labels": labels}]))
        tmp.replace(path)  # atomic: Prometheus never reads half a file
    except OSError:
        log.debug("cannot write scrape target %s", path, exc_info=True)


def unregister_scrape_target(name: str) -> None:
    scrape_target_file(name).unlink(missing_ok=True)


def announced_port(pool: str, replica: int) -> int:
    """The health port a stack replica announced (its scrape target: the real one, also when it found its own
    port taken and fell back to an ephemeral one), else the one `metrics_port` gives it. Probes read this:
    a replica on a fallback port used to stay "not ready" to `rscf workers start` and the pool controller."""
    try:
        doc = json.loads(scrape_target_file(f"worker-{pool}-{replica}").read_text())
        return int(str(doc[0]["targets"][0]).rsplit(":", 1)[1])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return metrics_port(pool, replica)


class AutoscalerMetrics:
    """What `rscf workers autoscale` exports (deploy/prometheus/METRICS.md, pool autoscaler)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.lag = Gauge("rscf_pool_consumer_lag", "Latest minus committed offset of the pool's group",
                         ["pool"], registry=self.registry)
        self.replicas = Gauge("rscf_pool_replicas", "Replicas running now", ["pool"], registry=self.registry)
        self.desired = Gauge("rscf_pool_desired_replicas", "Replicas the last decision asked for",
                             ["pool"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """stdlib HTTP server in a daemon thread: /healthz, /readyz, /metrics."""

    def __init__(self, metrics: WorkerMetrics, is_ready: Callable[[], bool], port: int, host: str = "127.0.0.1") -> None:
        self.metrics = metrics
        self.is_ready = is_ready
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b'{"status":"alive"}', "application/json")
                elif path == "/readyz":
                    ok = outer.is_ready()
                    body = json.dumps({"ready": ok}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                elif path == "/metrics":
                    self._send(200, outer.metrics.render(), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the scraper gave up; nothing to do

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="worker-health", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
