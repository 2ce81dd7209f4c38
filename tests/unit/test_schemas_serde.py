"""TopicSerde without services: framing, schema resolution through an in-process registry, error reasons."""

from __future__ import annotations

import io
import json
import pickle
import struct
from datetime import datetime, timezone

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from schemas.serde import (
    AVRO_DECODE_FAILED,
    NOT_CONFLUENT_FRAMED,
    REGISTRY_UNAVAILABLE,
    UNKNOWN_SCHEMA_ID,
    DecodeError,
    LocalRegistry,
    TopicSerde,
    frame,
    load_schema,
    schema_id_of,
    serde_for,
)

TOPIC = "genai.prompts"


def prompt(**over):
    record = {
        "request_id": "req-1",
        "tenant_id": "acme",
        "modality": "TEXT",
        "prompt": "write a haiku",
        "params": {"max_tokens": 32, "temperature": 0.5, "top_p": None, "width": None, "height": None,
                   "steps": None, "seed": 7, "voice": None},
        "priority": "HIGH",
        "template_id": None,
        "template_vars": {},
        "metadata": {"k": "v"},
        "created_at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc),
        "trace": {"traceparent": "00-abc-def-01", "tracestate": None},
    }
    record.update(over)
    return record


@pytest.fixture
def registry():
    return LocalRegistry()


def test_encode_writes_confluent_wire_format(registry):
    serde = TopicSerde(TOPIC, client=registry)
    data = serde.encode(prompt())
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0
    assert schema_id == serde.writer_id
    assert registry.get_schema(schema_id).schema_str == json.dumps(load_schema("prompt_request"), separators=(",", ":"))
    # the body is exactly plain fastavro's output
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(load_schema("prompt_request")), prompt())
    assert data[5:] == buf.getvalue()


def test_round_trip_is_lossless(registry):
    serde = TopicSerde(TOPIC, client=registry)
    record = prompt()
    assert serde.decode(serde.encode(record)) == record


def test_writer_schema_is_registered_once_under_the_topic_subject(registry):
    calls = []
    original = registry.register_schema

    def counting(subject, schema, normalize_schemas=False):
        calls.append(subject)
        return original(subject, schema)

    registry.register_schema = counting
    serde = TopicSerde(TOPIC, client=registry)
    for i in range(5):
        serde.encode(prompt(request_id=str(i)))
    assert calls == ["genai.prompts-value"]


def test_lookup_only_mode_fails_when_schema_not_registered(registry):
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    with pytest.raises(SchemaRegistryError):
        TopicSerde(TOPIC, client=registry, auto_register=False).encode(prompt())
    TopicSerde(TOPIC, client=registry).encode(prompt())
    assert TopicSerde(TOPIC, client=registry, auto_register=False).encode(prompt())[:1] == b"\x00"


def test_older_writer_schema_decodes_with_current_reader(registry):
    """A producer on v0 (no trace, no metadata, no HIGH priority) is read with today's schema."""
    old = load_schema("prompt_request")
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("trace", "metadata")]
    prio = next(f for f in old["fields"] if f["name"] == "priority")
    prio["type"]["symbols"] = ["LOW", "NORMAL"]
    old_id = registry.register_schema("genai.prompts-value", Schema(json.dumps(old), "AVRO"))
    buf = io.BytesIO()
    v0 = {k: v for k, v in prompt(priority="LOW").items() if k not in ("trace", "metadata")}
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), v0)

    serde = TopicSerde(TOPIC, client=registry)
    record = serde.decode(frame(old_id, buf.getvalue()))
    assert record["metadata"] == {}  # filled from the reader's default
    assert record["trace"] is None
    assert record["priority"] == "LOW"
    assert record["prompt"] == "write a haiku"
    assert serde.writer_id != old_id


def test_newer_enum_symbol_reads_as_enum_default(registry):
    """A future writer adding modality VIDEO is read as UNKNOWN by today's consumers."""
    new = load_schema("prompt_request")
    mod = next(f for f in new["fields"] if f["name"] == "modality")
    mod["type"]["symbols"] = ["TEXT", "IMAGE", "AUDIO", "UNKNOWN", "VIDEO"]
    new_id = registry.register_schema("genai.prompts-value", Schema(json.dumps(new), "AVRO"))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(new), prompt(modality="VIDEO"))
    assert TopicSerde(TOPIC, client=registry).decode(frame(new_id, buf.getvalue()))["modality"] == "UNKNOWN"


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00", b"\x01\x00\x00\x00\x01abc", b'{"json": true}', None])
def test_unframed_values_are_not_confluent_framed(registry, data):
    with pytest.raises(DecodeError) as info:
        TopicSerde(TOPIC, client=registry).decode(data)
    assert info.value.reason == NOT_CONFLUENT_FRAMED


def test_unknown_schema_id(registry):
    serde = TopicSerde(TOPIC, client=registry)
    with pytest.raises(DecodeError) as info:
        serde.decode(frame(4242, b"\x02"))
    assert info.value.reason == UNKNOWN_SCHEMA_ID
    assert "4242" in info.value.detail


def test_unknown_schema_id_is_not_refetched_per_record(registry):
    serde = TopicSerde(TOPIC, client=registry)
    calls = []
    original = registry.get_schema
    registry.get_schema = lambda sid, *a, **k: (calls.append(sid), original(sid))[1]
    for _ in range(3):
        with pytest.raises(DecodeError):
            serde.decode(frame(99, b""))
    assert calls == [99]


