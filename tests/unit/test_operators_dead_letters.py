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
