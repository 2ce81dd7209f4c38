"""Drive an isolated copy of the pipeline (own topic suffix, own job name, own echo worker).

Used by the integration tests and by `rscf bench pipeline`: create the topic
set, start the job (on the cluster or in a local MiniCluster) and an echo
worker on the suffixed topics, send policies and prompts, collect decoded
outputs, and tear down exactly what was started.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from deploy.local import flink_jobs as cluster
from jobs.config import ROLE_SCHEMAS, JobConfig
from rscf import kafka_clients
from rscf.clock import now_ms
from rscf.kafka_clients import client_security
from rscf.settings import SETTINGS


def _log(name: str):
    from rscf.run_logs import open_run_log

    return open_run_log(name)  # one per run: the oldest of its kind beyond a few dozen go


def serde(cfg: JobConfig, topic: str, role: str):
    from schemas.serde import TopicSerde

    return TopicSerde(topic, cfg.registry_url, schema_name=ROLE_SCHEMAS[role])


def create_topics(cfg: JobConfig, partitions: int = 2) -> None:
    """The run's topic set, each with ``partitions`` partitions (its control topic too)."""
    kafka_clients.create_topics(cfg.all_topics(), partitions, cfg.bootstrap, single_partition=())


def delete_topics(cfg: JobConfig) -> None:
    kafka_clients.delete_topics(cfg.all_topics(), cfg.bootstrap)


def prompt(request_id: str, tenant: str, text: str, modality: str = "TEXT", **extra: Any) -> dict:
    rec = {
        "request_id": request_id, "tenant_id": tenant, "modality": modality, "prompt": text,
        "params": {"max_tokens": None, "temperature": None, "top_p": None, "width": None, "height": None,
                   "steps": None, "seed": None, "voice": None},
        "priority": "NORMAL", "template_id": None, "template_vars": {}, "metadata": {},
        "created_at": now_ms(), "trace": None,
    }
    rec.update(extra)
    return rec


def policy_event(tenant: str, features: Iterable[str], rate_per_s: float = 10_000.0, burst: int = 10_000,
                 tier: str = "STANDARD") -> dict:
    return {
        "event_id": str(uuid.uuid4()), "issued_at": datetime.now(timezone.utc), "rollout": None, "breaker": None,
        "tenant_policy": {"tenant_id": tenant, "tier": tier, "rate_per_s": float(rate_per_s), "burst": int(burst),
                          "features": list(features)},
    }


def breaker_event(pool: str, action: str = "FORCE_OPEN") -> dict:
    return {"event_id": str(uuid.uuid4()), "issued_at": datetime.now(timezone.utc), "rollout": None,
            "tenant_policy": None, "breaker": {"pool": pool, "action": action}}


class Producer:
    def __init__(self, cfg: JobConfig, linger_ms: float = 1):  # tests: 1 ms; the benchmark: the hot-path linger
        from confluent_kafka import Producer as KafkaProducer

        self.cfg = cfg
        self.p = KafkaProducer(kafka_clients.producer_config(cfg.bootstrap, linger_ms))
        self.serdes: dict[str, Any] = {}

    def send(self, topic: str, role: str, record: dict | None, key: str | None = None, raw: bytes | None = None):
        if raw is None:
            s = self.serdes.get(topic) or self.serdes.setdefault(topic, serde(self.cfg, topic, role))
            raw = s.encode(record)
        self.p.produce(topic, raw, key=key.encode() if key else None)
        self.p.poll(0)

    def prompt(self, rec: dict) -> None:
        self.send(self.cfg.prompts, "prompt", rec, rec["tenant_id"])  # the job keys prompts by tenant

    def control(self, event: dict) -> None:
        self.send(self.cfg.control, "control", event)

    def flush(self) -> None:
        self.p.flush(30)


@dataclass
class Collected:
    content: dict[str, list[dict]] = field(default_factory=dict)  # request_id -> finals (more than one is a bug)
    audit: dict[str, list[dict]] = field(default_factory=dict)
    dlq: list[dict] = field(default_factory=list)
    arrival_ms: dict[str, int] = field(default_factory=dict)  # first final's arrival time


