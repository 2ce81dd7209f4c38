"""JSONL/CSV prompt files -> PromptRequest records, with line-numbered errors."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from schemas.prompt_input import InvalidPrompt, LineError, parse_csv, parse_file, parse_jsonl, prompt_request


def test_defaults_are_filled():
    before = datetime.now(timezone.utc)
    rec = prompt_request({"tenant_id": "acme", "prompt": "hello", "modality": "text"})
    uuid.UUID(rec["request_id"])  # a uuid4 is generated
    assert rec["modality"] == "TEXT"
    assert rec["priority"] == "NORMAL"
    assert rec["params"] == dict.fromkeys(
        ["max_tokens", "temperature", "top_p", "width", "height", "steps", "seed", "voice"])
    assert rec["template_vars"] == {} and rec["metadata"] == {} and rec["trace"] is None
    assert before.replace(microsecond=0) <= rec["created_at"] <= datetime.now(timezone.utc)
    assert rec["created_at"].microsecond % 1000 == 0


def test_lenient_forms():
    rec = prompt_request({
        "tenant": "acme", "prompt": "a cat", "modality": "Image", "priority": "high",
        "width": 64, "params": {"height": 64, "steps": 20.0}, "created_at": "2026-01-01T00:00:00Z",
        "trace": "00-aa-bb-01", "template_vars": {"n": 3},
    })
    assert rec["tenant_id"] == "acme" and rec["modality"] == "IMAGE" and rec["priority"] == "HIGH"
    assert (rec["params"]["width"], rec["params"]["height"], rec["params"]["steps"]) == (64, 64, 20)
    assert rec["created_at"] == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert rec["trace"] == {"traceparent": "00-aa-bb-01", "tracestate": None}
    assert rec["template_vars"] == {"n": "3"}
    assert prompt_request({"tenant_id": "t", "prompt": "p", "created_at": 0 + 1000})["created_at"].year == 1970


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ({"prompt": "x"}, "tenant_id"),
        ({"tenant_id": "t"}, "prompt"),
        ({"tenant_id": "t", "prompt": "x", "modality": "video"}, "modality"),
        ({"tenant_id": "t", "prompt": "x", "priority": "urgent"}, "priority"),
        ({"tenant_id": "t", "prompt": "x", "max_tokens": "many"}, "params.max_tokens"),
        ({"tenant_id": "t", "prompt": "x", "max_tokens": True}, "params.max_tokens"),
        ({"tenant_id": "t", "prompt": "x", "temperature": "hot"}, "params.temperature"),
        ({"tenant_id": "t", "prompt": "x", "promt": "typo"}, "unknown field(s): promt"),
        ({"tenant_id": "t", "prompt": "x", "params": {"size": 3}}, "params.size"),
        ({"tenant_id": "t", "prompt": "x", "created_at": "yesterday"}, "created_at"),
        ({"tenant_id": "t", "prompt": "x", "metadata": {"a": {"b": 1}}}, "metadata.a"),
        ({"tenant_id": "t", "prompt": "x", "max_tokens": 2**40}, "PromptRequest schema"),
    ],
)
def test_invalid_records_say_why(obj, fragment):
    with pytest.raises(InvalidPrompt) as info:
        prompt_request(obj)
    assert fragment in str(info.value)


def test_jsonl_reports_bad_lines_with_numbers_and_keeps_the_rest():
    text = "\n".join([
        '{"tenant_id": "a", "prompt": "one", "modality": "text"}',
        "",
        '{"tenant_id": "a", "prompt": "two", "modality": "TEXT"',
        '{"tenant_id": "a", "prompt": "three", "modality": "smell"}',
        '["not", "an", "object"]',
        '{"tenant_id": "a", "prompt": "six", "request_id": "fixed-6"}',
    ])
    items = list(parse_jsonl(text.splitlines()))
    good = [(n, r["prompt"]) for n, r in items if not isinstance(r, LineError)]
    bad = [(n, r.reason) for n, r in items if isinstance(r, LineError)]
    assert good == [(1, "one"), (6, "six")]
    assert [n for n, _ in bad] == [3, 4, 5]
    assert bad[0][1].startswith("invalid JSON")
    assert "modality" in bad[1][1]
    assert "expected a JSON object" in bad[2][1]
    assert str(items[1][1]).startswith("line 3: ")
    assert items[-1][1]["request_id"] == "fixed-6"


def test_csv_columns_params_vars_and_line_numbers():
    text = (
        "tenant_id,modality,prompt,max_tokens,width,var.topic,meta.src\n"
        'acme,text,"hello, world",16,,boots,cli\n'
        "acme,image,a square,,abc,,\n"
        'acme,audio,"two\nlines",,,,\n'
        "acme,text\n"
        "acme,text,x,1,,,,extra\n"
    )
    items = list(parse_csv(text))
    first = items[0][1]
    assert items[0][0] == 2 and first["prompt"] == "hello, world"
    assert first["params"]["max_tokens"] == 16 and first["params"]["width"] is None
    assert first["template_vars"] == {"topic": "boots"} and first["metadata"] == {"src": "cli"}
    assert isinstance(items[1][1], LineError) and items[1][0] == 3 and "width" in items[1][1].reason
    assert items[2][0] == 5 and items[2][1]["prompt"] == "two\nlines" and items[2][1]["modality"] == "AUDIO"
    assert isinstance(items[3][1], LineError) and items[3][0] == 6 and "missing cell" in items[3][1].reason
    assert isinstance(items[4][1], LineError) and items[4][0] == 7 and "more cell" in items[4][1].reason


def test_parse_file_dispatches_on_suffix():
    assert isinstance(next(iter(parse_file("x.CSV", ["tenant_id,prompt\n", "t,p\n"])))[1], dict)
    assert isinstance(next(iter(parse_file("x.jsonl", ['{"tenant_id":"t","prompt":"p"}'])))[1], dict)
