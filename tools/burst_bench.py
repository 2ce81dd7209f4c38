"""`rscf bench burst`: steady load -> a 10x LOW/NORMAL burst -> steady, with a HIGH trickle throughout,
through real worker processes started and stopped by the real pool controller, against the real broker.

Two runs on private lane topics: the controller scaling (min 1 .. max = partitions) and the controller
held at one replica (`--min 1 --max 1`: the same processes, no elasticity), side by side. The pool is
echo with a simulated model time per request (`--item-ms`), so the figures show the scaling and the
lanes rather than the model. Latency = a request's send time to its result read back by this process.
Per priority and phase: p50/p95/p99; replicas and lag every 0.5 s; time from the burst's start to the
first extra replica ready (model loaded, partitions assigned, i.e. consuming); drain time (burst end to
the last burst request answered); lost and duplicated results. `--pool image` runs the same with real
shapes-DDPM workers (images to the stack's object storage), the load scaled per tools/burst_pools.py.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rscf.kafka_clients import client_security, credentials_env
from rscf.settings import SETTINGS

PRIORITIES = ("HIGH", "NORMAL", "LOW")


@dataclass
class Plan:
    steady_rate: float = 20.0  # NORMAL+LOW requests/s, half each
    burst_factor: float = 10.0
    high_rate: float = 2.0
    before_s: float = 15.0
    burst_s: float = 10.0
    after_s: float = 25.0
    item_ms: float = 20.0
    max_replicas: int = 4
    lag_threshold: int = 50
    drain_timeout_s: float = 90.0
    min_replicas: int = 1
    kill_at_s: float | None = None  # SIGKILL the highest replica then (recovery after a kill)
    session_timeout_ms: int | None = None  # the workers' consumer session timeout (None: the default)
    only: str | None = None  # run one arm only (its name)
    periods: int = 1  # >1: the pattern repeats (predictive runs: the controller forecasts the next burst)
    predictive: bool = False
    pool: str = "echo"  # echo (simulated model time) or image (the real shapes DDPM)
    max_batch: int = 1
    image_steps: int = 50
    standby: int = 0  # the controller arm keeps this many warm replicas parked (model loaded, out of the group)

    @property
    def period_s(self) -> float:
        return self.before_s + self.burst_s + self.after_s

    def phase(self, t: float) -> str:
        pos = t % self.period_s if t < self.duration_s else self.period_s
        return "steady" if pos < self.before_s else "burst" if pos < self.before_s + self.burst_s else "after"

    def burst_starts(self) -> list[float]:
        return [k * self.period_s + self.before_s for k in range(self.periods)]

    def rate(self, t: float) -> float:
        return self.steady_rate * (self.burst_factor if self.phase(t) == "burst" else 1.0)

    @property
    def duration_s(self) -> float:
        return self.period_s * self.periods


@dataclass
class RunResult:
    name: str
    sent: dict[str, tuple[float, str, str]] = field(default_factory=dict)  # id -> (t sent, priority, phase)
    answered: dict[str, float] = field(default_factory=dict)  # id -> t answered (first)
    duplicates: int = 0
    samples: list[dict] = field(default_factory=list)  # t, replicas, lag
    first_extra_ready_s: float | None = None
    drain_s: float | None = None
    controller_log: str = ""
    killed: dict | None = None  # {"at_s", "replica", "pid"}
    errors: dict[str, int] = field(default_factory=dict)  # ERROR results by reason (first answers only)
    artifacts: int = 0  # OK results with an object-storage artifact (image)

    def replicas_at(self, t: float) -> int | None:
        """Replicas consuming at time t (the last sample before it)."""
        before = [s["replicas"] for s in self.samples if s["t"] <= t]
        return before[-1] if before else None

    def kill_summary(self) -> dict | None:
        """After a SIGKILL: the worst latency of requests sent in the 2 s after it (the stall of the
        dead replica's partitions until another replica or its restart takes them)."""
        if self.killed is None:
            return None
        t0 = min(t for t, _, _ in self.sent.values())
        at = t0 + self.killed["at_s"]
        lat = [self.answered[r] - t for r, (t, _, _) in self.sent.items() if at <= t < at + 2 and r in self.answered]
        return {**self.killed, "worst_latency_after_kill_s": round(max(lat), 2) if lat else None,
                "answered_of_sent_after_kill": f"{len(lat)}/{sum(1 for t, _, _ in self.sent.values() if at <= t < at + 2)}"}

    def summary(self, plan: Plan) -> dict:
        lat: dict[str, dict[str, list[float]]] = {}
        for rid, (t, prio, phase) in self.sent.items():
            if rid in self.answered:
                lat.setdefault(phase, {}).setdefault(prio, []).append((self.answered[rid] - t) * 1000)
        table = {phase: {prio: _pcts(v) for prio, v in sorted(by.items())} for phase, by in lat.items()}
        high = table.get("burst", {}).get("HIGH", {}).get("p99_ms"), table.get("steady", {}).get("HIGH", {}).get("p99_ms")
        return {
            "run": self.name, "pool": plan.pool, "sent": len(self.sent), "answered": len(self.answered),
            "lost": len(set(self.sent) - set(self.answered)), "duplicated": self.duplicates,
            "errors": dict(self.errors), "artifacts": self.artifacts,
            "latency_ms": table,
            "high_p99_burst_over_steady": round(high[0] / high[1], 2) if None not in high and high[1] else None,
            "max_replicas_seen": max((s["replicas"] for s in self.samples), default=0),
            "max_lag_seen": max((s["lag"] for s in self.samples), default=0),
            "first_extra_replica_ready_s": self.first_extra_ready_s,
            "replicas_at_burst_starts": [self.replicas_at(t) for t in plan.burst_starts()],
            "kill": self.kill_summary(),
            "drain_s": self.drain_s,
        }


def _pcts(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"n": len(values), "p50_ms": round(q[49], 1), "p95_ms": round(q[94], 1), "p99_ms": round(q[98], 1)}


class PrivateTopics:
    def __init__(self) -> None:
        from rscf.kafka_clients import create_topics

        run = uuid.uuid4().hex[:8]
        self.requests = f"{SETTINGS.topics.request_prefix}burst-{run}"
        self.results = f"rscf.bench.burst-results.{run}"
        self.group = f"rscf-bench-burst-{run}"
        create_topics([*SETTINGS.topics.lanes(self.requests), self.results])

    def cleanup(self) -> None:
        from rscf.kafka_clients import delete_topics

        delete_topics([*SETTINGS.topics.lanes(self.requests), self.results])


def run_once(name: str, plan: Plan, elastic: bool, progress=lambda m: None) -> RunResult:
    from confluent_kafka import Consumer, Producer

    from inference_workers.controller_io import LagReader, probe_ready
    from schemas.serde import serde_for
    from tools.burst_pools import build_request, replica_rps, worker_args
    from tools.harness import free_port_block

    topics = PrivateTopics()
    data = Path(tempfile.mkdtemp(prefix=f"rscf-burst-{name}-"))
    # replica i serves health on base + i; below 32768, where no connection's local end takes a port
    port_base = free_port_block(2 * max(plan.max_replicas, 1) + plan.standby + 2, start=24_000, span=4_000)
    max_r = plan.max_replicas if elastic else 1
    cmd = [sys.executable, "-m", "inference_workers.pool_controller", "--pool", plan.pool, "--requests-topic",
           topics.requests, "--group", topics.group, "--metrics-port-base", str(port_base), "--port", "-1",
           "--interval", "1", "--min", str(min(plan.min_replicas, max_r)), "--max", str(max_r),
           *(["--season", str(plan.period_s), "--step", "2", "--replica-rps", str(replica_rps(plan.item_ms))]
             if plan.predictive else ["--no-predictive"]),
           "--lag-threshold", str(plan.lag_threshold), "--cooldown", "20", "--stabilization", "10",
           "--scale-down-period", "5", "--cpu-budget", "64",
           *(["--standby", str(plan.standby)] if elastic and plan.standby else []),
           "--worker-arg=--results-topic", f"--worker-arg={topics.results}",
           *(f"--worker-arg={a}" for a in worker_args(plan.pool, plan.item_ms, plan.max_batch))]
    env = {**os.environ, "RSCF_DATA_DIR": str(data), "PYTHONPATH": str(SETTINGS.paths.repo), **credentials_env()}
    key_file = SETTINGS.paths.secrets / "s3_secret_key"  # the private data dir has none: use the stack's S3 key
    if not (env.get("RSCF_S3_SECRET_KEY") or env.get("RSCF_S3_SECRET_KEY_FILE")) and key_file.exists():
        env["RSCF_S3_SECRET_KEY_FILE"] = str(key_file)
    if plan.session_timeout_ms:
        env["RSCF_WORKER_SESSION_TIMEOUT_MS"] = str(plan.session_timeout_ms)
    log_path = data / "controller.log"
    ctl = subprocess.Popen(cmd, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo)
    res = RunResult(name)
    stop = threading.Event()
    serde = serde_for(SETTINGS.topics.requests(plan.pool))
    rserde = serde_for(SETTINGS.topics.results)
    try:
        deadline = time.monotonic() + 60
        while not probe_ready(port_base) and time.monotonic() < deadline:
            time.sleep(0.3)
        if elastic and plan.standby:
            _wait_parked(data, plan.pool, plan.standby, progress)
        consumer = Consumer({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security(), "group.id": f"b-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([topics.results])

        def read() -> None:
            while not stop.is_set():
                for m in consumer.consume(500, 0.01):  # consume() waits its whole timeout unless 500 arrive
                    if m.error() is None:
                        rec = rserde.decode(m.value())
                        rid = rec["request_id"]
                        if rid in res.answered:
                            res.duplicates += 1
                            continue
                        res.answered[rid] = time.monotonic()
                        if rec["status"] != "OK":
                            why = str(rec.get("error") or "?")[:80]
                            res.errors[why] = res.errors.get(why, 0) + 1
                        elif rec.get("artifact_uris"):
                            res.artifacts += 1

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        t0 = time.monotonic()
        lag = LagReader(SETTINGS.kafka_bootstrap)

        def sample() -> None:
            while not stop.is_set():
                t = time.monotonic() - t0
                ready = [i for i in range(max_r) if probe_ready(port_base + i, 0.2)]
                reading = lag.read(topics.requests, topics.group)
                res.samples.append({"t": round(t, 2), "replicas": len(ready), "lag": reading.lag})
                if res.first_extra_ready_s is None and t >= plan.before_s and any(i > 0 for i in ready):
                    res.first_extra_ready_s = round(t - plan.before_s, 2)
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        producer = Producer({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security(), "linger.ms": 5, "enable.idempotence": True})
        i, owed, owed_high, last = 0, 0.0, 0.0, t0
        while (now := time.monotonic()) - t0 < plan.duration_s:
            t = now - t0
            if plan.kill_at_s is not None and res.killed is None and t >= plan.kill_at_s:
                res.killed = _kill_highest(data, t, plan.pool)
            owed += plan.rate(t) * (now - last)
            owed_high += plan.high_rate * (now - last)
            last = now
            batch = []
            while owed >= 1:
                batch.append("LOW" if i % 2 else "NORMAL")
                owed -= 1
                i += 1
            while owed_high >= 1:
                batch.append("HIGH")
                owed_high -= 1
                i += 1
            for prio in batch:
                rid = f"{name}-{i}-{prio}-{len(res.sent)}"
                r = build_request(plan.pool, i, name, rid, prio, int(time.time() * 1000), plan.image_steps)
                producer.produce(SETTINGS.topics.lane(topics.requests, prio), key=rid.encode(), value=serde.encode(r))
                res.sent[rid] = (time.monotonic(), prio, plan.phase(t))
            producer.poll(0)
            time.sleep(0.01)
        producer.flush(30)
        progress(f"{name}: {len(res.sent)} sent; draining")
        burst_ids = [rid for rid, (_, _, ph) in res.sent.items() if ph == "burst"]
        end = time.monotonic() + plan.drain_timeout_s
        while time.monotonic() < end and len(res.answered) < len(res.sent):
            time.sleep(0.5)
        done = [res.answered[r] for r in burst_ids if r in res.answered]
        if done and len(done) == len(burst_ids):
            res.drain_s = round(max(done) - (t0 + plan.burst_starts()[-1] + plan.burst_s), 2)  # after the last burst
        time.sleep(1.0)
    finally:
        stop.set()
        ctl.send_signal(signal.SIGTERM)
        try:
            ctl.wait(60)
        except subprocess.TimeoutExpired:
            ctl.kill()
        res.controller_log = log_path.read_text(errors="replace")[-20000:] if log_path.exists() else ""
        topics.cleanup()
        _forget_history(topics.group)
    return res


def _wait_parked(data: Path, pool: str, n: int, progress, timeout_s: float = 180.0) -> None:
    """Load starts once `n` standbys are parked with their model loaded, as they would be long before a
    real burst: a standby loading during the steady phase slowed the serving image replica ~3x."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = (data / "logs").glob(f"worker-{pool}-*.log")
        if sum(f.read_text(errors="replace").count("parked (model loaded") for f in logs) >= n:
            progress(f"{n} standby replica(s) parked")
            return
        time.sleep(0.5)
    progress(f"standby not parked after {timeout_s:.0f} s: starting the load anyway")


def _kill_highest(data: Path, t: float, pool: str = "echo") -> dict | None:
    pids = sorted(data.glob(f"pids/worker-{pool}-*.pid"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    if not pids:
        return None
    pid = int(pids[-1].read_text().strip())
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return {"at_s": round(t, 2), "replica": int(pids[-1].stem.rsplit("-", 1)[1]), "pid": pid}


def _forget_history(group: str) -> None:
    """The run's rate history in Redis (keyed by its private group)."""
    try:
        from inference_workers.controller_io import RateHistory
        from rscf import redis_security

        hist = RateHistory(redis_security.url(redis_security.ADMIN))  # DEL: more than the controller may
        hist._client().delete(hist.key(group))
    except Exception:  # noqa: BLE001 - Redis down: nothing was kept
        pass


def run_burst(plan: Plan, progress=lambda m: None, html: Path | None = None) -> dict:
    """Controller vs fixed size; with `plan.predictive`, predictive vs reactive controller instead."""
    from dataclasses import replace

    runs = []
    if plan.predictive:
        arms = (("predictive", True, plan), ("reactive", True, replace(plan, predictive=False)))
    else:
        arms = (("controller", True, plan), ("fixed-1", False, plan))
    arms = tuple(a for a in arms if plan.only in (None, a[0]))
    for name, elastic, p in arms:
        progress(f"run {name}: {p.duration_s:.0f} s of load")
        runs.append(run_once(name, p, elastic, progress))
    out = {"plan": plan.__dict__, "runs": [r.summary(plan) for r in runs],
           "series": {r.name: r.samples for r in runs}}
    if html is not None:
        from tools.burst_plot import write_html

        write_html(html, plan, runs)
        out["plot"] = str(html)
    return out


def cold_start(pool: str, timeout_s: float = 300.0) -> dict:
    """One replica of `pool` started by the pool controller on a private topic: seconds from its start
    to ready (model loaded, partitions assigned), as the controller measures and exports it."""
    import re

    from rscf.kafka_clients import create_topics, delete_topics

    run = uuid.uuid4().hex[:8]
    topic, group = f"{SETTINGS.topics.request_prefix}cold-{pool}-{run}", f"rscf-bench-cold-{pool}-{run}"
    lanes = list(SETTINGS.topics.lanes(topic))
    create_topics(lanes, 1)
    data = Path(tempfile.mkdtemp(prefix=f"rscf-cold-{pool}-"))
    env = {**os.environ, "RSCF_DATA_DIR": str(data), "PYTHONPATH": str(SETTINGS.paths.repo), **credentials_env()}
    log = data / "controller.log"
    cmd = [sys.executable, "-m", "inference_workers.pool_controller", "--pool", pool, "--requests-topic", topic,
           "--group", group, "--metrics-port-base", "47200", "--port", "-1", "--interval", "0.5", "--no-predictive",
           "--min", "1", "--max", "1", "--cpu-budget", "64"]
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo)
    seconds = None
    try:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and seconds is None and proc.poll() is None:
            m = re.search(r"ready \(consuming\) ([0-9.]+) s after its start", log.read_text(errors="replace"))
            seconds = float(m.group(1)) if m else None
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        delete_topics(lanes)
    crashed = "exited on its own" in log.read_text(errors="replace")
    return {"pool": pool, "cold_start_s": seconds, "replica_crashed": crashed, "log": str(log)}
