"""The job's intake without Flink: decode, validate, republish under the right key."""

from __future__ import annotations

from datetime import datetime, timezone

from jobs import intake
from jobs.envelopes import Finished, PromptIn, Republish, ResultIn, SinkRecord
from tools.harness import prompt
from rscf.settings import SETTINGS
from schemas.serde import DecodeError


def _decode_ok(rec):
    return lambda data: dict(rec)


def _decode_bad(data):
    raise DecodeError("not_confluent_framed", "magic byte is 0x6e")


def _result(rid="r1"):
    return {"request_id": rid, "attempt": 1, "pool": "echo", "worker_id": "w", "model_name": "echo",
            "model_version": "1", "status": "OK", "output_text": "olleh", "artifact_uris": [],
            "content_type": None, "error": None, "retryable": True,
            "queue_ms": 3, "inference_ms": 2, "batch_size": 1, "tokens_out": None, "completed_at": 2_000}


def test_poison_bytes_become_a_dead_letter_with_source_position():
    out = intake.intake_prompt(b"nope", _decode_bad, "genai.prompts", 3, 42, 1_000)
    assert isinstance(out, SinkRecord) and out.role == "dlq"
    assert (out.record["reason"], out.record["source_partition"], out.record["source_offset"]) == ("not_confluent_framed", 3, 42)
    assert out.record["original"] == b"nope"


def test_invalid_prompt_is_a_rejected_final_not_a_dead_letter():
    rec = prompt("r1", "t", "x" * (SETTINGS.limits.max_prompt_chars + 1))
    out = intake.intake_prompt(b"..", _decode_ok(rec), "p", 0, 0, 1_000)
    assert isinstance(out, Finished)
    assert out.state.reason == "invalid:prompt_too_long"


def test_intake_turns_timestamps_into_millis_so_envelopes_pickle_cheaply():
    rec = prompt("r1", "t", "hello", created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc))
    out = intake.intake_prompt(b"..", _decode_ok(rec), "p", 0, 0, 1_000)
    assert out.record["created_at"] == 1767323045678
    res = dict(_result(), completed_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=timezone.utc))
    r = intake.intake_result(b"..", lambda data: dict(res), "r", 0, 0)
    assert r.record["completed_at"] == 1767323046000


def test_prompt_under_its_tenant_key_goes_on_and_under_another_key_is_republished():
    rec = prompt("r1", "acme", "hello")
    ok = intake.keyed_prompt("acme", b"raw", _decode_ok(rec), "p", 0, 7, 1_000)
    assert isinstance(ok, PromptIn)
    for wrong_key in ("r1", None, ""):
        out = intake.keyed_prompt(wrong_key, b"raw", _decode_ok(rec), "p", 0, 7, 1_000)
        assert out == Republish("prompt", "acme", b"raw")
    # What cannot reach the gate's state (poison, invalid) is decided whatever the key.
    dead = intake.keyed_prompt("acme", b"nope", _decode_bad, "p", 0, 8, 1_000)
    assert dead.role == "dlq"
    invalid = prompt("r2", "acme", "x" * (SETTINGS.limits.max_prompt_chars + 1))
    rejected = intake.keyed_prompt(None, b"..", _decode_ok(invalid), "p", 0, 9, 1_000)
    assert isinstance(rejected, Finished)


def test_result_under_another_key_is_republished_under_its_identity_key():
    with_tenant = lambda data: dict(_result(), tenant_id="acme")  # noqa: E731
    ok = intake.keyed_result("acme\x1fr1", b"raw", with_tenant, "r", 0, 0)
    assert isinstance(ok, ResultIn)
    out = intake.keyed_result("tenant-key", b"raw", with_tenant, "r", 0, 0)
    assert out == Republish("result", "acme\x1fr1", b"raw")
    # under the request_id alone: taken as it is (a request kept there by the version before, or a late one)
    assert isinstance(intake.keyed_result("r1", b"raw", with_tenant, "r", 0, 0), ResultIn)
    # a worker older than the tenant field: its key is the request_id alone, and so is its identity
    assert isinstance(intake.keyed_result("r1", b"raw", lambda data: dict(_result()), "r", 0, 0), ResultIn)
    assert intake.keyed_result("x", b"raw", lambda data: dict(_result()), "r", 0, 0) == Republish("result", "r1", b"raw")
    missing = intake.keyed_result(None, b"raw", lambda data: dict(_result(), request_id=""), "r", 0, 0)
    assert missing.role == "dlq" and missing.record["reason"] == "missing_field"


def test_a_result_with_no_request_under_its_identity_key_tries_the_request_id_alone_once():
    result = ResultIn(dict(_result(), tenant_id="acme"))
    assert intake.to_legacy_key("acme\x1fr1", result, b"raw") == Republish("result", "r1", b"raw")
    assert intake.to_legacy_key("r1", result, b"raw") is None  # no further trip: nothing loops
    assert intake.to_legacy_key("acme\x1fr1", ResultIn(_result()), b"raw") is None  # no tenant: late


def test_a_prompt_whose_template_store_is_down_fails_and_says_why():
    from operators.templates import TemplateStoreUnavailable

    class Down:
        def get(self, template_id):
            raise TemplateStoreUnavailable("ConnectionError: refused")

    rec = dict(prompt("r1", "t", "x"), template_id="greeting")
    out = intake.intake_prompt(b"..", _decode_ok(rec), "p", 1, 7, 1_000, templates=Down())
    assert isinstance(out, Finished) and (out.state.status, out.state.reason) == ("FAILED", "templates_unavailable")
    (d,) = out.state.degraded
    assert (d["stage"], d["outcome"], d["dependency"]) == ("templates", "failed", "redis") and out.state.source == (1, 7)
