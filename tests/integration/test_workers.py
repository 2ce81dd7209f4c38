"""Inference workers against the real broker, registry and S3: answers, poison, crashes, shutdown.

Every test has its own request/result/DLQ topics and consumer group, so tests (and other
engineers' tests) never see each other's records.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from inference_workers.handlers.echo import EchoHandler
from cli.demo import fetch_artifact
from inference_workers.worker import Worker, WorkerSettings
from rscf.kafka_clients import client_security, credentials_env
from rscf.settings import SETTINGS
from tools.harness import free_port_block
from schemas.keys import tenant_object_prefix

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------- helpers
class Topics:
    def __init__(self, partitions: int = 2) -> None:
        run = uuid.uuid4().hex[:10]
        self.requests = f"{SETTINGS.topics.request_prefix}it-{run}"
        self.results = f"rscf.it.results.{run}"
        self.dlq = f"rscf.it.dlq.{run}"
        self.group = f"rscf-it-workers-{run}"
        from rscf.kafka_clients import create_topics

        create_topics([self.requests, self.results, self.dlq], partitions)

    def settings(self, **kw) -> WorkerSettings:
        base = dict(requests_topic=self.requests, results_topic=self.results, dlq_topic=self.dlq,
                    group_id=self.group, metrics_port=-1)
        base.update(kw)
        return WorkerSettings(**base)

    def cli_args(self) -> list[str]:
        return ["--requests-topic", self.requests, "--results-topic", self.results, "--group", self.group]

    def cleanup(self) -> None:
        from rscf.kafka_clients import delete_topics

        delete_topics([self.requests, self.results, self.dlq])


@pytest.fixture()
def topics(stack):
    t = Topics()
    yield t
    t.cleanup()


def make_request(rid: str, prompt: str, priority: str = "NORMAL", deadline_in_ms: int = 600_000) -> dict:
    from tools.workers_bench import make_request as bench_request

    now = int(time.time() * 1000)
    r = bench_request("echo", 0, "it", now)
    r.update(request_id=rid, prompt=prompt, priority=priority, deadline=now + deadline_in_ms, attempt=1)
    return r


def produce(topic: str, requests: list[dict], raw: list[tuple[bytes | None, bytes]] = ()) -> None:
    from confluent_kafka import Producer

    from schemas.serde import serde_for

    serde = serde_for(SETTINGS.topics.requests("echo"))
    p = Producer({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security(), "enable.idempotence": True})
    for r in requests:
        p.produce(topic, key=r["request_id"].encode(), value=serde.encode(r))
    for key, value in raw:
        p.produce(topic, key=key, value=value)
    assert p.flush(30) == 0


class Reader:
    """Reads a topic from the beginning in the background, decoding with the given record type's serde."""

    def __init__(self, topic: str, serde_topic: str) -> None:
        from confluent_kafka import Consumer

        from schemas.serde import serde_for

        self.serde = serde_for(serde_topic)
        self.records: list[dict] = []
        self.c = Consumer({"bootstrap.servers": SETTINGS.kafka_bootstrap, **client_security(), "group.id": f"reader-{uuid.uuid4().hex}",
                           "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.c.subscribe([topic])

    def read_until(self, predicate, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while not predicate(self.records) and time.monotonic() < deadline:
            for m in self.c.consume(100, 0.3):
                if m.error() is None:
                    self.records.append(self.serde.decode(m.value()))
        return self.records

    def close(self) -> None:
        self.c.close()


def ids_answered(n_expected: set[str]):
    return lambda recs: n_expected <= {r["request_id"] for r in recs}


def committed_lag(topic: str, group: str) -> int:
    from inference_workers.autoscaler import consumer_lag

    return consumer_lag(topic, group, principal="admin").lag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker_process(topics: Topics, port: int, *extra: str, delay_ms: float = 0) -> subprocess.Popen:
    """`rscf worker run` on the echo pool; with delay_ms, every batch is delayed (tests/helpers/slow_worker.py)."""
    env = {**os.environ, "PYTHONPATH": str(SETTINGS.paths.repo)}
    program = ["tests.helpers.slow_worker", str(delay_ms)] if delay_ms else ["cli.main", "worker", "run"]
    cmd = [sys.executable, "-m", *program, "--pool", "echo", *topics.cli_args(),
           "--metrics-port", str(port), "--log-level", "warning", *extra]
    return subprocess.Popen(cmd, cwd=SETTINGS.paths.repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_http(url: str, predicate, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}): {proc.stdout.read().decode()[-2000:]}")
        try:
            r = httpx.get(url, timeout=1)
            if predicate(r):
                return r.text
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never satisfied the condition")


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_in_thread(worker: Worker) -> threading.Thread:
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    return t


# ---------------------------------------------------------------------------- tests
def test_echo_pool_answers_every_request_and_commits(topics: Topics) -> None:
    good = [make_request(f"ok-{i}", f"hello {i}") for i in range(12)]
    expired = make_request("expired", "too late", deadline_in_ms=-1000)
    produce(topics.requests, good + [expired], raw=[(b"broken-1", b"not avro at all"), (None, b"\x00junk")])
    assert committed_lag(topics.requests, topics.group) == 15  # autoscaler's lag: nothing committed yet

    worker = Worker("echo", EchoHandler(), topics.settings(max_batch=4, max_wait_ms=20, metrics_port=0))
    port = worker.start_health_server()
    thread = run_in_thread(worker)
    reader, dlq = Reader(topics.results, SETTINGS.topics.results), Reader(topics.dlq, SETTINGS.topics.dlq)
    try:
        want = {r["request_id"] for r in good} | {"expired", "broken-1"}
        results = {r["request_id"]: r for r in reader.read_until(ids_answered(want))}
        dead = dlq.read_until(lambda recs: len(recs) >= 1)
        assert wait_http(f"http://127.0.0.1:{port}/healthz", lambda r: r.status_code == 200)
        wait_http(f"http://127.0.0.1:{port}/readyz", lambda r: r.status_code == 200)
        text = wait_http(f"http://127.0.0.1:{port}/metrics", lambda r: r.status_code == 200)
    finally:
        worker.stop()
        thread.join(30)
        worker.close()
        reader.close()
        dlq.close()
    assert not thread.is_alive()
    assert set(results) == want
    for r in good:
        res = results[r["request_id"]]
        assert res["status"] == "OK" and res["output_text"] == r["prompt"][::-1]
        assert res["pool"] == "echo" and res["attempt"] == 1 and 1 <= res["batch_size"] <= 4
    assert results["expired"]["error"] == "deadline_exceeded" and results["expired"]["retryable"] is False
    assert results["broken-1"]["error"].startswith("decode_failed: not_confluent_framed")
    assert len(dead) == 1 and dead[0]["original"] == b"\x00junk" and dead[0]["stage"] == "decode"
    assert metric(text, "rscf_worker_batch_size_count") >= 3
    assert metric(text, "rscf_worker_requests_total") >= 14
    assert 'reason="deadline_exceeded"' in text
    assert committed_lag(topics.requests, topics.group) == 0  # every offset answered and committed


class PoisonEcho(EchoHandler):
    """Echo that chokes on one prompt, as a tokenizer would on malformed input."""

    def run_inference(self, batch, model):
        if any(r["prompt"] == "POISON" for r in batch):
            raise ValueError("cannot tokenize POISON")
        return super().run_inference(batch, model)


def test_poison_request_fails_only_itself(topics: Topics) -> None:
    reqs = [make_request(f"p-{i}", "POISON" if i == 5 else f"fine {i}") for i in range(8)]
    produce(topics.requests, reqs)
    # Long max wait: all eight land in the same partition-independent batch of 8.
    worker = Worker("echo", PoisonEcho(), topics.settings(max_batch=8, max_wait_ms=2000))
    thread = run_in_thread(worker)
    reader = Reader(topics.results, SETTINGS.topics.results)
    try:
        results = {r["request_id"]: r for r in reader.read_until(ids_answered({r["request_id"] for r in reqs}))}
    finally:
        worker.stop()
        thread.join(30)
        reader.close()
    poison = results.pop("p-5")
    assert poison["status"] == "ERROR" and poison["retryable"] is False
    assert "cannot tokenize" in poison["error"]
    assert len(results) == 7 and all(r["status"] == "OK" for r in results.values())
    assert max(r["batch_size"] for r in results.values()) > 1  # they really shared a batch with it


def test_sigkill_mid_batch_loses_nothing(topics: Topics) -> None:
    reqs = [make_request(f"k-{i}", f"survive {i}") for i in range(24)]
    produce(topics.requests, reqs)
    port = free_port()
    slow = start_worker_process(topics, port, "--max-batch", "4", "--max-wait-ms", "10", delay_ms=1500)
    reader = Reader(topics.results, SETTINGS.topics.results)
    try:
        # Wait until the slow worker has answered something and is inside its next batch.
        reader.read_until(lambda recs: len(recs) >= 1, timeout=90)
        assert reader.records, "the slow worker never answered"
        wait_http(f"http://127.0.0.1:{port}/metrics",
                  lambda r: metric(r.text, "rscf_worker_batch_size_count") >= 2, proc=slow)
        slow.send_signal(signal.SIGKILL)
        slow.wait(10)
        answered_before = {r["request_id"] for r in reader.records}
        assert len(answered_before) < len(reqs)
        fresh = start_worker_process(topics, free_port(), "--max-batch", "4")
        try:
            reader.read_until(ids_answered({r["request_id"] for r in reqs}), timeout=120)
        finally:
            fresh.send_signal(signal.SIGTERM)
            fresh.wait(30)
    finally:
        if slow.poll() is None:
            slow.kill()
        reader.close()
    got = [r["request_id"] for r in reader.records]
    assert set(got) == {r["request_id"] for r in reqs}  # at least once: none lost
    assert all(r["status"] == "OK" for r in reader.records)
    assert fresh.returncode == 0


def test_sigterm_finishes_the_batch_in_hand_and_commits(topics: Topics) -> None:
    reqs = [make_request(f"t-{i}", f"graceful {i}") for i in range(4)]
    port = free_port()
    proc = start_worker_process(topics, port, "--max-batch", "4", "--max-wait-ms", "500", delay_ms=3000)
    reader = Reader(topics.results, SETTINGS.topics.results)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", lambda r: r.status_code == 200, timeout=60, proc=proc)
        produce(topics.requests, reqs)
        # The batch has started (batch size observed at batch start) and sleeps 3 s: stop now.
        wait_http(f"http://127.0.0.1:{port}/metrics",
                  lambda r: metric(r.text, "rscf_worker_batch_size_count") >= 1, proc=proc)
        assert not reader.read_until(lambda recs: False, timeout=0.5)  # nothing answered yet
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        results = reader.read_until(ids_answered({r["request_id"] for r in reqs}), timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.close()
    assert rc == 0
    assert {r["request_id"] for r in results} == {r["request_id"] for r in reqs}
    assert all(r["status"] == "OK" for r in results)
    assert committed_lag(topics.requests, topics.group) == 0


def test_workers_cli_scale_and_status(stack, tmp_path) -> None:
    """`rscf workers scale` starts and stops real replicas tracked by PID files (in a private data dir,
    on shifted metrics ports, so nobody else's replicas are touched)."""
    from rscf.settings import POOLS

    base = free_port_block(2 * len(POOLS))
    env = {**os.environ, "PYTHONPATH": str(SETTINGS.paths.repo), "RSCF_DATA_DIR": str(tmp_path),
           "RSCF_WORKER_METRICS_PORT": str(base), **credentials_env()}

    def rscf(*args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "cli.main", *args, "--json"], cwd=SETTINGS.paths.repo,
                             capture_output=True, text=True, timeout=120, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    try:
        res = rscf("workers", "scale", "--pool", "echo", "--replicas", "2")
        assert res["replicas"] == 2
        pids = {r["pid"] for r in res["started"]}
        assert len(pids) == 2 and all((tmp_path / "pids" / f"worker-echo-{i}.pid").exists() for i in (0, 1))
        port1 = base + POOLS.index("echo") + 1 * len(POOLS)
        wait_http(f"http://127.0.0.1:{port1}/readyz", lambda r: r.status_code == 200)
        status = rscf("workers", "status", "--pool", "echo")
        assert {r["pid"] for r in status["replicas"] if r["alive"]} == pids
        res = rscf("workers", "scale", "--pool", "echo", "--replicas", "1")
        assert res["replicas"] == 1 and [r["replica"] for r in res["stopped"]] == [1]
    finally:
        stopped = rscf("workers", "stop", "--pool", "echo", "--grace", "20")
    assert stopped["failed"] == []
    from inference_workers.supervisor import is_worker

    assert not any(is_worker(pid, "echo") for pid in pids)  # gone (or an unreaped zombie)


def test_image_pool_stores_a_png_artifact(topics: Topics, tmp_path) -> None:
    """Tiny untrained UNet (the handlers' test model): the result points at a readable PNG in S3."""
    import io

    import torch
    from minio import Minio
    from PIL import Image

    from inference_workers.models import load_handler
    from tests.helpers.tiny_models import build_tiny_image_pipeline

    torch.set_num_threads(1)
    model_dir = build_tiny_image_pipeline(tmp_path / "tiny-unet", sample_size=16)
    handler = load_handler("image", model=str(model_dir), device="cpu")
    reqs = []
    for i in range(3):
        r = make_request(f"img-{i}", ["a circle", "a square", "a triangle"][i])
        r.update(modality="IMAGE", pool="image")
        r["params"].update(width=16, height=16, steps=2, seed=i)
        reqs.append(r)
    produce(topics.requests, reqs)
    worker = Worker("image", handler, topics.settings(max_batch=4, max_wait_ms=200))
    thread = run_in_thread(worker)
    reader = Reader(topics.results, SETTINGS.topics.results)
    try:
        results = reader.read_until(ids_answered({r["request_id"] for r in reqs}), timeout=120)
    finally:
        worker.stop()
        thread.join(60)
        reader.close()
    s3 = Minio(SETTINGS.s3_endpoint, access_key=SETTINGS.s3.access_key, secret_key=SETTINGS.s3.secret_key,
               secure=False)
    assert len(results) == 3
    for res in results:
        assert res["status"] == "OK", res["error"]
        assert res["content_type"] == "image/png" and res["pool"] == "image"
        (uri,) = res["artifact_uris"]
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        assert bucket == SETTINGS.buckets.artifacts
        tenant_prefix = tenant_object_prefix(res["tenant_id"]) if res["tenant_id"] else ""
        assert key.startswith(f"{tenant_prefix}artifacts/image/") and key.endswith(f"/{res['request_id']}-1.png")
        img = Image.open(io.BytesIO(fetch_artifact(uri, s3)))
        img.load()
        assert img.format == "PNG" and img.size[0] >= 16