class Reader:
    """Reads content, audit and dead letters of the topic set (read_committed, from the start).

    `roles` narrows what it reads: the benchmark reads finals only (decoding every
    audit record cost it more CPU than the echo worker spends per prompt).
    `isolation="read_uncommitted"` also sees what aborted transactions wrote: what an
    at-least-once sink would have shown readers (the TaskManager fault test compares both).
    """

    def __init__(self, cfg: JobConfig, roles: tuple[str, ...] = ("content", "audit", "dlq"),
                 isolation: str = "read_committed"):
        from confluent_kafka import Consumer

        self.cfg = cfg
        self.c = Consumer({"bootstrap.servers": cfg.bootstrap, **client_security(), "group.id": f"reader-{uuid.uuid4().hex}",
                           "auto.offset.reset": "earliest", "isolation.level": isolation,
                           "enable.auto.commit": False})
        topics = {"content": cfg.content, "audit": cfg.audit, "dlq": cfg.dlq}
        self.roles = {topics[r]: r for r in roles}
        self.c.subscribe(list(self.roles))
        self.serdes = {t: serde(cfg, t, r) for t, r in self.roles.items()}
        self.got = Collected()

    def poll(self, timeout: float = 0.2) -> int:
        n = 0
        msgs = self.c.consume(500, timeout)
        while msgs:
            for msg in msgs:
                if msg.error():
                    continue
                role = self.roles[msg.topic()]
                rec = self.serdes[msg.topic()].decode(msg.value())
                if role == "dlq":
                    self.got.dlq.append(rec)
                else:
                    getattr(self.got, role).setdefault(rec["request_id"], []).append(rec)
                    if role == "content":
                        self.got.arrival_ms.setdefault(rec["request_id"], now_ms())
                n += 1
            msgs = self.c.consume(500, 0) if len(msgs) == 500 else None
        return n

    def until(self, done, timeout_s: float) -> Collected:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done(self.got):
            self.poll(0.2)
        return self.got

    def settle(self, quiet_s: float = 3.0) -> Collected:
        """Keep reading until nothing new arrives for quiet_s (to catch duplicates)."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            if self.poll(0.2):
                last = time.monotonic()
        return self.got

    def close(self) -> None:
        self.c.close()


def terminate(proc: subprocess.Popen | None, grace_s: float = 30.0) -> None:
    """SIGTERM a child we started, SIGKILL it if it has not exited after grace_s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((SETTINGS.host, 0))
        return s.getsockname()[1]


def free_port_block(n: int, start: int = 20_000, span: int = 10_000) -> int:
    """First of ``n`` consecutive free loopback ports at or above ``start`` (for ports that are computed,
    e.g. replica i serving base + i, or a private broker's listener and controller)."""
    for base in range(start, start + span, n):
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((SETTINGS.host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free loopback ports in {start}..{start + span}")


class EchoWorker:
    """An echo worker on the run's topics, with its /metrics on a free port (model calls are read there)."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self.metrics_port = free_port()

    def start(self) -> None:
        log = _log(f"echo-{self.cfg.group_id}.log")
        self.proc = subprocess.Popen(
            # this tree's worker (the venv's `rscf` script imports wherever the venv was installed from)
            [sys.executable, "-m", "cli.main", "worker", "run", "--pool", "echo",
             "--requests-topic", self.cfg.requests("echo"), "--results-topic", self.cfg.results,
             "--group", f"echo-{self.cfg.group_id}", "--metrics-port", str(self.metrics_port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo)

    def counters(self) -> dict[str, float]:
        """The worker's counters now (`model_calls`, `duplicate_requests`, ...), summed over labels."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://{SETTINGS.host}:{self.metrics_port}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.type == "counter" and family.name.startswith("rscf_worker_"):
                out[family.name.removeprefix("rscf_worker_")] = sum(
                    s.value for s in family.samples if s.name.endswith("_total"))
        return out

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None


class PipelineRun:
    """The job on its own topics: on the cluster (default) or in a local MiniCluster subprocess."""

    def __init__(self, cfg: JobConfig, local: bool = False):
        self.cfg = cfg
        self.local = local
        self.proc: subprocess.Popen | None = None
        self.job_id: str | None = None

    def start(self, from_savepoint: str | None = None) -> None:
        if self.local:
            args = [sys.executable, str(SETTINGS.paths.repo / "jobs" / "content_pipeline.py"),
                    *JobConfig(**{**self.cfg.__dict__, "local": True, "connector_jar": str(SETTINGS.paths.connector_jar)}).to_args()]
            log = _log(f"{self.cfg.group_id}.log")
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        else:
            self.job_id = cluster.submit(self.cfg, from_savepoint).job_id

    def stop_with_savepoint(self) -> str:
        location = cluster.stop(self.job_id, with_savepoint=True)
        self.job_id = None
        return location

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None
        if self.job_id is not None:
            try:
                cluster.stop(self.job_id, with_savepoint=False)
            except cluster.ClusterError:
                pass
            self.job_id = None


@dataclass
class IsolatedRun:
    cfg: JobConfig
    job: PipelineRun
    worker: EchoWorker
    producer: Producer
    reader: Reader


@contextmanager
def isolated_run(prefix: str, **kw: Any) -> Iterator[IsolatedRun]:
    """A topic set, job, echo worker, producer and reader of their own; all torn down afterwards."""
    cfg = isolated_config(prefix, **kw)
    create_topics(cfg)
    run = IsolatedRun(cfg, PipelineRun(cfg), EchoWorker(cfg), Producer(cfg), Reader(cfg))
    try:
        yield run
    finally:
        run.worker.stop()
        run.job.stop()
        run.reader.close()
        delete_topics(cfg)


def isolated_config(prefix: str, **kw: Any) -> JobConfig:
    suffix = f"{prefix}{uuid.uuid4().hex[:6]}"
    return JobConfig(job_name=f"rscf-{suffix}", topic_suffix=suffix, **kw)
