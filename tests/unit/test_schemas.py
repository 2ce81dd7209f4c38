"""The .avsc contracts themselves: complete, documented, evolvable, and shared types kept identical."""

from __future__ import annotations

import json

import fastavro
import pytest

from rscf.settings import POOLS, SETTINGS
from schemas.serde import SCHEMA_DIR, SCHEMA_NAMES, TOPIC_SCHEMAS, load_schema, schema_for_topic

NAMED = ("record", "enum", "fixed")


def _named_definitions(schema: dict) -> dict[str, dict]:
    """Every named type defined in a schema, with nested references expanded to full definitions."""
    defs: dict[str, dict] = {}

    def walk(node, ns):
        if isinstance(node, list):
            return [walk(n, ns) for n in node]
        if isinstance(node, str):
            full = node if "." in node else f"{ns}.{node}"
            return defs.get(full, node)
        if node.get("type") in NAMED:
            namespace = node.get("namespace", ns)
            full = f"{namespace}.{node['name']}"
            out = dict(node)
            if node["type"] == "record":
                out["fields"] = [dict(f, type=walk(f["type"], namespace)) for f in node["fields"]]
            defs[full] = out
            return out
        out = dict(node)
        for key in ("items", "values"):
            if key in out:
                out[key] = walk(out[key], ns)
        if isinstance(out.get("type"), (dict, list)):
            out["type"] = walk(out["type"], ns)
        return out

    walk(schema, schema.get("namespace", ""))
    return defs


def test_every_schema_file_is_listed_and_parses():
    on_disk = sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc"))
    assert on_disk == sorted(SCHEMA_NAMES)
    for name in SCHEMA_NAMES:
        schema = load_schema(name)
        assert schema["namespace"] == "io.rscf"
        fastavro.parse_schema(schema)


def test_every_field_and_named_type_has_a_doc():
    missing = []
    for name in SCHEMA_NAMES:
        for full, definition in _named_definitions(load_schema(name)).items():
            if not definition.get("doc"):
                missing.append(f"{name}: {full}")
            for field in definition.get("fields", []):
                if not field.get("doc"):
                    missing.append(f"{name}: {full}.{field['name']}")
    assert missing == []


def test_every_enum_has_a_default_so_it_can_grow():
    for name in SCHEMA_NAMES:
        for full, definition in _named_definitions(load_schema(name)).items():
            if definition["type"] == "enum":
                assert definition.get("default") in definition["symbols"], f"{name}: {full}"


def test_shared_named_types_are_identical_in_every_file():
    seen: dict[str, tuple[str, str]] = {}
    shared = set()
    for name in SCHEMA_NAMES:
        for full, definition in _named_definitions(load_schema(name)).items():
            text = json.dumps(definition, sort_keys=True)
            if full in seen:
                shared.add(full)
                assert text == seen[full][1], f"{full} differs between {seen[full][0]} and {name}"
            else:
                seen[full] = (name, text)
    # the types the brief names as shared really are shared
    assert {"io.rscf.Modality", "io.rscf.GenerationParams", "io.rscf.Priority", "io.rscf.TraceContext",
            "io.rscf.ModerationVerdict", "io.rscf.LatencyBreakdown", "io.rscf.ContentStatus"} <= shared


def test_timestamps_use_the_timestamp_millis_logical_type():
    expected = {
        "prompt_request": {"created_at"},
        "inference_request": {"deadline", "created_at"},
        "inference_result": {"completed_at"},
        "content_result": {"created_at", "completed_at"},
        "audit_record": {"recorded_at"},
        "dead_letter": {"failed_at"},
        "control_event": {"issued_at"},
    }
    for name, fields in expected.items():
        by_name = {f["name"]: f for f in load_schema(name)["fields"]}
        for field in fields:
            assert by_name[field]["type"] == {"type": "long", "logicalType": "timestamp-millis"}, (name, field)


