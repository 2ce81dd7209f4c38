"""Dead letters are valid DeadLetter records and are counted by stage and reason."""

from __future__ import annotations

from prometheus_client import REGISTRY

from operators.dead_letters import MAX_ERROR_CHARS, dead_letter
from schemas.serde import LocalRegistry, TopicSerde


def _count(stage: str, reason: str) -> float:
    return REGISTRY.get_sample_value("rscf_dead_letters_total", {"stage": stage, "reason": reason}) or 0.0


def test_dead_letter_record_round_trips_and_counts():
    before = _count("decode", "unknown_schema_id")
    record = dead_letter(
        memoryview(b"\x00\x00\x00\x10\x00junk"),
        stage="decode",
        reason="unknown_schema_id",
        error="schema id 4096 is not in the registry",
        source_topic="genai.prompts",
        source_partition=2,
        source_offset=77,
    )
    assert _count("decode", "unknown_schema_id") == before + 1
    assert record["original"] == b"\x00\x00\x00\x10\x00junk" and isinstance(record["original"], bytes)
    assert record["request_id"] is None and record["failed_at"].tzinfo is not None
    serde = TopicSerde("genai.dlq", client=LocalRegistry())
    assert serde.decode(serde.encode(record)) == record


def test_long_errors_are_truncated_and_none_original_is_empty():
    record = dead_letter(
        None, stage="validate", reason="invalid_field", error="x" * 10_000,
        source_topic="t", source_partition=-1, source_offset=-1, request_id="r-1",
    )
    assert len(record["error"]) == MAX_ERROR_CHARS and record["error"].endswith("[truncated]")
    assert record["original"] == b"" and record["request_id"] == "r-1"
    assert _count("validate", "invalid_field") >= 1


class Store:
    def __init__(self, fail=False):
        self.objects, self.fail = {}, fail

    def put(self, key, data):
        if self.fail:
            raise ConnectionError("connection refused")
        self.objects[key] = data
        return f"s3://rscf-audit/{key}"


def _big():
    return dead_letter(b"\x07" * 1_200_000, stage="decode", reason="not_confluent_framed", error="magic byte 0x07",
                       source_topic="genai.prompts", source_partition=1, source_offset=42)


def test_a_payload_too_large_is_kept_by_claim_check_with_a_preview():
    from operators.dead_letters import PREVIEW_BYTES, with_claim_check

    store = Store()
    checked = with_claim_check(_big(), store)
    (key, kept), = store.objects.items()
    assert kept == b"\x07" * 1_200_000 and checked["payload_uri"] == f"s3://rscf-audit/{key}"
    assert key.startswith("dead-letters/") and key.endswith(".bin") and "genai.prompts-1-42-" in key
    assert checked["original"] == b"\x07" * PREVIEW_BYTES and checked["original_size"] == 1_200_000
    assert checked["payload_status"] == "claim_check" and checked["error"] == "magic byte 0x07"
    serde = TopicSerde("genai.dlq", client=LocalRegistry())
    assert len(serde.encode(checked)) < 10_000 and serde.decode(serde.encode(checked)) == checked
    with_claim_check(_big(), store)
    assert len(store.objects) == 1  # the same input dead again lands on the same object


def test_with_object_storage_down_the_dead_letter_still_goes_out_and_says_so():
    from operators.dead_letters import with_claim_check

    for store in (Store(fail=True), None):
        checked = with_claim_check(_big(), store)
        assert checked["payload_status"] == "not_kept" and checked["payload_uri"] is None
        assert checked["original_size"] == 1_200_000 and len(checked["original"]) == 4096
        assert checked["error"].startswith("magic byte 0x07 [payload of 1200000 bytes not kept")
        assert len(checked["error"]) <= MAX_ERROR_CHARS


def test_records_are_cut_to_fit_longest_strings_first():
    from operators.record_size import RecordTooLarge, too_large, truncate_to_fit, with_reason

    import json

    def encode(r):
        return json.dumps(r).encode()

    record = {"reason": None, "output_text": "x" * 50_000, "verdicts": [{"reason": "y" * 300}], "n": 1}
    small, value, cut = truncate_to_fit(with_reason(record), encode, key_bytes=10, limit=5_000)
    assert len(value) + 10 <= 5_000 and cut == ["output_text"] and small["reason"] == "record_truncated"
    assert small["output_text"].endswith(" ...[truncated]") and small["verdicts"] == record["verdicts"]
    assert record["output_text"] == "x" * 50_000  # the original is left alone
    assert with_reason({"reason": "moderation:pii"})["reason"] == "moderation:pii; record_truncated"
    assert too_large(b"k", b"v" * 10, limit=10) and not too_large(None, b"v" * 10, limit=10)
    import pytest

    with pytest.raises(RecordTooLarge):
        truncate_to_fit({"ids": list(range(5_000))}, encode, limit=1_000)
