"""`rscf evaluate`: RSCF against a monolith and a partially containerised deployment, same load.

One open-loop generator (requests sent at scheduled times, whatever the answers do) drives all
three deployments in turn, on the same machine, with the same prompts, tenants and model code:

- rscf: the pipeline job on the cluster (an isolated copy: own topics) and its pools run by pool
  controllers, fed through Kafka, answers read by a read_committed reader;
- monolith: `baselines.servers monolith`, one process, the job's steps and the models in-process;
- partial: `baselines.servers front` calling one `model-service` process per pool over HTTP
(tools/evaluation_deployments.py), with the same request mix (tools/evaluation_mix.py).

Scenarios: steady (the rate throughout), burst (10x the rate in the middle third), outage (the
echo model worker, model service or monolith SIGKILLed at a third of the run; a baseline is
started again after `restart_delay_s`, as a container restart policy would, RSCF's pool controller
restarts its replica by itself), s3-outage (object storage frozen for `s3_down_s` at a third of
the run: image artifacts cannot be stored), slow-s3 (object storage answers `s3_latency_ms` late,
each way, through the middle third: tools/slow_store.py; the s3 scenarios touch the image and speech
requests of `--mix real`, the echo mix stores nothing). Every request ends answered, rejected
with a reason, or lost (no answer by the end of the drain); `metrics.summarise` does the figures.
The baselines are started and stopped here, by PID, on free loopback ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import httpx
import psutil

from rscf.clock import now_ms
from tools.evaluation_deployments import DEPLOYMENT_FACTORIES, Deployment, HttpDeployment, RscfDeployment
from tools.evaluation_metrics import PRICE_PER_CORE_HOUR, Sample
from tools.evaluation_mix import is_premium, kind_of, prompt_record
from tools.gpu_sampler import GpuSampler
from tools.slow_store import SlowObjectStore, object_store_behind_proxy

SCENARIOS = ("steady", "burst", "outage", "s3-outage", "slow-s3")
S3_SCENARIOS = ("s3-outage", "slow-s3")  # their affected kind: image (an artifact in object storage)
DEPLOYMENTS = ("rscf", "monolith", "partial")
BURST_FACTOR = 10


def schedule(scenario: str, rate: float, duration_s: float) -> list[tuple[float, str]]:
    """(send offset in seconds, phase) for every request of the run: thirds before, during, after
    (a burst's middle third at BURST_FACTOR x the rate), evenly spaced within each third."""
    third = duration_s / 3
    out: list[tuple[float, str]] = []
    for k, phase in enumerate(("before", "burst" if scenario == "burst" else "during", "after")):
        n = round(rate * (BURST_FACTOR if phase == "burst" else 1) * third)
        out += [(k * third + i * third / n, phase) for i in range(n)]
    return out


def cpu_by_pid(procs: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) of each process and its descendants, by PID."""
    out: dict[int, float] = {}
    for p in procs:
        try:
            family = [p, *p.children(recursive=True)]
        except psutil.Error:
            continue
        for q in family:
            try:
                t = q.cpu_times()
                out[q.pid] = t.user + t.system
            except psutil.Error:
                pass
    return out


def cpu_used(start: dict[int, float], *later: dict[int, float]) -> float:
    """CPU seconds since `start`, over every process seen in any later snapshot (the last one wins)."""
    last: dict[int, float] = {}
    for snap in later:
        last.update(snap)
    return sum(v - start.get(pid, 0.0) for pid, v in last.items())


@dataclass
class RunResult:
    deployment: str
    scenario: str
    samples: list[Sample]
    started_ms: int
    kill_ms: int | None = None
    restart_ms: int | None = None
    cpu_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    replicas: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # (ms since start, pool -> live)
    gpu: dict | None = None  # tools/gpu_sampler.py; None without nvidia-smi


def s3_pid() -> int:
    """The stack's object store process (SeaweedFS), the one the s3-outage scenario freezes."""
    from deploy.local import supervision

    prog = supervision.program_states(supervision.layout()).get("s3")
    if prog is None or not prog.pid:
        raise RuntimeError("the stack's object storage is not running (rscf up)")
    return prog.pid


def _fault(dep: Deployment, scenario: str, result: RunResult, at_s: float, restart_delay_s: float,
           s3_down_s: float, snaps: list[dict[int, float]], slow_store: SlowObjectStore | None = None) -> None:
    """outage: SIGKILL the model (RSCF's pool controller restarts it; a baseline is restarted after
    `restart_delay_s`). s3-outage: object storage frozen (SIGSTOP: connections hang, as for a dead
    host) for `s3_down_s`, then SIGCONT; every deployment stores its artifacts there. slow-s3: object
    storage slow (a latency toxic) from `at_s` for another `at_s` (the middle third)."""
    time.sleep(at_s)
    if scenario == "slow-s3":
        if slow_store is None:
            raise RuntimeError("slow-s3 needs the object store behind its proxy (evaluate() starts it)")
        slow_store.slow()
        result.kill_ms = now_ms()
        try:
            time.sleep(at_s)
        finally:
            slow_store.fast()
        result.restart_ms = now_ms()
        result.notes.append(f"object storage {slow_store.latency_ms} ms (+-{slow_store.jitter_ms}) late each way "
                            f"for {at_s:.0f} s")
        return
    if scenario == "outage":
        snaps.append(cpu_by_pid(dep.processes()))  # the killed process's CPU up to its end
        result.kill_ms = now_ms()
        dep.kill_model()
        time.sleep(restart_delay_s)
        dep.restart_model()
        result.restart_ms = now_ms()
        return
    pid = s3_pid()
    result.kill_ms = now_ms()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(s3_down_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    result.restart_ms = now_ms()
    result.notes.append(f"object storage (pid {pid}) frozen {s3_down_s:.0f} s")


def drive(dep: Deployment, scenario: str, rate: float, duration_s: float, drain_s: float,
          restart_delay_s: float, progress: Callable[[int], None] = lambda _n: None, mix: str = "echo",
          s3_down_s: float = 10.0, slow_store: SlowObjectStore | None = None) -> RunResult:
    """One scenario on a started deployment: send on schedule, collect answers, inject its fault."""
    run_id = f"{dep.name[:3]}{scenario[:2]}{uuid.uuid4().hex[:6]}"
    plan = schedule(scenario, rate, duration_s)
    samples = [Sample(f"{run_id}-{i}", phase, is_premium(i), kind=kind_of(i, mix)) for i, (_t, phase) in enumerate(plan)]
    cpu0 = cpu_by_pid(dep.processes())
    snaps: list[dict[int, float]] = []
    started = now_ms()
    result = RunResult(dep.name, scenario, samples, started)
    done = threading.Event()

    def watch_replicas() -> None:
        while not done.is_set():
            result.replicas.append((now_ms() - started, dep.replicas()))
            done.wait(0.5)

    threads = [threading.Thread(target=watch_replicas, daemon=True)]
    if scenario in ("outage", *S3_SCENARIOS):
        threads.append(threading.Thread(target=_fault, daemon=True, args=(
            dep, scenario, result, duration_s / 3, restart_delay_s, s3_down_s, snaps, slow_store)))
    for t in threads:
        t.start()
    gpu = GpuSampler().start()  # the handlers run on CUDA where torch sees a GPU: the GPU variant
    if isinstance(dep, RscfDeployment):
        _drive_kafka(dep, plan, samples, duration_s + drain_s, progress, mix)
    else:
        asyncio.run(_drive_http(dep, plan, samples, run_id, duration_s + drain_s, progress, mix))
    for t in threads[1:]:  # the fault, if any; then the replica watcher
        t.join()
    done.set()
    threads[0].join()
    result.cpu_s = cpu_used(cpu0, *snaps, cpu_by_pid(dep.processes()))
    result.gpu = gpu.stop() if gpu is not None else None
    return result


async def _drive_http(dep: HttpDeployment, plan, samples: list[Sample], run_id: str, limit_s: float,
                      progress: Callable[[int], None], mix: str) -> None:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=limit_s) as client:
        t0 = time.monotonic()

        async def one(i: int, sample: Sample) -> None:
            record = prompt_record(i, run_id, mix)
            sample.sent_ms = record["created_at"] = now_ms()
            try:
                r = await client.post(dep.url, content=json.dumps(record, default=str),
                                      headers={"content-type": "application/json"})
                body = r.json()
                sample.finish(now_ms(), str(body.get("status")), body.get("reason"))
            except (httpx.HTTPError, ValueError) as exc:
                sample.finish(now_ms(), "ERROR", f"{type(exc).__name__}")
            progress(1)

        tasks = []
        for i, ((offset, _phase), sample) in enumerate(zip(plan, samples)):
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, sample)))
        left = max(1.0, limit_s - (time.monotonic() - t0))
        await asyncio.wait(tasks, timeout=left)
        for t in tasks:
            t.cancel()


