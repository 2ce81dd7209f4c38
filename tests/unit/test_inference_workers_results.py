"""Result records and their units (inference_workers/results.py)."""

from __future__ import annotations

from datetime import datetime

from inference_workers.handlers.base import InferenceOutput
from inference_workers.results import ResultBuilder, error_code, output_units
from tests.helpers.worker_fakes import ScriptedHandler, make_request, serdes


def test_error_codes() -> None:
    assert error_code("rejected: prompt_too_long") == "rejected"
    assert error_code("deadline_exceeded") == "deadline_exceeded"
    assert error_code(None) == "unknown"


def test_output_units() -> None:
    assert output_units(InferenceOutput(text="a b", tokens_out=2)) == ("tokens", 2.0)
    assert output_units(InferenceOutput(artifact=b"x", content_type="image/png")) == ("images", 1.0)
    assert output_units(InferenceOutput(artifact=b"x", content_type="Audio/WAV")) == ("audio_clips", 1.0)
    assert output_units(InferenceOutput(text="x")) == ("requests", 1.0)


def test_results_name_the_worker_and_encode_to_the_contract() -> None:
    results = ResultBuilder("echo", "echo-0-host-1", ScriptedHandler())
    req = make_request("enc", "hello")
    ok = results.ok(req, InferenceOutput(text="HELLO", tokens_out=2), started=req["created_at"] + 5,
                    inference_ms=3, batch_size=4)
    assert ok["status"] == "OK" and ok["queue_ms"] == 5 and ok["batch_size"] == 4 and ok["inference_ms"] == 3
    assert (ok["pool"], ok["worker_id"], ok["model_name"], ok["model_version"]) == ("echo", "echo-0-host-1", "unit", "7")
    err = results.error(req, "rejected: prompt_too_long", retryable=False)
    assert err["status"] == "ERROR" and err["retryable"] is False and err["queue_ms"] >= 5
    serde = serdes()["result_serde"]
    for record in (ok, err):
        decoded = serde.decode(serde.encode(record))
        assert decoded["request_id"] == "enc" and isinstance(decoded["completed_at"], datetime)


def test_a_failure_the_handler_reports_is_an_error_result() -> None:
    results = ResultBuilder("echo", "w", ScriptedHandler())
    res = results.ok(make_request("s", "x"), InferenceOutput(error="nsfw_output", retryable=False), 0, 1, 1)
    assert res["status"] == "ERROR" and res["error"] == "nsfw_output" and res["retryable"] is False


def test_results_carry_their_requests_tenant_and_are_keyed_by_its_identity() -> None:
    from inference_workers.results import result_key

    results = ResultBuilder("echo", "w", ScriptedHandler())
    ok = results.ok(make_request("r1", "x", tenant_id="acme"), InferenceOutput(text="y"), 0, 1, 1)
    assert ok["tenant_id"] == "acme" and result_key(ok) == b"acme\x1fr1"
    assert result_key(results.error({"request_id": "old"}, "boom", True)) == b"old"  # no tenant: the id alone


def test_fit_to_kafka_leaves_small_results_alone() -> None:
    from inference_workers.results import fit_to_kafka

    serde = serdes()["result_serde"]
    res = ResultBuilder("echo", "w", ScriptedHandler()).ok(make_request("r1", "x"), InferenceOutput(text="y"), 0, 1, 1)
    calls = []
    assert fit_to_kafka(res, serde.encode, lambda data: calls.append(data)) == (res, serde.encode(res)) and not calls
