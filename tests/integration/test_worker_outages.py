"""Object storage or Kafka briefly unavailable: the worker waits it out with backoff, loses nothing,
and reports the outage in its metrics.

The shared stack is never touched: the module brings up a private Kafka + S3 + schema registry
with the project's own `rscf up --only ...` on shifted ports and a private data dir (rscf.settings
reads RSCF_* variables), stops one of them by its PID file mid-test, and starts it again. The
worker runs as a subprocess with the same variables, so its S3 endpoint, bootstrap and registry
are the private ones.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tools.harness import terminate
from cli.demo import fetch_artifact

from rscf import registry_security
from rscf.kafka_clients import client_security
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration

SERVICES = ("kafka", "s3", "registry")
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------- the private stack
def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _port_block() -> dict[str, int]:
    """Ports for one private Kafka + SeaweedFS + Apicurio. SeaweedFS also binds each port + 10000
    (gRPC) and the master port + 1000 (metrics, see deploy/local/services.py), so those must be free too.
    All below 32768: above it (Linux's ephemeral range) a client connection's local end can take a port
    between this check and the server's start."""
    for base in range(21_000, 22_400, 20):
        ports = {
            "KAFKA_PORT": base, "KAFKA_CONTROLLER_PORT": base + 1, "S3_PORT": base + 2,
            "WEED_MASTER_PORT": base + 3, "WEED_VOLUME_PORT": base + 4, "WEED_FILER_PORT": base + 5,
            "REGISTRY_PORT": base + 6, "REGISTRY_MANAGEMENT_PORT": base + 7, "PROMETHEUS_PORT": base + 8,
            "WORKER_METRICS_PORT": base + 9, "KAFKA_TLS_PORT": base + 10, "REGISTRY_INTERNAL_PORT": base + 11,
        }
        extra = [base + 2 + 10_000, base + 3 + 10_000, base + 4 + 10_000, base + 5 + 10_000, base + 3 + 1000]
        if all(_free(p) for p in list(ports.values()) + extra):
            return ports
    raise RuntimeError("no free block of ports for the private stack")


class PrivateStack:
    """A second Kafka + S3 + registry, driven through the project's CLI in subprocesses."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.ports = _port_block()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(SETTINGS.paths.repo),
            "RSCF_DATA_DIR": str(data),
            **{f"RSCF_{k}": str(v) for k, v in self.ports.items()},
            # its own data dir would generate an S3 secret of its own; this process signs with the main one
            "RSCF_S3_SECRET_KEY": SETTINGS.s3.secret_key,
            **registry_security.env(),  # its registry checks tokens signed with the main stack's key, as ours are
        }
        for k in ("RSCF_KAFKA_BOOTSTRAP", "RSCF_REGISTRY_URL", "RSCF_S3_ENDPOINT"):
            self.env.pop(k, None)  # would override the shifted ports
        self.bootstrap = f"127.0.0.1:{self.ports['KAFKA_PORT']}"
        self.registry_url = f"http://127.0.0.1:{self.ports['REGISTRY_PORT']}/apis/ccompat/v7"
        self.s3_endpoint = f"127.0.0.1:{self.ports['S3_PORT']}"

    def rscf(self, *args: str, timeout: float = 240) -> str:
        out = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=SETTINGS.paths.repo, env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"rscf {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}"
                                 f"\n{out.stderr[-3000:]}")
        return out.stdout

    def up(self, *services: str) -> float:
        t0 = time.monotonic()
        self.rscf("up", "--only", *services)
        return time.monotonic() - t0

    def pid_file(self, service: str) -> Path:
        return self.data / "pids" / f"{service}.pid"

    def stop(self, service: str) -> float:
        """Stop one private service by its PID file (what `rscf down` does for all of them)."""
        from deploy.local.processes import stop_recorded

        t0 = time.monotonic()
        assert stop_recorded(self.pid_file(service)), f"private {service} was not running"
        return time.monotonic() - t0

    def down(self) -> None:
        from deploy.local.processes import stop_recorded

        try:
            self.rscf("down", timeout=120)
        finally:  # whatever `down` left (it failed, or timed out): stop by PID file
            for pid_file in (self.data / "pids").glob("*.pid"):
                stop_recorded(pid_file)

    def log(self, service: str, lines: int = 25) -> str:
        from deploy.local.processes import log_tail

        return log_tail(self.data / "logs" / f"{service}.log", lines)

    def s3(self):
        from minio import Minio

        return Minio(self.s3_endpoint, access_key=SETTINGS.s3.access_key, secret_key=SETTINGS.s3.secret_key,
                     secure=False)


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    stack = PrivateStack(tmp_path_factory.mktemp("private-stack"))
    try:
        stack.up(*SERVICES)
        yield stack
    finally:
        stack.down()


# ---------------------------------------------------------------------------- topics, worker, records
class Run:
    """Unique topics and group on the private broker, the worker subprocess and a results reader."""

    def __init__(self, private: PrivateStack, name: str) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        tag = uuid.uuid4().hex[:8]
        self.private = private
        self.requests = f"{SETTINGS.topics.request_prefix}outage-{name}-{tag}"
        self.results = f"rscf.outage.results.{tag}"
        self.dlq = f"rscf.outage.dlq.{tag}"
        self.group = f"rscf-outage-{name}-{tag}"
        admin = AdminClient({"bootstrap.servers": private.bootstrap, **client_security(data=private.data)})
        futures = admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)
                                       for t in (self.requests, self.results, self.dlq)])
        for fut in futures.values():
            fut.result(30)
        self.proc: subprocess.Popen | None = None
        self.worker_log = private.data / "logs" / f"worker-{name}-{tag}.log"
        self.port = private.ports["WORKER_METRICS_PORT"]
        self.seen: list[dict] = []
        from confluent_kafka import Consumer

        from schemas.serde import serde_for

        self.request_serde = serde_for(SETTINGS.topics.requests("image"), private.registry_url)
        self.result_serde = serde_for(SETTINGS.topics.results, private.registry_url)
        # log_level 2: the test's own client would print a line per refused reconnect during the outage
        self.reader = Consumer({"bootstrap.servers": private.bootstrap, **client_security(data=private.data), "group.id": f"reader-{tag}",
                                "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 2})
        self.reader.subscribe([self.results])

    def start_worker(self, delay_s: float = 0.0, max_batch: int = 4) -> None:
        cmd = [sys.executable, str(HERE / "outage_worker.py"), "--requests-topic", self.requests,
               "--results-topic", self.results, "--dlq-topic", self.dlq, "--group", self.group,
               "--metrics-port", str(self.port), "--delay-s", str(delay_s), "--max-batch", str(max_batch)]
        with open(self.worker_log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, cwd=SETTINGS.paths.repo, env=self.private.env, stdout=logf,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker never became ready:\n{self.worker_tail()}")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.worker_tail()}")

    def worker_tail(self, lines: int = 40) -> str:
        from deploy.local.processes import log_tail

        return log_tail(self.worker_log, lines)

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text

    def wait_metrics(self, predicate, timeout: float) -> str:
        """The worker's /metrics once ``predicate`` holds (or the last scrape when time runs out)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.metrics()
            if predicate(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.2)

    def produce(self, requests: list[dict]) -> None:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": self.private.bootstrap, **client_security(data=self.private.data), "enable.idempotence": True, "log_level": 2})
        for r in requests:
            p.produce(self.requests, key=r["request_id"].encode(), value=self.request_serde.encode(r))
        assert p.flush(60) == 0, "requests not acknowledged by the private broker"

    def read_until(self, predicate, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while not predicate(self.seen) and time.monotonic() < deadline:
            self.check_alive()
            for m in self.reader.consume(100, 0.3):
                if m.error() is None:
                    rec = self.result_serde.decode(m.value())
                    rec["_seen_at"] = time.monotonic()
                    self.seen.append(rec)
        return self.seen

    def close(self) -> None:
        try:
            terminate(self.proc)
        finally:
            self.reader.close()


def image_requests(prefix: str, n: int) -> list[dict]:
    from tools.workers_bench import make_request

    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        r = make_request("image", i, prefix, now)
        r.update(request_id=f"{prefix}-{i}", prompt=f"{prefix} picture {i}", attempt=1, deadline=now + 600_000)
        out.append(r)
    return out


def outages(text: str, service: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("rscf_worker_outages_total{") and f'service="{service}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_artifact(private: PrivateStack, result: dict) -> None:
    """The result's artifact is a readable PNG in the private S3, drawn for this very request."""
    from PIL import Image

    (uri,) = result["artifact_uris"]
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    assert bucket == SETTINGS.buckets.artifacts
    img = Image.open(io.BytesIO(fetch_artifact(uri, private.s3())))
    img.load()
    assert img.format == "PNG" and img.size == (8, 8)
    assert img.info.get("request_id") == result["request_id"]


def ids_in(records: list[dict], status: str = "OK") -> set[str]:
    return {r["request_id"] for r in records if r["status"] == status}


# ---------------------------------------------------------------------------- tests
def test_s3_outage_is_waited_out_and_reported(private: PrivateStack) -> None:
    run = Run(private, "s3")
    figures: dict[str, float] = {}
    try:
        run.start_worker(max_batch=4)
        figures["s3_stop_s"] = private.stop("s3")
        down_at = time.monotonic()
        reqs = image_requests(f"s3-{uuid.uuid4().hex[:6]}", 8)
        want = {r["request_id"] for r in reqs}
        run.produce(reqs)
        # S3 is down: nothing can be answered OK, and the worker says so while it waits.
        early = run.read_until(lambda recs: False, timeout=5)
        assert not early, f"answered while S3 was down: {[(r['request_id'], r['status'], r['error']) for r in early]}"
        during = run.wait_metrics(lambda text: outages(text, "s3") >= 1, timeout=10)
        assert outages(during, "s3") >= 1, f"no S3 outage in the worker's metrics:\n{during}"
        figures["s3_restart_s"] = private.up("s3")
        back_at = time.monotonic()
        figures["s3_outage_s"] = back_at - down_at
        run.read_until(lambda recs: want <= ids_in(recs), timeout=60)
        # Nothing straggles in afterwards (a duplicate or an error result for a request already answered).
        run.read_until(lambda recs: False, timeout=2)
        after = run.metrics()
    finally:
        run.close()
    results = run.seen
    missing = want - ids_in(results)
    assert not missing, f"never answered OK: {sorted(missing)}\n{run.worker_tail()}\n{private.log('s3')}"
    by_id: dict[str, list[dict]] = {}
    for r in results:
        by_id.setdefault(r["request_id"], []).append(r)
    assert set(by_id) == want
    dupes = {k: [(r["status"], r["error"]) for r in v] for k, v in by_id.items() if len(v) != 1}
    assert not dupes, f"requests answered more than once: {dupes}"
    for r in results:
        assert r["status"] == "OK" and r["content_type"] == "image/png", r
        assert_artifact(private, r)
    assert outages(after, "s3") >= 1
    assert outages(after, "kafka") == 0, "S3 outage miscounted as a Kafka one"
    figures["recovery_s"] = max(r["_seen_at"] for r in results) - back_at
    print("figures:", json.dumps({k: round(v, 1) for k, v in figures.items()}))


def test_kafka_outage_mid_stream_loses_nothing(private: PrivateStack) -> None:
    run = Run(private, "kafka")
    figures: dict[str, float] = {}
    prefix = f"k-{uuid.uuid4().hex[:6]}"
    first = image_requests(prefix, 16)
    second = image_requests(prefix, 24)[16:]  # ids 16..23, sent after the broker is back
    want = {r["request_id"] for r in first + second}
    try:
        # Slow batches of 2: the stream is still in full flow when the broker goes away.
        run.start_worker(delay_s=0.4, max_batch=2)
        run.produce(first)
        run.read_until(lambda recs: len(recs) >= 2, timeout=30)
        assert len(run.seen) >= 2, f"worker never answered before the outage:\n{run.worker_tail()}"
        answered_before = len(ids_in(run.seen))
        figures["kafka_stop_s"] = private.stop("kafka")
        down_at = time.monotonic()
        time.sleep(max(0.0, 10.0 - (time.monotonic() - down_at)))
        run.check_alive()
        during = run.wait_metrics(lambda text: outages(text, "kafka") >= 1, timeout=5)
        assert outages(during, "kafka") >= 1, f"no Kafka outage in the worker's metrics:\n{during}"
        figures["kafka_restart_s"] = private.up("kafka")
        back_at = time.monotonic()
        figures["kafka_outage_s"] = back_at - down_at
        run.produce(second)
        run.read_until(lambda recs: want <= ids_in(recs), timeout=75)
        after = run.metrics()
    finally:
        run.close()
    results = run.seen
    missing = want - ids_in(results)
    assert not missing, (f"lost across the Kafka outage: {sorted(missing)}\n--- worker:\n{run.worker_tail()}"
                         f"\n--- kafka:\n{private.log('kafka')}")
    assert answered_before < len(first), "the outage did not hit mid-stream (all answered before it)"
    assert ids_in(results, "ERROR") <= want and all(r["status"] == "OK" for r in results), \
        [(r["request_id"], r["error"]) for r in results if r["status"] != "OK"]
    for r in results:
        assert_artifact(private, r)
    assert outages(after, "kafka") >= 1
    figures["recovery_s"] = max(r["_seen_at"] for r in results) - back_at
    figures["results"] = len(results)
    figures["distinct"] = len(ids_in(results))
    print("figures:", json.dumps({k: round(v, 1) for k, v in figures.items()}))