def _drive_kafka(dep: RscfDeployment, plan, samples: list[Sample], limit_s: float,
                 progress: Callable[[int], None], mix: str) -> None:
    run = dep.run
    assert run is not None
    by_id = {s.request_id: s for s in samples}
    stop = threading.Event()

    def read() -> None:
        seen: set[str] = set()
        while not stop.is_set():
            run.reader.poll(0.1)
            for rid, finals in run.reader.got.content.items():
                if rid in by_id and rid not in seen:
                    seen.add(rid)
                    by_id[rid].finish(run.reader.got.arrival_ms[rid], finals[0]["status"], finals[0].get("reason"))
                    by_id[rid].finals = len(finals)
                    progress(1)
                elif rid in seen:
                    by_id[rid].finals = len(finals)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.monotonic()
    for i, ((offset, _phase), sample) in enumerate(zip(plan, samples)):
        delay = t0 + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        record = prompt_record(i, sample.request_id.rsplit("-", 1)[0], mix)
        sample.sent_ms = record["created_at"]
        run.producer.prompt(record)
    run.producer.flush()
    while time.monotonic() - t0 < limit_s and any(s.done_ms is None for s in samples):
        time.sleep(0.2)
    time.sleep(1.0)  # a duplicate final would arrive right behind the first
    stop.set()
    reader.join(5)


