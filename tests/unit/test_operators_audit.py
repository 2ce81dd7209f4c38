"""Final records, latency breakdown, cost, and picklable state."""

import hashlib
import io
import pickle
from dataclasses import replace
from pathlib import Path

import fastavro
import pytest

from operators.admit import TokenBucket
from operators.audit import build_records, cost_units
from operators.correlate import finished_early, on_dispatch, on_result
from operators.dispatch import inference_request, new_pending
from operators.moderate import moderate_input
from operators.output_moderation import moderate_output, moderated_final
from operators.route import CircuitBreaker, RouteDecision
from rscf.settings import SETTINGS

LIM = replace(SETTINGS.limits, request_timeout_ms=10_000)
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def finished_success(output_text="The answer is 42.", modality="TEXT", pool="text-small", tokens=10):
    rec = {"request_id": "r9", "tenant_id": "acme", "modality": modality, "priority": "NORMAL",
           "prompt": "Context...\n\nRequest: question?", "params": {}, "created_at": 10_000, "trace": None}
    verdicts = moderate_input("question?").verdicts
    st = new_pending(rec, RouteDecision(pool, "m", "v1", None, "t"), 10_020, sanitized_prompt="question?",
                     input_verdicts=verdicts, limits=LIM)
    st = on_dispatch(st, 10_050, LIM).state
    res = {"request_id": "r9", "attempt": 1, "pool": pool, "status": "OK", "output_text": output_text,
           "artifact_uris": ["s3://rscf-artifacts/a.png"] if modality == "IMAGE" else [], "queue_ms": 100,
           "inference_ms": 700, "tokens_out": tokens, "retryable": True}
    return on_result(st, res, 11_000, None, LIM).state


def test_success_records():
    st = finished_success()
    out = moderate_output("The answer is 42.")
    content, audit = build_records(st, 11_005, "job-1.2.3", moderated_final(st, out))
    assert content["status"] == "SUCCEEDED" and content["output_text"] == "The answer is 42."
    assert content["latency"] == {"total_ms": 1_005, "pipeline_ms": 205, "queue_ms": 100, "inference_ms": 700}
    assert audit["prompt_sha256"] == hashlib.sha256(b"question?").hexdigest()
    assert audit["job_version"] == "job-1.2.3" and audit["attempts"] == 1
    stages = [v["stage"] for v in audit["verdicts"]]
    assert stages.count("INPUT") == 3 and stages.count("OUTPUT") == 2
    assert content["cost_units"] == pytest.approx(0.01 + 0.5 * 10 / 1000)
    assert (content["pool"], content["model_version"]) == ("text-small", "v1")


def test_records_carry_the_output_moderation():
    st = finished_success("to make a bomb you ...")
    content, audit = build_records(st, 11_005, "j", moderated_final(st, moderate_output("to make a bomb you ...")))
    assert (content["status"], content["reason"]) == ("REJECTED", "moderation:blocked_terms")
    assert content["output_text"] is None and content["cost_units"] == 0.0 and audit["status"] == "REJECTED"
    st = finished_success("mail me at a@b.org")
    content, _ = build_records(st, 11_005, "j", moderated_final(st, moderate_output("mail me at a@b.org")))
    assert content["status"] == "SUCCEEDED" and content["output_text"] == "mail me at [EMAIL]"


def test_early_rejection_and_costs():
    st = finished_early({"request_id": "q", "tenant_id": "t", "modality": "TEXT", "prompt": "x",
                         "created_at": 5}, "REJECTED", "quota_exceeded", 20)
    content, audit = build_records(st, 20, "j")
    assert content["pool"] is None and content["attempts"] == 0 and content["cost_units"] == 0.0
    assert content["latency"]["total_ms"] == 15 and audit["reason"] == "quota_exceeded"
    assert cost_units("image", "IMAGE", {"artifact_uris": ["a", "b"]}, "p") == pytest.approx(2.02)
    assert cost_units("speech", "AUDIO", {}, "x" * 150) == pytest.approx(0.01 + 0.05 * 10)
    assert cost_units("text-large", "TEXT", {"output_text": "one two three four five six seven eight nine ten"},
                      "p") == pytest.approx(0.02 + 2.0 * 13 / 1000)
    with pytest.raises(ValueError):
        build_records(replace(st, status=None), 20, "j")


def test_state_objects_pickle():
    st = finished_success()
    for obj in (st, TokenBucket(1.5, 10), CircuitBreaker().on_event("failure", 5)):
        assert pickle.loads(pickle.dumps(obj)) == obj


@pytest.mark.skipif(not (SCHEMAS / "content_result.avsc").exists(), reason="schemas not in this checkout")
def test_records_fit_the_avro_contracts():
    st = finished_success()
    content, audit = build_records(st, 11_005, "j", moderated_final(st, moderate_output("ok")))
    for name, record in (("content_result", content), ("audit_record", audit)):
        parsed = fastavro.schema.load_schema(str(SCHEMAS / f"{name}.avsc"))
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, record)
        buf.seek(0)
        back = fastavro.schemaless_reader(buf, parsed)
        assert back["request_id"] == "r9"


@pytest.mark.skipif(not (SCHEMAS / "inference_request.avsc").exists(), reason="schemas not in this checkout")
def test_inference_request_fits_the_contract():
    rec = {"request_id": "r1", "tenant_id": "t", "modality": "IMAGE", "priority": "HIGH", "prompt": "a cat",
           "params": {"width": 32, "height": 32, "steps": 50}, "created_at": 1, "trace": None}
    st = new_pending(rec, RouteDecision("image", "ddpm", "v1", None, "t"), 2, limits=LIM)
    request = inference_request(on_dispatch(st, 3, LIM).state)
    parsed = fastavro.schema.load_schema(str(SCHEMAS / "inference_request.avsc"))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, request)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, parsed)
    assert back["params"]["width"] == 32 and back["attempt"] == 1 and back["pool"] == "image"


def test_a_request_that_failed_on_object_storage_says_so():
    from operators import correlate
    from operators.audit import build_records

    state = correlate.finished_early({"request_id": "r", "tenant_id": "t", "prompt": "p"}, "FAILED",
                                     "error_after_3_attempts", 5)
    errors = [{"attempt": n, "error": "artifact_upload_failed: connection refused"} for n in (1, 2, 3)]
    state = correlate.evolve(state, history=errors, attempt=3)
    content, audit = build_records(state, 10, "v")
    (entry,) = content["degraded"]
    assert (entry["stage"], entry["outcome"], entry["dependency"]) == ("artifacts", "failed", "object_storage")
    assert audit["degraded"] == content["degraded"]
    ok = correlate.evolve(state, status="SUCCEEDED", reason=None, result={"output_text": "x"})
    assert build_records(ok, 10, "v")[0]["degraded"] == []  # a later attempt made it: nothing missing
