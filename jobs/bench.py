"""`rscf bench pipeline`: sustained prompts/s and pipeline overhead latency, with an echo worker.

An isolated copy of the job (own topics, own job name) and one echo worker;
a tenant with the `echo` feature and a quota far above the offered rate.
Prompts are offered at `rate` per second for `duration_s`; each final's
overhead is (arrival at the reader - prompt created_at) - inference_ms reported
by the worker, so it covers Kafka hops, every Flink operator, the worker's
queueing and micro-batch wait, and the reader. Throughput is finals per second
over the offered window plus the drain.
"""

from __future__ import annotations

import statistics
import time

from jobs import harness


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(int(q * len(values)), len(values) - 1)], 1)


def run_bench(rate: int = 500, duration_s: float = 20.0, local: bool = False, progress: bool = True) -> dict:
    from tqdm import tqdm

    cfg = harness.isolated_config("bench")
    harness.create_topics(cfg, partitions=2)
    job, worker = harness.PipelineRun(cfg, local=local), harness.EchoWorker(cfg)
    producer, reader = harness.Producer(cfg), harness.Reader(cfg)
    tenant = "bench-tenant"
    try:
        producer.control(harness.policy_event(tenant, ["echo"], rate_per_s=1e6, burst=1_000_000))
        producer.flush()
        t0 = time.monotonic()
        job.start()
        worker.start()
        warm = [f"warm-{i}" for i in range(20)]
        for rid in warm:
            producer.prompt(harness.prompt(rid, tenant, "warm up"))
        producer.flush()
        reader.until(lambda g: all(r in g.content for r in warm), 300)
        if not all(r in reader.got.content for r in warm):
            raise RuntimeError("the pipeline did not answer the warm-up prompts within 300 s")
        startup_s = time.monotonic() - t0

        n = int(rate * duration_s)
        ids = [f"b-{i}" for i in range(n)]
        start = time.monotonic()
        bar = tqdm(total=n, desc="prompts", unit="p", disable=not progress)
        for i, rid in enumerate(ids):
            target = start + i / rate
            while True:
                now = time.monotonic()
                if now >= target:
                    break
                reader.poll(min(target - now, 0.005))
            producer.prompt(harness.prompt(rid, tenant, f"benchmark prompt {i}"))
            bar.update(1)
        bar.close()
        producer.flush()
        offered_s = time.monotonic() - start
        got = reader.until(lambda g: all(r in g.content for r in ids), max(60.0, duration_s * 3))
        done_s = time.monotonic() - start
        finals = [got.content[r][0] for r in ids if r in got.content]
        overhead = [got.arrival_ms[f["request_id"]] - f["created_at"] if isinstance(f["created_at"], int)
                    else got.arrival_ms[f["request_id"]] - int(f["created_at"].timestamp() * 1000)
                    for f in finals]
        overhead = [o - f["latency"]["inference_ms"] for o, f in zip(overhead, finals)]
        pipeline_ms = [f["latency"]["pipeline_ms"] for f in finals]
        return {
            "rate_offered": rate,
            "duration_s": duration_s,
            "prompts": n,
            "finals": len(finals),
            "succeeded": sum(1 for f in finals if f["status"] == "SUCCEEDED"),
            "duplicates": sum(1 for r in ids if len(got.content.get(r, [])) > 1),
            "send_rate": round(n / offered_s, 1),
            "throughput_per_s": round(len(finals) / done_s, 1),
            "overhead_ms": {"p50": _pct(overhead, 0.5), "p95": _pct(overhead, 0.95), "p99": _pct(overhead, 0.99),
                            "mean": round(statistics.fmean(overhead), 1) if overhead else None},
            "job_pipeline_ms_p50": _pct(pipeline_ms, 0.5),
            "startup_s": round(startup_s, 1),
            "job": cfg.job_name,
            "mode": "local MiniCluster" if local else "cluster",
        }
    finally:
        worker.stop()
        job.stop()
        reader.close()
        harness.delete_topics(cfg)