def gpu_cost(figures: dict, gpu: dict | None) -> dict:
    """Cost per 1,000 answers with the GPU's held time added to the CPU's (both prices stated assumptions)."""
    if not gpu or not gpu.get("gpus") or not figures.get("answered"):
        return {}
    cpu_usd = figures["cpu_s"] * PRICE_PER_CORE_HOUR / 3600
    return {"usd_per_1k_answers_with_gpu": round(1000 * (cpu_usd + gpu["usd_gpu_held"]) / figures["answered"], 5)}


@dataclass(frozen=True)
class Plan:
    """What one `rscf evaluate` run does; every figure in its report is read under these parameters."""

    deployments: tuple[str, ...] = DEPLOYMENTS
    scenarios: tuple[str, ...] = SCENARIOS
    rate: float = 20.0
    duration_s: float = 30.0
    drain_s: float = 60.0
    restart_delay_s: float = 5.0
    echo_batch_ms: float = 10.0
    echo_item_ms: float = 0.5
    repeats: int = 1
    mix: str = "echo"  # tools.evaluation_mix.MIXES
    s3_down_s: float = 10.0
    s3_latency_ms: int = 500  # slow-s3: added each way to every object storage request (+-20 % jitter)


def evaluate(plan: Plan, progress: Callable[[int], None] = lambda _n: None) -> dict:
    """Every deployment through every scenario (`repeats` times); figures per run, stack left as found."""
    os.environ["RSCF_ECHO_BATCH_MS"] = str(plan.echo_batch_ms)  # the worker and the baselines read these
    os.environ["RSCF_ECHO_ITEM_MS"] = str(plan.echo_item_ms)
    # before any deployment starts: they all inherit its endpoint
    with object_store_behind_proxy(plan.s3_latency_ms, plan.s3_latency_ms // 5) if "slow-s3" in plan.scenarios \
            else nullcontext() as slow_store:
        runs, series = _run_all(plan, progress, slow_store)
    return {"plan": plan.__dict__ | {"deployments": list(plan.deployments), "scenarios": list(plan.scenarios)},
            "machine": {"cores": psutil.cpu_count(), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "runs": runs, "series": series}


def _run_all(plan: Plan, progress: Callable[[int], None],
             slow_store: SlowObjectStore | None) -> tuple[list[dict], list[dict]]:
    """(runs, series): the figures of every run and the points its charts are drawn from."""
    from tools.evaluation_metrics import summarise

    runs: list[dict] = []
    series: list[dict] = []
    for name in plan.deployments:
        dep = DEPLOYMENT_FACTORIES[name](plan.mix)
        t0 = time.monotonic()
        dep.start()
        startup_s = round(time.monotonic() - t0, 1)
        try:
            for repeat in range(plan.repeats):
                for scenario in plan.scenarios:
                    r = drive(dep, scenario, plan.rate, plan.duration_s, plan.drain_s, plan.restart_delay_s, progress,
                              plan.mix, plan.s3_down_s, slow_store)
                    offered = plan.rate
                    figures = summarise(r.samples, plan.duration_s, r.cpu_s, offered, r.kill_ms,
                                        "image" if scenario in S3_SCENARIOS else "echo")
                    runs.append({"deployment": name, "scenario": scenario, "repeat": repeat, "startup_s": startup_s,
                                 "kill_at_s": None if r.kill_ms is None else round((r.kill_ms - r.started_ms) / 1000, 1),
                                 "restart_at_s": None if r.restart_ms is None else
                                 round((r.restart_ms - r.started_ms) / 1000, 1),
                                 "notes": r.notes, "gpu": r.gpu, **figures, **gpu_cost(figures, r.gpu)})
                    series.append({"deployment": name, "scenario": scenario, "repeat": repeat,
                                   "points": [(s.sent_ms - r.started_ms, s.latency_ms, s.status, s.premium)
                                              for s in r.samples if s.sent_ms is not None],
                                   "replicas": r.replicas})
        finally:
            dep.stop()
    return runs, series