def test_nullable_fields_default_to_null():
    for name in SCHEMA_NAMES:
        for full, definition in _named_definitions(load_schema(name)).items():
            for field in definition.get("fields", []):
                if isinstance(field["type"], list) and field["type"][0] == "null":
                    assert "default" in field and field["default"] is None, f"{full}.{field['name']}"


def test_topics_map_to_schemas():
    t = SETTINGS.topics
    assert TOPIC_SCHEMAS[t.prompts] == "prompt_request"
    assert TOPIC_SCHEMAS[t.content] == "content_result"
    assert TOPIC_SCHEMAS[t.results] == "inference_result"
    assert TOPIC_SCHEMAS[t.audit] == "audit_record"
    assert TOPIC_SCHEMAS[t.dlq] == "dead_letter"
    assert TOPIC_SCHEMAS[t.control] == "control_event"
    for pool in POOLS:
        assert TOPIC_SCHEMAS[t.requests(pool)] == "inference_request"
    assert schema_for_topic(t.requests("some-new-pool")) == "inference_request"
    with pytest.raises(KeyError):
        schema_for_topic("not.a.rscf.topic")


def test_load_schema_returns_a_fresh_copy():
    first = load_schema("dead_letter")
    first["fields"].clear()
    assert load_schema("dead_letter")["fields"]


def test_record_defaults_let_a_producer_omit_optional_fields():
    """A minimal PromptRequest (only required fields) encodes and reads back with defaults."""
    import io
    from datetime import datetime, timezone

    parsed = fastavro.parse_schema(load_schema("prompt_request"))
    minimal = {"request_id": "r1", "tenant_id": "t", "prompt": "hi", "created_at": 1_700_000_000_000}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, minimal)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, parsed, None)
    assert back["modality"] == "UNKNOWN"
    assert back["priority"] == "NORMAL"
    assert back["params"]["max_tokens"] is None
    assert back["template_vars"] == {} and back["trace"] is None
    assert back["created_at"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)


def _sample(schema):
    """A valid value of an Avro type (the simplest one)."""
    if isinstance(schema, list):
        return None if "null" in schema else _sample(schema[0])
    if isinstance(schema, dict):
        kind = schema["type"]
        if kind == "record":
            return {f["name"]: _sample(f["type"]) for f in schema["fields"]}
        if kind == "enum":
            return schema["symbols"][0]
        if kind == "array":
            return []
        if kind == "map":
            return {}
        return _sample(kind)
    return {"string": "x", "int": 1, "long": 1, "boolean": True, "float": 1.0, "double": 1.0, "bytes": b"x"}[schema]


def test_fields_added_by_issue_13_read_records_written_without_them():
    """BACKWARD: a reader on the new contracts reads what producers of the version before wrote, with the
    defaults (the registry checks the same against its latest versions: tests/integration/test_contracts.py)."""
    import io

    import fastavro

    added = {
        "inference_result": {"tenant_id": ""},
        "content_result": {"degraded": []},
        "audit_record": {"degraded": []},
        "dead_letter": {"tenant_id": None, "original_size": None, "payload_status": "inline", "payload_uri": None},
    }
    for name, defaults in added.items():
        new = load_schema(name)
        old = dict(new, fields=[f for f in new["fields"] if f["name"] not in defaults])
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(old), _sample(old))
        buf.seek(0)
        read = fastavro.schemaless_reader(buf, fastavro.parse_schema(old), fastavro.parse_schema(new))
        assert {k: read[k] for k in defaults} == defaults, name
    control = load_schema("control_event")
    policy = next(f for f in control["fields"] if f["name"] == "tenant_policy")["type"][1]
    old_policy = dict(policy, fields=[f for f in policy["fields"] if f["name"] != "moderation_fail_closed"])
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old_policy), _sample(old_policy))
    buf.seek(0)
    read = fastavro.schemaless_reader(buf, fastavro.parse_schema(old_policy), fastavro.parse_schema(policy))
    assert read["moderation_fail_closed"] is None
