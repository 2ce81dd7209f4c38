"""`rscf bench pipeline`: sustained prompts/s and pipeline overhead latency, with an echo worker.

An isolated copy of the job (own topics, own job name) and one echo worker;
a tenant with the `echo` feature and a quota far above the offered rate.
Prompts are offered at `rate` per second for `duration_s`; each final's
overhead is (arrival at the reader - prompt created_at) - inference_ms reported
by the worker, so it covers Kafka hops, every Flink operator, the worker's
queueing and micro-batch wait, the wait for the checkpoint that commits the
final's transaction (exactly-once delivery, the default), and the reader, which
reads `read_committed`. Throughput is finals per second over the offered window
plus the drain. `model_calls_per_final` is the echo worker's model calls over
the finals read (1.0 when no request ran twice).

`features` (issue #14) adds tenant features to `echo`: `moderation_model,rag` is the full path
(classifier on input and output, retrieval from the Redis knowledge base). Its prompts come from
`tools.prompt_mix` (30 % repeats by default); the run reports failures by reason (FAILED or
missing finals; REJECTED by moderation is an answer, counted apart), the embedding service's
work per prompt (texts asked of it, texts its model embedded: what the job's and the service's
caches and batches saved) and the job's own pipeline time per final.
"""

from __future__ import annotations

import os
import statistics
import time

import psutil

from deploy.local import flink_rest
from deploy.local.processes import cpu_seconds
from jobs.config import EXACTLY_ONCE
from rscf.clock import now_ms
from rscf.kafka_clients import client_security
from rscf.settings import SETTINGS
from schemas.keys import SEP
from tools import harness
from tools.side_by_side import percentile


