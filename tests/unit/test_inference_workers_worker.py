"""The worker's glue (inference_workers/worker.py) without a broker: intake to batcher, answers to the outbox."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from inference_workers.worker import Worker, WorkerSettings
from rscf.settings import SETTINGS
from tests.helpers.worker_fakes import FakeConsumer, FakeProducer, Msg, ScriptedHandler, batch_of, make_request, serdes


@pytest.fixture()
def worker() -> Worker:
    w = Worker("echo", ScriptedHandler(), WorkerSettings(max_batch=8, max_wait_ms=0, metrics_port=-1), **serdes())
    w.load()
    return w


def test_results_encode_to_the_contract_and_answer_their_offsets(worker: Worker) -> None:
    req = make_request("enc", "hello")
    worker.outbox.tracker.track("t", 0, 0)
    (p, res), = worker._run_batch(batch_of(req))
    worker._answer(p.request, p.meta, res)
    (out,) = worker.outbox.records()
    assert out.key == b"t\x1fenc" and out.topic == SETTINGS.topics.results and out.offsets == [("t", 0, 0)]
    rec = worker.result_serde.decode(out.value)
    assert rec["status"] == "OK" and rec["output_text"] == "HELLO" and rec["tokens_out"] == 2
    assert rec["tenant_id"] == "t"  # copied from the request: the job keys its state by (tenant, request id)
    assert isinstance(rec["completed_at"], datetime)
    assert worker.metrics.batch_size.labels("echo")._sum.get() == 1
    assert worker.metrics.units.labels("echo", "tokens")._value.get() == 2


def test_a_result_that_does_not_serialize_is_answered_as_an_error(worker: Worker) -> None:
    req = make_request("bad", "x")
    worker._answer(req, ("t", 0, 0), {**worker.results.base(req), "output_text": 42})
    rec = worker.result_serde.decode(worker.outbox.records()[0].value)
    assert rec["status"] == "ERROR" and rec["error"].startswith("serialize_failed") and rec["retryable"] is False


class TextStore:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.kept = fail, []

    def put_artifact(self, pool, request, data, content_type):
        if self.fail:
            raise ConnectionError("object storage down")
        self.kept.append((request["request_id"], data, content_type))
        return f"s3://rscf-artifacts/{request['request_id']}.txt"


@pytest.mark.parametrize("down", [False, True])
def test_a_result_too_large_for_kafka_keeps_its_text_as_an_artifact(worker: Worker, down: bool) -> None:
    req = make_request("huge", "x")
    worker._store = TextStore(fail=down)
    text = "word " * 300_000  # 1.5 MB: the producer would refuse it and the request would never be answered
    worker._answer(req, ("t", 0, 0), {**worker.results.base(req), "output_text": text})
    (out,) = worker.outbox.records()
    assert len(out.key) + len(out.value) <= SETTINGS.limits.max_record_bytes
    rec = worker.result_serde.decode(out.value)
    if down:
        assert rec["status"] == "ERROR" and rec["error"].startswith("result_too_large") and rec["retryable"] is False
    else:
        (kept,) = worker._store.kept
        assert kept == ("huge", text.encode(), "text/plain") and rec["status"] == "OK"
        assert rec["artifact_uris"] == ["s3://rscf-artifacts/huge.txt"] and rec["output_text"].startswith("word word")
        assert len(rec["output_text"]) < 3000


def test_undecodable_records_are_answered_not_batched(worker: Worker) -> None:
    worker._ingest(Msg(b"\x07garbage", b"req-42", offset=3))
    worker._ingest(Msg(b"\x00\x00\x00\x00\x01\xff\xff", None, offset=4))
    assert len(worker.batcher) == 0
    first, second = worker.outbox.records()
    assert first.topic == SETTINGS.topics.results and worker.result_serde.decode(first.value)["request_id"] == "req-42"
    assert second.topic == SETTINGS.topics.dlq


def test_expired_request_answered_without_model(worker: Worker) -> None:
    past = int(time.time() * 1000) - 1
    value = worker.request_serde.encode(make_request("late", "poison", deadline=past))
    worker._ingest(Msg(value, b"late"))
    assert len(worker.batcher) == 1
    worker._answer_expired()
    assert len(worker.batcher) == 0
    (out,) = worker.outbox.records()
    res = worker.result_serde.decode(out.value)
    assert res["error"] == "deadline_exceeded" and res["retryable"] is False
    assert worker.handler.calls == []


def test_dropping_revoked_partitions_empties_their_queue(worker: Worker) -> None:
    for i, part in enumerate((0, 1, 0)):
        value = worker.request_serde.encode(make_request(f"r{i}", "x"))
        worker._ingest(Msg(value, f"r{i}".encode(), offset=i, partition=part))
    worker.drop_requests({("genai.inference.requests.echo", 0)})
    assert len(worker.batcher) == 1
    assert not worker.ready()  # no partitions assigned


def test_a_worker_serves_and_commits_with_fake_clients(monkeypatch) -> None:
    """Both threads end to end: poll, batch, run (poison isolated), answer, acknowledge, commit, leave."""
    codec = serdes()
    prompts = ["a", "b", "poison", "c", "d", "e"]
    records = [Msg(codec["request_serde"].encode(make_request(f"r{i}", p)), f"r{i}".encode(), offset=i, topic="req")
               for i, p in enumerate(prompts)]
    consumer, producer = FakeConsumer(records), FakeProducer()
    monkeypatch.setattr("inference_workers.kafka_io.Consumer", lambda conf: consumer)
    monkeypatch.setattr("inference_workers.kafka_io.Producer", lambda conf: producer)
    w = Worker("echo", ScriptedHandler(), WorkerSettings(max_batch=4, max_wait_ms=5, metrics_port=-1, lanes=False,
                                                         requests_topic="req", results_topic="res"), **codec)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while w.answered < len(prompts) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.ready()
    w.stop()
    thread.join(10)
    assert not thread.is_alive() and consumer.closed
    assert w.metrics.ready.labels("echo")._value.get() == 0
    answers = {r["request_id"]: r for r in (codec["result_serde"].decode(v) for t, _, v in producer.produced if t == "res")}
    assert len(answers) == 6 and answers["r2"]["status"] == "ERROR" and answers["r2"]["retryable"] is False
    assert all(answers[f"r{i}"]["status"] == "OK" for i in (0, 1, 3, 4, 5))
    assert consumer.commits[-1][0] == [("req", 0, 6)]  # everything answered is committed


def _run_ingested(worker: Worker) -> None:
    """What the inference thread does with the batch in hand (synchronously, for the test)."""
    batch = worker.batcher.next_batch()
    for p, res in worker._run_batch(batch):
        worker._answer(p.request, p.meta, res)


def test_a_redelivered_request_is_answered_again_without_the_model(worker: Worker) -> None:
    value = worker.request_serde.encode(make_request("dup", "hello"))
    worker._ingest(Msg(value, b"dup", offset=0))
    _run_ingested(worker)
    worker._ingest(Msg(value, b"dup", offset=7))  # the job dispatched it again after a restore
    assert len(worker.batcher) == 0 and worker.handler.calls == [["hello"]]
    first, again = worker.outbox.records()
    assert again.value == first.value and again.key == first.key == b"t\x1fdup" and again.offsets[0][2] == 7
    assert worker.metrics.duplicates.labels("echo")._value.get() == 1
    assert worker.metrics.model_calls.labels("echo")._value.get() == 1


def test_a_new_attempt_or_another_tenant_runs_the_model_again(worker: Worker) -> None:
    for i, req in enumerate([make_request("r", "a"), make_request("r", "b", attempt=2),
                             make_request("r", "c", tenant_id="other")]):
        worker._ingest(Msg(worker.request_serde.encode(req), b"r", offset=i))
        _run_ingested(worker)
    assert worker.handler.calls == [["a"], ["b"], ["c"]]
    assert worker.metrics.duplicates.labels("echo")._value.get() == 0


def test_retryable_errors_are_not_repeated_from_the_cache(worker: Worker) -> None:
    req = make_request("flaky", "x")
    worker._answer(req, ("t", 0, 0), worker.results.error(req, "artifact_upload_failed: s3 down", retryable=True))
    assert worker.answered_cache.get(req) is None
    worker._answer(req, ("t", 0, 1), worker.results.error(req, "rejected: too long", retryable=False))
    assert worker.answered_cache.get(req) is not None


def test_a_full_batcher_looks_again_within_half_a_batch_not_a_whole_poll_timeout(worker: Worker) -> None:
    """Each full-batcher wait of 50 ms held the benchmark's echo worker (32 buffered) to ~650 answers/s."""
    assert worker._poll_wait_s(room=5) == worker.s.poll_timeout_s, "room: a normal poll"
    worker.batch_s = 0.004
    assert worker._poll_wait_s(room=0) == 0.002, "full: half of a 4 ms batch"
    worker.batch_s = 0.0
    assert worker._poll_wait_s(room=0) == 0.0005, "never a busy spin"
    worker.batch_s = 8.0
    assert worker._poll_wait_s(room=-3) == worker.s.poll_timeout_s, "a slow model: at most the poll timeout"
