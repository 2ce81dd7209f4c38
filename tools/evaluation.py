"""`rscf evaluate`: RSCF against a monolith and a partially containerised deployment, same load.

One open-loop generator (requests sent at scheduled times, whatever the answers do) drives all
three deployments in turn, on the same machine, with the same prompts, tenants and model code:

- rscf: the pipeline job on the cluster (an isolated copy: own topics) and a worker per pool,
  fed through Kafka, answers read by a read_committed reader;
- monolith: `baselines.servers monolith`, one process, the job's steps and the models in-process;
- partial: `baselines.servers front` calling one `model-service` process per pool over HTTP.

Scenarios: steady (the rate throughout), burst (10x the rate in the middle third), outage (the
model worker, model service or monolith SIGKILLed at a third of the run and started again after
`restart_delay_s`, as a container restart policy would). Every request ends answered, rejected
with a reason, or lost (no answer by the end of the drain); `metrics.summarise` does the figures.
The baselines are started and stopped here, by PID, on free loopback ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

import httpx
import psutil

from rscf.clock import now_ms
from rscf.pools import ECHO
from rscf.settings import SETTINGS
from tools import harness
from tools.evaluation_metrics import Sample

SCENARIOS = ("steady", "burst", "outage")
DEPLOYMENTS = ("rscf", "monolith", "partial")
BURST_FACTOR = 10
PREMIUM_EVERY = 10  # one request in ten comes from the premium tenant, priority HIGH
TENANTS = {"eval-std": "STANDARD", "eval-prem": "PREMIUM"}


def schedule(scenario: str, rate: float, duration_s: float) -> list[tuple[float, str]]:
    """(send offset in seconds, phase) for every request of the run: thirds before, during, after
    (a burst's middle third at BURST_FACTOR x the rate), evenly spaced within each third."""
    third = duration_s / 3
    out: list[tuple[float, str]] = []
    for k, phase in enumerate(("before", "burst" if scenario == "burst" else "during", "after")):
        n = round(rate * (BURST_FACTOR if phase == "burst" else 1) * third)
        out += [(k * third + i * third / n, phase) for i in range(n)]
    return out


def policies() -> list[dict]:
    """The tenants' policies, the control event's `tenant_policy` fields: quotas out of the way."""
    return [{"tenant_id": t, "tier": tier, "rate_per_s": 100_000.0, "burst": 100_000, "features": ["echo"]}
            for t, tier in TENANTS.items()]


def prompt_record(i: int, run_id: str) -> dict:
    premium = i % PREMIUM_EVERY == 0
    tenant = "eval-prem" if premium else "eval-std"
    return harness.prompt(f"{run_id}-{i}", tenant, f"describe product {i} in one line",
                          priority="HIGH" if premium else "NORMAL")


class Deployment:
    """What the generator needs of a deployment: start, send, kill and restart its model, stop."""

    name = ""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def processes(self) -> list[psutil.Process]: return []
    def kill_model(self) -> None: ...
    def restart_model(self) -> None: ...


@dataclass
class Proc:
    """A baseline server process, restartable with the same arguments (a restart policy)."""

    argv: list[str]
    port: int
    name: str
    proc: subprocess.Popen | None = None

    def start(self, wait_s: float = 120.0) -> None:
        log = open(SETTINGS.paths.logs / f"eval-{self.name}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "baselines.servers", *self.argv, "--port", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo,
                                     env={**os.environ, "PYTHONPATH": str(SETTINGS.paths.repo)})
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see eval-{self.name}.log")
            try:
                if httpx.get(f"http://{SETTINGS.host}:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy after {wait_s:.0f} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        harness.terminate(self.proc, grace_s=10)
        self.proc = None


class HttpDeployment(Deployment):
    """A baseline behind `POST /v1/generate`: the monolith, or the front with its model services."""

    def __init__(self, name: str, procs: list[Proc], front: Proc, model: Proc):
        self.name, self.procs, self.front, self.model = name, procs, front, model

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def processes(self) -> list[psutil.Process]:
        return [psutil.Process(p.proc.pid) for p in self.procs if p.proc and p.proc.poll() is None]

    def kill_model(self) -> None:
        self.model.kill()

    def restart_model(self) -> None:
        self.model.start()

    @property
    def url(self) -> str:
        return f"http://{SETTINGS.host}:{self.front.port}/v1/generate"


def monolith() -> HttpDeployment:
    proc = Proc(["monolith", "--pools", ECHO, "--policies", json.dumps(policies())], harness.free_port(), "monolith")
    return HttpDeployment("monolith", [proc], proc, proc)


def partial() -> HttpDeployment:
    model = Proc(["model-service", "--pool", ECHO], harness.free_port(), "model-echo")
    front = Proc(["front", "--service", f"{ECHO}=http://{SETTINGS.host}:{model.port}",
                  "--policies", json.dumps(policies())], harness.free_port(), "front")
    return HttpDeployment("partial", [model, front], front, model)


class RscfDeployment(Deployment):
    """An isolated copy of the pipeline job on the cluster with its echo worker (fixed size: one replica)."""

    name = "rscf"

    def __init__(self) -> None:
        self.stack = ExitStack()
        self.run: harness.IsolatedRun | None = None

    def start(self) -> None:
        self.run = self.stack.enter_context(harness.isolated_run("eval"))
        for policy in policies():
            event = harness.policy_event(policy["tenant_id"], policy["features"], policy["rate_per_s"],
                                         policy["burst"], policy["tier"])
            self.run.producer.control(event)
        self.run.producer.flush()
        self.run.job.start()
        self.run.worker.start()
        warm = prompt_record(0, f"warm{uuid.uuid4().hex[:4]}")
        self.run.producer.prompt(warm)
        self.run.producer.flush()
        self.run.reader.until(lambda g: warm["request_id"] in g.content, 120)

    def stop(self) -> None:
        self.stack.close()

    def processes(self) -> list[psutil.Process]:
        from deploy.local import stack as local_stack

        pids = [*local_stack.stack_pids()]
        if self.run and self.run.worker.proc and self.run.worker.proc.poll() is None:
            pids.append(self.run.worker.proc.pid)
        return [psutil.Process(p) for p in pids if psutil.pid_exists(p)]

    def kill_model(self) -> None:
        assert self.run and self.run.worker.proc
        self.run.worker.proc.send_signal(signal.SIGKILL)
        self.run.worker.proc.wait(10)

    def restart_model(self) -> None:
        assert self.run
        self.run.worker.start()


DEPLOYMENT_FACTORIES: dict[str, Callable[[], Deployment]] = {
    "rscf": RscfDeployment, "monolith": monolith, "partial": partial,
}


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


def drive(dep: Deployment, scenario: str, rate: float, duration_s: float, drain_s: float,
          restart_delay_s: float, progress: Callable[[int], None] = lambda _n: None) -> RunResult:
    """One scenario on a started deployment: send on schedule, collect answers, kill/restart if asked."""
    run_id = f"{dep.name[:3]}{scenario[:2]}{uuid.uuid4().hex[:6]}"
    plan = schedule(scenario, rate, duration_s)
    samples = [Sample(f"{run_id}-{i}", phase, i % PREMIUM_EVERY == 0) for i, (_t, phase) in enumerate(plan)]
    cpu0 = cpu_by_pid(dep.processes())
    snaps: list[dict[int, float]] = []
    started = now_ms()
    result = RunResult(dep.name, scenario, samples, started)
    killer = None
    if scenario == "outage":
        def outage() -> None:
            time.sleep(duration_s / 3)
            snaps.append(cpu_by_pid(dep.processes()))  # the killed process's CPU up to its end
            result.kill_ms = now_ms()
            dep.kill_model()
            time.sleep(restart_delay_s)
            dep.restart_model()
            result.restart_ms = now_ms()
        killer = threading.Thread(target=outage, daemon=True)
        killer.start()
    if isinstance(dep, RscfDeployment):
        _drive_kafka(dep, plan, samples, duration_s + drain_s, progress)
    else:
        asyncio.run(_drive_http(dep, plan, samples, run_id, duration_s + drain_s, progress))
    if killer is not None:
        killer.join()
    result.cpu_s = cpu_used(cpu0, *snaps, cpu_by_pid(dep.processes()))
    return result


async def _drive_http(dep: HttpDeployment, plan, samples: list[Sample], run_id: str, limit_s: float,
                      progress: Callable[[int], None]) -> None:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=limit_s) as client:
        t0 = time.monotonic()

        async def one(i: int, sample: Sample) -> None:
            record = prompt_record(i, run_id)
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
                 progress: Callable[[int], None]) -> None:
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
        record = prompt_record(i, sample.request_id.rsplit("-", 1)[0])
        sample.sent_ms = record["created_at"]
        run.producer.prompt(record)
    run.producer.flush()
    while time.monotonic() - t0 < limit_s and any(s.done_ms is None for s in samples):
        time.sleep(0.2)
    time.sleep(1.0)  # a duplicate final would arrive right behind the first
    stop.set()
    reader.join(5)


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