def test_garbage_body_is_avro_decode_failed(registry):
    serde = TopicSerde(TOPIC, client=registry)
    good = serde.encode(prompt())
    for bad in (good[:20], good + b"\x00\x01", good[:5] + b"\xff" * 40):
        with pytest.raises(DecodeError) as info:
            serde.decode(bad)
        assert info.value.reason == AVRO_DECODE_FAILED, bad


def test_unreachable_registry_is_registry_unavailable():
    serde = TopicSerde(TOPIC, "http://127.0.0.1:9/apis/ccompat/v7")
    with pytest.raises(DecodeError) as info:
        serde.decode(frame(1, b"\x00"))
    assert info.value.reason == REGISTRY_UNAVAILABLE


def test_encode_rejects_a_record_that_breaks_the_schema(registry):
    serde = TopicSerde(TOPIC, client=registry)
    with pytest.raises((ValueError, TypeError, KeyError)):
        serde.encode(prompt(modality="VIDEO"))
    with pytest.raises((ValueError, TypeError, KeyError)):
        serde.encode({"request_id": "x"})


def test_decode_error_pickles_with_reason():
    err = pickle.loads(pickle.dumps(DecodeError(UNKNOWN_SCHEMA_ID, "id 7")))
    assert (err.reason, err.detail) == (UNKNOWN_SCHEMA_ID, "id 7")


def test_serde_pickles_without_network_and_keeps_working(registry):
    serde = TopicSerde(TOPIC, client=registry)
    data = serde.encode(prompt())
    clone = pickle.loads(pickle.dumps(serde))
    assert clone.decode(data) == prompt()
    # a serde on the real client pickles without the client (rebuilt lazily, nothing connects here)
    lazy = pickle.loads(pickle.dumps(TopicSerde("genai.content", "http://127.0.0.1:9/x")))
    assert lazy._client is None and lazy.schema_name == "content_result"


def test_serde_for_is_cached_per_topic():
    assert serde_for("genai.audit") is serde_for("genai.audit")
    assert serde_for("genai.audit") is not serde_for("genai.dlq")
    assert serde_for("genai.inference.requests.echo").schema_name == "inference_request"


def test_schema_id_of():
    assert schema_id_of(frame(70000, b"")) == 70000


def test_every_contract_round_trips(registry):
    """One realistic record per schema encodes and decodes unchanged."""
    ts = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    latency = {"total_ms": 900, "pipeline_ms": 40, "queue_ms": 60, "inference_ms": 800}
    verdict = {"stage": "OUTPUT", "check": "pii", "action": "REDACT", "score": 0.75, "reason": "email"}
    degraded = {"stage": "rag", "outcome": "skipped", "dependency": "embedding_service", "reason": "down"}
    params = prompt()["params"]
    samples = {
        "genai.inference.requests.image": {
            "request_id": "r", "attempt": 2, "tenant_id": "t", "pool": "image", "model_name": "unet",
            "model_version": "v3", "modality": "IMAGE", "prompt": "a red square", "params": params,
            "priority": "LOW", "deadline": ts, "created_at": ts, "trace": None},
        "genai.inference.results": {
            "request_id": "r", "tenant_id": "t", "attempt": 1, "pool": "image", "worker_id": "w-1", "model_name": "unet",
            "model_version": "v3", "status": "OK", "output_text": None,
            "artifact_uris": ["s3://rscf-artifacts/r.png"], "content_type": "image/png", "error": None,
            "retryable": True, "queue_ms": 5, "inference_ms": 700, "batch_size": 4, "tokens_out": None,
            "completed_at": ts},
        "genai.content": {
            "request_id": "r", "tenant_id": "t", "modality": "TEXT", "status": "REJECTED",
            "reason": "moderation:pii", "output_text": None, "artifact_uris": [], "model_name": None,
            "model_version": None, "pool": None, "attempts": 0, "verdicts": [verdict], "degraded": [degraded],
            "latency": latency,
            "cost_units": 0.0, "created_at": ts, "completed_at": ts},
        "genai.audit": {
            "request_id": "r", "tenant_id": "t", "status": "SUCCEEDED", "reason": None,
            "prompt_sha256": "ab" * 32, "model_name": "m", "model_version": "1", "pool": "echo",
            "verdicts": [verdict, dict(verdict, stage="INPUT", action="ALLOW")], "degraded": [], "attempts": 1,
            "latency": latency, "cost_units": 1.5, "recorded_at": ts, "job_version": "0.1.0"},
        "genai.dlq": {
            "original": b"\x00\xff\x10", "source_topic": "genai.prompts", "source_partition": 3,
            "source_offset": 12345678901, "stage": "decode", "reason": "avro_decode_failed",
            "error": "EOF", "request_id": None, "tenant_id": None, "original_size": 2_000_000,
            "payload_status": "claim_check", "payload_uri": "s3://rscf-audit/dead-letters/x.bin", "failed_at": ts},
        "genai.control": {
            "event_id": "e1", "issued_at": ts,
            "rollout": {"pool": "text-small", "model_name": "smollm", "weights": {"v1": 0.9, "v2": 0.1}},
            "tenant_policy": {"tenant_id": "t", "tier": "PREMIUM", "rate_per_s": 5.0, "burst": 10,
                              "features": ["rag"], "moderation_fail_closed": True},
            "breaker": {"pool": "image", "action": "FORCE_OPEN"}},
    }
    for topic, record in samples.items():
        serde = TopicSerde(topic, client=registry)
        assert serde.decode(serde.encode(record)) == record, topic
