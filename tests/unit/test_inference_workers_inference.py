"""One batch through a handler (inference_workers/inference.py): no Kafka, no threads."""

from __future__ import annotations

import time

import pytest

from inference_workers.batching import Batch, Pending
from inference_workers.inference import run_batch
from inference_workers.results import ResultBuilder
from tests.helpers.worker_fakes import ScriptedHandler, batch_of, make_request


@pytest.fixture()
def handler() -> ScriptedHandler:
    return ScriptedHandler()


@pytest.fixture()
def results(handler: ScriptedHandler) -> ResultBuilder:
    return ResultBuilder("echo", "echo-0-test", handler)


def by_id(run) -> dict[str, dict]:
    return {p.request["request_id"]: res for p, res in run.answers}


def test_poison_request_fails_alone_and_is_not_retryable(handler, results) -> None:
    reqs = [make_request(f"r{i}", p) for i, p in enumerate(["a", "b", "poison", "c", "d"])]
    run = run_batch(batch_of(*reqs), handler, None, results)
    answers = by_id(run)
    assert [p.request["request_id"] for p, _ in run.answers] == ["r0", "r1", "r2", "r3", "r4"]
    assert answers["r2"]["status"] == "ERROR" and answers["r2"]["retryable"] is False
    assert answers["r2"]["error"].startswith("inference_failed: ValueError")
    for rid, text in [("r0", "A"), ("r1", "B"), ("r3", "C"), ("r4", "D")]:
        assert answers[rid]["status"] == "OK" and answers[rid]["output_text"] == text
        assert answers[rid]["batch_size"] == 5 and answers[rid]["attempt"] == 1
        assert answers[rid]["model_name"] == "unit" and answers[rid]["model_version"] == "7"
        assert answers[rid]["queue_ms"] >= 5


def test_bisection_runs_the_healthy_halves_and_isolates_the_culprit(handler, results) -> None:
    reqs = [make_request(f"r{i}", p) for i, p in enumerate(["a", "b", "poison", "c"])]
    run_batch(batch_of(*reqs), handler, None, results)
    assert handler.calls == [["a", "b", "poison", "c"], ["a", "b"], ["poison", "c"], ["poison"], ["c"]]


def test_whole_batch_infrastructure_failure_is_retryable(handler, results) -> None:
    (_, res), = run_batch(batch_of(make_request("x", "gpu-broken")), handler, None, results).answers
    assert res["status"] == "ERROR" and res["retryable"] is True


def test_rejected_and_soft_failed_requests(handler, results) -> None:
    run = run_batch(batch_of(make_request("long", "too long"), make_request("soft", "soft-fail"),
                             make_request("ok", "hi")), handler, None, results)
    answers = by_id(run)
    assert answers["long"]["error"] == "rejected: prompt_too_long" and answers["long"]["retryable"] is False
    assert answers["soft"]["error"] == "nsfw_output" and answers["soft"]["retryable"] is False
    assert answers["ok"]["output_text"] == "HI"
    assert handler.calls == [["soft-fail", "hi"]]  # the rejected request never reached the model


def test_request_expiring_in_the_queue_skips_the_model(handler, results) -> None:
    late = make_request("late", "poison", deadline=int(time.time() * 1000) - 1)
    batch = Batch(key=None, items=[Pending(late, None, 1, 0, 0.0, late["deadline"], ("t", 0, 0)),
                                   Pending(make_request("ok", "x"), None, 1, 1, 0.0, None, ("t", 0, 1))], formed_at=0.0)
    answers = by_id(run_batch(batch, handler, None, results))
    assert answers["late"]["error"] == "deadline_exceeded"  # "poison" never reached the model
    assert answers["ok"]["status"] == "OK"


def test_on_start_sees_the_batch_before_the_model_runs(handler, results) -> None:
    seen = []
    batch = batch_of(make_request("a", "a"), make_request("b", "b"))
    run_batch(batch, handler, None, results, on_start=lambda b, started: seen.append((len(b), list(handler.calls))),
              clock=lambda: 1_700_000_000_000)
    assert seen == [(2, [])]


def test_units_are_counted_per_kind(handler, results) -> None:
    run = run_batch(batch_of(make_request("a", "a"), make_request("b", "b"), make_request("p", "poison")),
                    handler, None, results)
    assert run.units == {"tokens": 4.0}
    assert run.inference_ms >= 0


def test_artifacts_are_stored_and_named_in_the_result(handler, results) -> None:
    stored = []

    def store(request, output):
        stored.append((request["request_id"], output.artifact, output.content_type))
        return f"s3://bucket/{request['request_id']}.png"

    run = run_batch(batch_of(make_request("img", "draw"), make_request("soft", "soft-fail")), handler, None,
                    results, store_artifact=store)
    answers = by_id(run)
    assert stored == [("img", b"png", "image/png")]  # a failed output stores nothing
    assert answers["img"]["artifact_uris"] == ["s3://bucket/img.png"] and answers["img"]["status"] == "OK"
    assert run.units == {"images": 1.0, "requests": 1.0}


def test_artifact_store_down_makes_a_retryable_error(handler, results) -> None:
    def store(request, output):
        raise ConnectionError("s3 unreachable")

    (_, res), = run_batch(batch_of(make_request("img", "draw")), handler, None, results, store_artifact=store).answers
    assert res["status"] == "ERROR" and res["retryable"] is True
    assert res["error"] == "artifact_upload_failed: s3 unreachable"