def evaluate(plan: Plan, progress: Callable[[int], None] = lambda _n: None) -> dict:
    """Every deployment through every scenario (`repeats` times); figures per run, stack left as found."""
    from tools.evaluation_metrics import summarise

    os.environ["RSCF_ECHO_BATCH_MS"] = str(plan.echo_batch_ms)  # the worker and the baselines read these
    os.environ["RSCF_ECHO_ITEM_MS"] = str(plan.echo_item_ms)
    runs: list[dict] = []
    series: list[dict] = []
    for name in plan.deployments:
        dep = DEPLOYMENT_FACTORIES[name]()
        t0 = time.monotonic()
        dep.start()
        startup_s = round(time.monotonic() - t0, 1)
        try:
            for repeat in range(plan.repeats):
                for scenario in plan.scenarios:
                    r = drive(dep, scenario, plan.rate, plan.duration_s, plan.drain_s, plan.restart_delay_s, progress)
                    offered = plan.rate
                    figures = summarise(r.samples, plan.duration_s, r.cpu_s, offered, r.kill_ms)
                    runs.append({"deployment": name, "scenario": scenario, "repeat": repeat, "startup_s": startup_s,
                                 "kill_at_s": None if r.kill_ms is None else round((r.kill_ms - r.started_ms) / 1000, 1),
                                 "restart_at_s": None if r.restart_ms is None else
                                 round((r.restart_ms - r.started_ms) / 1000, 1),
                                 "notes": r.notes, **figures})
                    series.append({"deployment": name, "scenario": scenario, "repeat": repeat,
                                   "points": [(s.sent_ms - r.started_ms, s.latency_ms, s.status, s.premium)
                                              for s in r.samples if s.sent_ms is not None]})
        finally:
            dep.stop()
    return {"plan": plan.__dict__ | {"deployments": list(plan.deployments), "scenarios": list(plan.scenarios)},
            "machine": {"cores": psutil.cpu_count(), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "runs": runs, "series": series}
