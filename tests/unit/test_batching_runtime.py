"""Worker logic that needs no broker: batch execution, poison isolation, decode failures, result records.

The serdes use the in-process LocalRegistry; Kafka messages are tiny stand-ins with the
confluent_kafka.Message accessors the worker reads.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from inference_workers.batching import Batch, Pending
from inference_workers.handlers.base import InferenceOutput, ModelHandler, RequestRejected
from inference_workers.runtime import Worker, WorkerSettings, artifact_key, error_code
from rscf.settings import SETTINGS
from schemas.serde import LocalRegistry, TopicSerde


class Handler(ModelHandler[None]):
    model_name = "unit"
    model_version = "7"

    def load_model(self) -> None:
        return None

    def validate(self, request: dict) -> None:
        if request["prompt"] == "too long":
            raise RequestRejected("prompt_too_long")

    def run_inference(self, batch, model):
        if any(r["prompt"] == "poison" for r in batch):
            raise ValueError("cannot tokenize")
        if any(r["prompt"] == "gpu-broken" for r in batch):
            raise RuntimeError("CUDA error")
        return [
            InferenceOutput(text=r["prompt"].upper(), tokens_out=2) if r["prompt"] != "soft-fail"
            else InferenceOutput(error="nsfw_output", retryable=False)
            for r in batch
        ]


@pytest.fixture()
def worker() -> Worker:
    reg = LocalRegistry()
    serdes = {
        "request_serde": TopicSerde(SETTINGS.topics.requests("echo"), client=reg),
        "result_serde": TopicSerde(SETTINGS.topics.results, client=reg),
        "dlq_serde": TopicSerde(SETTINGS.topics.dlq, client=reg),
    }
    w = Worker("echo", Handler(), WorkerSettings(max_batch=8, max_wait_ms=0, metrics_port=-1), **serdes)
    w.load()
    return w


def request(rid: str, prompt: str, **kw) -> dict:
    now = int(time.time() * 1000)
    r = {
        "request_id": rid, "attempt": 1, "tenant_id": "t", "pool": "echo", "model_name": "unit",
        "model_version": "7", "modality": "TEXT", "prompt": prompt,
        "params": {k: None for k in ("max_tokens", "temperature", "top_p", "width", "height", "steps", "seed", "voice")},
        "priority": "NORMAL", "deadline": now + 60_000, "created_at": now - 5, "trace": None,
    }
    r.update(kw)
    return r


def batch_of(*reqs: dict) -> Batch:
    return Batch(key=None, items=[Pending(r, None, 1, i, 0.0, None, ("t", 0, i)) for i, r in enumerate(reqs)], formed_at=0.0)


class Msg:
    def __init__(self, value: bytes, key: bytes | None, offset: int = 0) -> None:
        self._v, self._k, self._o = value, key, offset

    def error(self):
        return None

    def value(self):
        return self._v

    def key(self):
        return self._k

    def topic(self):
        return "genai.inference.requests.echo"

    def partition(self):
        return 0

    def offset(self):
        return self._o


def decoded_outbox(w: Worker, serde) -> list[dict]:
    return [serde.decode(o.value) for o in w._outbox]


def test_poison_request_fails_alone_and_is_not_retryable(worker: Worker) -> None:
    reqs = [request(f"r{i}", p) for i, p in enumerate(["a", "b", "poison", "c", "d"])]
    answers = worker._run_batch(batch_of(*reqs))
    by_id = {p.request["request_id"]: res for p, res in answers}
    assert [p.request["request_id"] for p, _ in answers] == ["r0", "r1", "r2", "r3", "r4"]
    assert by_id["r2"]["status"] == "ERROR" and by_id["r2"]["retryable"] is False
    assert by_id["r2"]["error"].startswith("inference_failed: ValueError")
    for rid, text in [("r0", "A"), ("r1", "B"), ("r3", "C"), ("r4", "D")]:
        assert by_id[rid]["status"] == "OK" and by_id[rid]["output_text"] == text
        assert by_id[rid]["batch_size"] == 5 and by_id[rid]["attempt"] == 1
        assert by_id[rid]["model_name"] == "unit" and by_id[rid]["model_version"] == "7"
        assert by_id[rid]["queue_ms"] >= 5


def test_whole_batch_infrastructure_failure_is_retryable(worker: Worker) -> None:
    answers = worker._run_batch(batch_of(request("x", "gpu-broken")))
    (_, res), = answers
    assert res["status"] == "ERROR" and res["retryable"] is True


def test_rejected_and_soft_failed_requests(worker: Worker) -> None:
    answers = worker._run_batch(batch_of(request("long", "too long"), request("soft", "soft-fail"), request("ok", "hi")))
    by_id = {p.request["request_id"]: res for p, res in answers}
    assert by_id["long"]["error"] == "rejected: prompt_too_long" and by_id["long"]["retryable"] is False
    assert by_id["soft"]["error"] == "nsfw_output" and by_id["soft"]["retryable"] is False
    assert by_id["ok"]["output_text"] == "HI"


def test_results_encode_to_the_contract_and_offsets_are_tracked(worker: Worker) -> None:
    req = request("enc", "hello")
    worker.tracker.track("t", 0, 0)
    (p, res), = worker._run_batch(batch_of(req))
    worker._answer(p.request, p.meta, res)
    (out,) = worker._outbox
    assert out.key == b"enc" and out.topic == SETTINGS.topics.results and out.offsets == [("t", 0, 0)]
    rec = worker.result_serde.decode(out.value)
    assert rec["status"] == "OK" and rec["output_text"] == "HELLO" and rec["tokens_out"] == 2
    assert isinstance(rec["completed_at"], datetime)


def test_undecodable_with_key_gets_error_result_without_key_goes_to_dlq(worker: Worker) -> None:
    worker._ingest(Msg(b"\x07garbage", b"req-42", offset=3))
    worker._ingest(Msg(b"\x00\x00\x00\x00\x01\xff\xff", None, offset=4))
    assert len(worker.batcher) == 0
    first, second = worker._outbox
    res = worker.result_serde.decode(first.value)
    assert first.topic == SETTINGS.topics.results and res["request_id"] == "req-42"
    assert res["status"] == "ERROR" and res["error"].startswith("decode_failed: not_confluent_framed")
    assert res["retryable"] is False
    dl = worker.dlq_serde.decode(second.value)
    assert second.topic == SETTINGS.topics.dlq and dl["stage"] == "decode" and dl["source_offset"] == 4
    assert dl["original"] == b"\x00\x00\x00\x00\x01\xff\xff" and dl["request_id"] is None
    assert worker.tracker.open_count() == 2  # answered only once the broker acknowledges


def test_expired_request_answered_without_model(worker: Worker) -> None:
    past = int(time.time() * 1000) - 1
    value = worker.request_serde.encode(request("late", "poison", deadline=past))
    worker._ingest(Msg(value, b"late"))
    assert len(worker.batcher) == 1
    worker._answer_expired()
    assert len(worker.batcher) == 0
    (res,) = decoded_outbox(worker, worker.result_serde)
    assert res["error"] == "deadline_exceeded" and res["retryable"] is False


def test_artifact_key_layout_and_error_codes() -> None:
    at = int(datetime(2025, 3, 4, 12, tzinfo=timezone.utc).timestamp() * 1000)
    assert artifact_key("image", "abc", 2, "image/png", at) == "artifacts/image/2025-03-04/abc-2.png"
    assert artifact_key("speech", "a/b", 0, "audio/wav", at) == "artifacts/speech/2025-03-04/a_b-0.wav"
    assert artifact_key("x", "id", 0, None, at).endswith("id-0.bin")
    assert error_code("rejected: prompt_too_long") == "rejected"
    assert error_code("deadline_exceeded") == "deadline_exceeded"
    assert error_code(None) == "unknown"


def test_request_expiring_in_the_queue_skips_the_model(worker: Worker) -> None:
    late = request("late", "poison", deadline=int(time.time() * 1000) - 1)
    batch = Batch(key=None, items=[Pending(late, None, 1, 0, 0.0, late["deadline"], ("t", 0, 0)),
                                   Pending(request("ok", "x"), None, 1, 1, 0.0, None, ("t", 0, 1))], formed_at=0.0)
    by_id = {p.request["request_id"]: r for p, r in worker._run_batch(batch)}
    assert by_id["late"]["error"] == "deadline_exceeded"  # "poison" never reached the model
    assert by_id["ok"]["status"] == "OK"


def test_artifact_store_reports_a_refused_s3_at_once_and_gives_up_after_its_budget() -> None:
    """A closed port stands in for S3 being down: the first failure is counted right away (the
    client's own hidden retries used to delay it by ~6 s per call) and the store's backoff ends
    at max_retry_s with the error raised, so the worker answers retryable."""
    import socket

    from inference_workers.metrics import WorkerMetrics
    from inference_workers.runtime import ArtifactStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    metrics = WorkerMetrics("image", "unit")
    store = ArtifactStore("rscf-artifacts", metrics, max_retry_s=1.0, endpoint=f"127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(Exception):
        store.put("artifacts/image/x.png", b"png", "image/png")
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, f"gave up after {elapsed:.1f} s, not within the 1 s budget plus one step"
    assert metrics.outages.labels("image", "s3")._value.get() == 1
