"""`rscf bench workers`: how much of a handler's batched speed survives Kafka, batching and commits.

Both figures come from the same process and the same requests: first the handler
alone (offline, batches of ``max_batch``), then a Worker draining a pre-filled
fresh topic on the real broker (saturated: the backlog exists before it starts).
The ratio is the runtime's efficiency; the target is >= 0.8.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from rscf.clock import now_ms
from rscf.kafka_clients import client_security, create_topics, delete_topics, producer_config
from rscf.settings import SETTINGS


@dataclass
class BenchResult:
    pool: str
    n: int
    max_batch: int
    offline_rps: float
    worker_rps: float
    ratio: float
    mean_batch: float
    queue_ms_p50: float
    queue_ms_p95: float
    e2e_ms_p50: float
    e2e_ms_p95: float
    errors: int
    answered: int

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def make_request(pool: str, i: int, run_id: str, created_ms: int) -> dict:
    """An InferenceRequest record as the pipeline would send it to ``pool``."""
    params: dict[str, Any] = {
        "max_tokens": None, "temperature": None, "top_p": None, "width": None,
        "height": None, "steps": None, "seed": i, "voice": None,
    }
    modality = "TEXT"
    prompt = f"benchmark prompt number {i} about a small red fox"
    if pool.startswith("text"):
        params.update(max_tokens=16, temperature=0.7, top_p=0.9)
    elif pool == "image":
        modality = "IMAGE"
        params.update(width=32, height=32, steps=10)
        prompt = ["a circle", "a square", "a triangle"][i % 3]
    elif pool == "speech":
        modality = "AUDIO"
    return {
        "request_id": f"bench-{run_id}-{i}",
        "attempt": 0,
        "tenant_id": "bench",
        "pool": pool,
        "model_name": "bench",
        "model_version": "0",
        "modality": modality,
        "prompt": prompt,
        "params": params,
        "priority": "NORMAL",
        "deadline": created_ms + 3_600_000,
        "created_at": created_ms,
        "trace": None,
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1])


def offline_throughput(handler, model, requests: list[dict], max_batch: int) -> float:
    """Requests per second of the handler alone, batches of ``max_batch`` in arrival order."""
    t0 = time.perf_counter()
    for i in range(0, len(requests), max_batch):
        handler.run_inference(requests[i : i + max_batch], model)
    return len(requests) / max(time.perf_counter() - t0, 1e-9)


def run_bench(
    pool: str,
    handler,
    n: int = 2000,
    max_batch: int = 8,
    max_wait_ms: float = 20,
    progress: Callable[[str], None] = lambda _m: None,
    use_tqdm: bool = True,
) -> BenchResult:
    from confluent_kafka import Consumer, Producer
    from tqdm import tqdm

    from inference_workers.worker import Worker, WorkerSettings
    from schemas.serde import serde_for

    run_id = uuid.uuid4().hex[:8]
    req_topic = f"{SETTINGS.topics.request_prefix}bench-{pool}-{run_id}"
    res_topic = f"rscf.bench.results.{run_id}"
    create_topics([req_topic, res_topic], SETTINGS.topics.partitions)
    try:
        progress("loading model")
        model = handler.load_model()
        base = now_ms()
        requests = [make_request(pool, i, run_id, base) for i in range(n)]
        # Warm-up batch (lazy init, allocator) outside both measurements.
        handler.run_inference(requests[:max_batch], model)
        progress("offline batched throughput")
        offline_rps = offline_throughput(handler, model, requests, max_batch)

        progress(f"producing {n} requests to {req_topic}")
        req_serde = serde_for(SETTINGS.topics.requests(pool))
        producer = Producer(producer_config(linger_ms=20))
        created = now_ms()
        for r in tqdm(requests, desc="produce", disable=not use_tqdm):
            r["created_at"] = created
            r["deadline"] = created + 3_600_000
            producer.produce(req_topic, key=r["request_id"].encode(), value=req_serde.encode(r))
            producer.poll(0)
        producer.flush(60)

        settings = WorkerSettings(
            max_batch=max_batch, max_wait_ms=max_wait_ms, requests_topic=req_topic, results_topic=res_topic,
            group_id=f"rscf-bench-{run_id}", metrics_port=-1, max_buffered=max(4 * max_batch, 64),
        )
        worker = Worker(pool, handler, settings)
        worker.load(model)
        thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
        thread.start()
        bar = tqdm(total=n, desc="worker", disable=not use_tqdm)
        seen = 0
        deadline = time.monotonic() + max(120.0, n * 0.5)
        while worker.answered < n and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
            bar.update(worker.answered - seen)
            seen = worker.answered
        bar.close()
        worker.stop()
        thread.join(60)
        span = (worker.last_answer_at or time.monotonic()) - (worker.first_ingest_at or time.monotonic())
        worker_rps = worker.answered / max(span, 1e-9)

        progress("reading results")
        result_serde = serde_for(SETTINGS.topics.results)
        consumer = Consumer({
            "bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security(), "group.id": f"rscf-bench-reader-{run_id}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
        })
        consumer.subscribe([res_topic])
        results: dict[str, dict] = {}
        read_deadline = time.monotonic() + 60
        while len(results) < worker.answered and time.monotonic() < read_deadline:
            for m in consumer.consume(500, 0.5):
                if m.error() is None:
                    rec = result_serde.decode(m.value())
                    results[rec["request_id"]] = rec
        consumer.close()
        queue = [float(r["queue_ms"]) for r in results.values()]
        e2e = [float(_ms(r["completed_at"]) - created) for r in results.values()]
        batches = [r["batch_size"] for r in results.values() if r["batch_size"]]
        errors = sum(1 for r in results.values() if r["status"] != "OK")
        return BenchResult(
            pool=pool, n=n, max_batch=max_batch, offline_rps=offline_rps, worker_rps=worker_rps,
            ratio=worker_rps / offline_rps if offline_rps else 0.0,
            mean_batch=statistics.fmean(batches) if batches else 0.0,
            queue_ms_p50=percentile(queue, 50), queue_ms_p95=percentile(queue, 95),
            e2e_ms_p50=percentile(e2e, 50), e2e_ms_p95=percentile(e2e, 95),
            errors=errors, answered=len(results),
        )
    finally:
        delete_topics([req_topic, res_topic])


def _ms(value) -> int:
    from inference_workers.batching import to_epoch_ms

    return to_epoch_ms(value) or 0