class CpuMeter:
    """CPU seconds each stack service, the echo worker and this process spend over a window.

    2000 prompts/s on 2 cores leaves 1 ms of machine CPU per prompt for everything:
    this shows where it goes (per service, per prompt) instead of guessing.
    """

    def __init__(self, extra: dict[str, int | None]):
        from deploy.local.processes import recorded_process
        from deploy.local.services import SERVICES

        self.procs: dict[str, psutil.Process] = {}
        for svc in SERVICES:
            proc = recorded_process(svc.pid_file)
            if proc is not None:
                self.procs[svc.name] = proc
        for name, pid in extra.items():
            if pid is not None:
                self.procs[name] = psutil.Process(pid)
        self.start: dict[str, float] = {}

    def snapshot(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                out[name] = cpu_seconds(proc) if name != "bench" else sum(os.times()[:2])
            except psutil.NoSuchProcess:
                out[name] = 0.0
        return out

    def begin(self) -> None:
        self.start = self.snapshot()
        self.t0 = time.monotonic()

    def end(self, prompts: int) -> dict:
        """CPU per prompt in microseconds, by process, and the machine's share used."""
        now, wall = self.snapshot(), time.monotonic() - self.t0
        spent = {n: now[n] - self.start.get(n, 0.0) for n in now}
        per = {n: round(s / max(prompts, 1) * 1e6) for n, s in sorted(spent.items(), key=lambda kv: -kv[1]) if s > 0.005}
        return {"us_per_prompt": per, "total_us_per_prompt": sum(per.values()),
                "cores_busy": round(sum(spent.values()) / wall, 2), "machine_cores": psutil.cpu_count()}


def checkpoint_stats(job_id: str | None) -> dict | None:
    """Flink's own checkpoint figures for the run's job: how long a checkpoint takes end to end
    (what a transactional final waits for on top of the interval) and how big it is."""
    if job_id is None:
        return None
    import httpx

    try:
        body = flink_rest.get(f"/jobs/{job_id}/checkpoints", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    summary, latest = body.get("summary") or {}, (body.get("latest") or {}).get("completed") or {}
    duration = summary.get("end_to_end_duration") or {}
    return {"completed": (body.get("counts") or {}).get("completed"), "failed": (body.get("counts") or {}).get("failed"),
            "duration_ms_p50": duration.get("p50"), "duration_ms_p99": duration.get("p99"),
            "duration_ms_max": duration.get("max"), "state_bytes": latest.get("state_size")}


def _reasons(finals: list[dict], status: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in finals:
        if f["status"] == status:
            out[f.get("reason") or "none"] = out.get(f.get("reason") or "none", 0) + 1
    return out


def failures_by_reason(finals: list[dict], prompts: int) -> dict[str, int]:
    """FAILED and EXPIRED finals by reason, and prompts with no final (`no_final`): must all be 0."""
    out = {f"{status.lower()}:{reason}": k for status in ("FAILED", "EXPIRED")
           for reason, k in _reasons(finals, status).items()}
    if prompts > len(finals):
        out["no_final"] = prompts - len(finals)
    return out


def degraded_by_step(finals: list[dict]) -> dict[str, int]:
    """Finals that went without a step (`degraded`: skipped, fell back, failed closed) by stage:outcome. A run
    whose checks were skipped did less work than its mix needs: its rate is not the full path's (must be {})."""
    out: dict[str, int] = {}
    for f in finals:
        for d in f.get("degraded") or ():
            step = f"{d['stage']}:{d['outcome']}"
            out[step] = out.get(step, 0) + 1
    return out


def embedder_stats() -> dict | None:
    """The embedding service's own counters (`/stats`), or None when it is away or too old to have them."""
    import httpx

    try:
        return httpx.get(f"{SETTINGS.embedder_url}/stats", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


def embedder_work(before: dict | None, after: dict | None, prompts: int) -> dict | None:
    """What the embedding service did per prompt during the run (each prompt asks for up to two texts:
    its own and its answer's; fewer means the job's cache answered)."""
    if not before or not after:
        return None
    asked = (after["cache_hits"] + after["cache_misses"]) - (before["cache_hits"] + before["cache_misses"])
    embedded = after["batched_texts"] - before["batched_texts"]
    batches = after["batches"] - before["batches"]
    return {"backend": after.get("backend"), "texts_asked_per_prompt": round(asked / max(prompts, 1), 3),
            "texts_embedded_per_prompt": round(embedded / max(prompts, 1), 3),
            "job_cache_hit_rate": round(1 - asked / max(2 * prompts, 1), 3),
            "mean_batch": round(embedded / batches, 1) if batches else None}


TICK_S = 0.005  # prompts go out in 5 ms bursts (10 at 2000/s)


class UncommittedArrivals:
    """When each final's request id (from its Kafka key) first shows up to a read_uncommitted reader.

    In transactional mode the sink writes a final at once and commits it with the next checkpoint;
    this reader sees it at the write, as an at-least-once job's reader would (in exactly-once mode,
    read-back, there is no transaction: the wait is ~0). Comparing it with the
    read_committed arrival of the same final, in the same run, gives what the promise costs without
    the run-to-run noise of a shared machine. Keys only, no decoding: it must cost the benchmark little.
    """

    def __init__(self, cfg) -> None:
        from confluent_kafka import Consumer

        self.c = Consumer({"bootstrap.servers": cfg.bootstrap, **client_security(), "group.id": f"uncommitted-{cfg.group_id}",
                           "auto.offset.reset": "earliest", "isolation.level": "read_uncommitted",
                           "enable.auto.commit": False})
        self.c.subscribe([cfg.content])
        self.arrival_ms: dict[str, int] = {}

    def poll(self) -> None:
        msgs = self.c.consume(500, 0)
        while msgs:
            now = now_ms()
            for msg in msgs:
                if not msg.error() and msg.key():  # keyed by identity (tenant, request id): the request id
                    self.arrival_ms.setdefault(msg.key().decode("utf-8", "replace").rsplit(SEP, 1)[-1], now)
            msgs = self.c.consume(500, 0) if len(msgs) == 500 else None

    def close(self) -> None:
        self.c.close()


class FinalsReader(harness.Reader):
    """The benchmark's read_committed reader of finals, polling an `UncommittedArrivals` alongside."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg, roles=("content",))
        self.uncommitted = UncommittedArrivals(cfg) if cfg.exactly_once else None

    def poll(self, timeout: float = 0.2) -> int:
        if self.uncommitted is None:
            return super().poll(timeout)
        n, deadline = 0, time.monotonic() + timeout
        while True:  # in short slices, so both readers' arrival times keep a few ms of resolution
            self.uncommitted.poll()
            n += super().poll(min(max(deadline - time.monotonic(), 0.0), TICK_S))
            if n or time.monotonic() >= deadline:
                return n

    def close(self) -> None:
        if self.uncommitted is not None:
            self.uncommitted.close()
        super().close()


def _offer(producer, reader, ids: list[str], rate: float, tenant: str, bar, texts: list[str] | None = None) -> None:
    """Send `ids` at `rate`: what is due goes out, then read until the next prompt is due."""
    start = time.monotonic()
    sent, n = 0, len(ids)
    while sent < n:
        due = min(n, int((time.monotonic() - start) * rate) + 1)
        for i in range(sent, due):
            producer.prompt(harness.prompt(ids[i], tenant, texts[i] if texts else f"benchmark prompt {i}"))
        if bar is not None:
            bar.update(due - sent)
        sent = due
        # librdkafka waits in whole milliseconds: a shorter wait returns at once and spins.
        reader.poll(max(start + sent / rate - time.monotonic(), TICK_S))


def run_bench(rate: int = 500, duration_s: float = 20.0, local: bool = False, progress: bool = True,
              parallelism: int = 1, warmup_s: float = 5.0, delivery: str = EXACTLY_ONCE,
              checkpoint_interval_ms: int = 0, features: tuple[str, ...] = (), repeat_share: float = 0.3,
              tier: str = "STANDARD", keep_samples: bool = False) -> dict:
    """One benchmark run; `keep_samples` adds every prompt's overhead (`overhead_samples_ms`) for pooling."""
    from tqdm import tqdm

    from tools.prompt_mix import prompt_mix

    cfg = harness.isolated_config("bench", parallelism=parallelism, delivery=delivery,
                                  checkpoint_interval_ms=checkpoint_interval_ms)  # 0: the mode's default
    harness.create_topics(cfg, partitions=cfg.parallelism)  # one partition per subtask
    job, worker = harness.PipelineRun(cfg, local=local), harness.EchoWorker(cfg)
    producer, reader = harness.Producer(cfg, linger_ms=SETTINGS.limits.producer_linger_ms), FinalsReader(cfg)
    tenant = "bench-tenant"
    try:
        producer.control(harness.policy_event(tenant, ["echo", *features], rate_per_s=1e6, burst=1_000_000, tier=tier))
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

        if warmup_s > 0:  # JIT and caches of a fresh TaskManager: not part of the figures
            wids = [f"w-{i}" for i in range(int(rate * warmup_s))]
            _offer(producer, reader, wids, rate, tenant, None,
                   prompt_mix(len(wids), repeat_share, seed=1, salt=f"{cfg.topic_suffix}w") if features else None)
            producer.flush()
            reader.until(lambda g: len(g.arrival_ms) >= len(warm) + len(wids), max(60.0, warmup_s * 6))
            warm += wids

        meter = CpuMeter({"bench": os.getpid(), "echo-worker": worker.proc.pid if worker.proc else None,
                          "local-job": job.proc.pid if job.proc else None})
        meter.begin()
        embedder0 = embedder_stats()
        n = int(rate * duration_s)
        ids = [f"b-{i}" for i in range(n)]
        texts = prompt_mix(n, repeat_share, salt=cfg.topic_suffix) if features else None
        expected = len(warm) + n
        start = time.monotonic()
        bar = tqdm(total=n, desc="prompts", unit="p", disable=not progress)
        _offer(producer, reader, ids, rate, tenant, bar, texts)
        bar.close()
        producer.flush()
        offered_s = time.monotonic() - start
        got = reader.until(lambda g: len(g.arrival_ms) >= expected, max(60.0, duration_s * 3))
        done_s = time.monotonic() - start
        cpu = meter.end(n)
        embedder1 = embedder_stats()
        checkpoints = checkpoint_stats(job.job_id)
        try:
            counters = worker.counters()
        except Exception:  # noqa: BLE001 - the figures stand without it
            counters = {}
        finals = [got.content[r][0] for r in ids if r in got.content]
        overhead = [got.arrival_ms[f["request_id"]] - f["created_at"] if isinstance(f["created_at"], int)
                    else got.arrival_ms[f["request_id"]] - int(f["created_at"].timestamp() * 1000)
                    for f in finals]
        overhead = [o - f["latency"]["inference_ms"] for o, f in zip(overhead, finals)]
        uncommitted = reader.uncommitted.arrival_ms if reader.uncommitted is not None else {}
        written = [(o - (got.arrival_ms[f["request_id"]] - uncommitted[f["request_id"]]), f["request_id"])
                   for o, f in zip(overhead, finals) if f["request_id"] in uncommitted]
        commit_wait = [got.arrival_ms[r] - uncommitted[r] for _, r in written]
        pipeline_ms = [f["latency"]["pipeline_ms"] for f in finals]
        queue_ms = [f["latency"]["queue_ms"] for f in finals]
        failures = failures_by_reason(finals, n)
        return {
            "features": ["echo", *features],
            "prompt_mix": {"repeat_share": repeat_share, "distinct_share": round(len(set(texts)) / n, 3)}
            if texts else None,
            "failures": sum(failures.values()),
            "failures_by_reason": failures,
            "rejected_by_reason": _reasons(finals, "REJECTED"),
            "degraded_by_step": degraded_by_step(finals),
            "embedder": embedder_work(embedder0, embedder1, n),
            "rate_offered": rate,
            "duration_s": duration_s,
            "prompts": n,
            "finals": len(finals),
            "succeeded": sum(1 for f in finals if f["status"] == "SUCCEEDED"),
            "duplicates": sum(1 for r in ids if len(got.content.get(r, [])) > 1),
            "send_rate": round(n / offered_s, 1),
            "throughput_per_s": round(len(finals) / done_s, 1),
            # how long after the last prompt was sent the last final arrived: small and not growing with
            # the duration when the pipeline keeps up; a backlog shows here as seconds
            "drain_s": round(done_s - offered_s, 2),
            "overhead_ms": {"p50": percentile(overhead, 0.5), "p95": percentile(overhead, 0.95),
                            "p99": percentile(overhead, 0.99),
                            "mean": round(statistics.fmean(overhead), 1) if overhead else None},
            # exactly-once only, same run: overhead as a read_uncommitted reader saw it (the final written,
            # not yet committed: what at-least-once readers get), and the wait for the commit itself
            "uncommitted_overhead_ms": {"p50": percentile([w for w, _ in written], 0.5),
                                        "p99": percentile([w for w, _ in written], 0.99)} if written else None,
            "commit_wait_ms": {"p50": percentile(commit_wait, 0.5), "p95": percentile(commit_wait, 0.95),
                               "p99": percentile(commit_wait, 0.99)} if commit_wait else None,
            "job_pipeline_ms_p50": percentile(pipeline_ms, 0.5),
            "job_pipeline_ms_p99": percentile(pipeline_ms, 0.99),
            # prompt created -> its batch started at the worker (the gate, dispatch and the request hop)
            "queue_ms": {"p50": percentile(queue_ms, 0.5), "p99": percentile(queue_ms, 0.99)},
            "model_calls_per_final": (round(counters["model_calls"] / len(got.content), 3)
                                      if "model_calls" in counters and got.content else None),
            "duplicate_requests": counters.get("duplicate_requests"),
            "delivery": cfg.delivery,
            "checkpoint_interval_ms": cfg.checkpoint_interval_ms,
            "checkpoints": checkpoints,
            "startup_s": round(startup_s, 1),
            "warmup_s": warmup_s,
            "cpu": cpu,
            **({"overhead_samples_ms": overhead} if keep_samples else {}),
            "job": cfg.job_name,
            "mode": "local MiniCluster" if local else "cluster",
            "parallelism": parallelism,
        }
    finally:
        worker.stop()
        job.stop()
        reader.close()
        harness.delete_topics(cfg)
