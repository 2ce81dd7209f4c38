"""Backfill rows -> prompts: stable request ids, bad rows with reasons, result rows, progress."""

from __future__ import annotations

import json

import pytest

from operators import backfill as bf
from operators.backfill import BackfillSpec, BadInput, BadRow

SPEC = BackfillSpec("s3://rscf-backfill/catalogue/2026", "acme", "2", "LOW", "jsonl")
PATH = "s3://rscf-backfill/catalogue/2026/a.jsonl"


def test_spec_refuses_bad_input():
    for kwargs in ({"uri": "http://x/y"}, {"uri": "s3:///p"}, {"fmt": "csv"}, {"priority": "URGENT"},
                   {"tenant": ""}, {"tenant": "a\x1fb"}):
        args = {"uri": SPEC.uri, "tenant": "acme", "fmt": "jsonl", "priority": "LOW", **kwargs}
        with pytest.raises(BadInput):
            BackfillSpec(args["uri"], args["tenant"], None, args["priority"], args["fmt"])


def test_backfill_id_is_stable_and_names_what_it_reads():
    same = BackfillSpec(SPEC.uri, "acme", "2", "LOW", "jsonl")
    assert same.backfill_id == SPEC.backfill_id
    assert BackfillSpec(SPEC.uri, "acme", "3", "LOW", "jsonl").backfill_id != SPEC.backfill_id
    assert BackfillSpec(SPEC.uri, "other", "2", "LOW", "jsonl").backfill_id != SPEC.backfill_id
    assert SPEC.results_prefix == "catalogue/2026/_results/"
    assert BackfillSpec("s3://b", "t").results_prefix == "_results/"


def test_request_id_depends_on_file_and_row_only_and_parses_back():
    a = bf.request_id(SPEC.backfill_id, PATH, 7)
    assert a == bf.request_id(SPEC.backfill_id, PATH, 7)
    assert a != bf.request_id(SPEC.backfill_id, PATH, 8)
    assert a != bf.request_id(SPEC.backfill_id, PATH.replace("a.jsonl", "b.jsonl"), 7)
    assert bf.parse_request_id(a) == (SPEC.backfill_id, bf.file_tag(PATH), 7)
    assert bf.parse_request_id("client-uuid-1") is None


def test_input_files_skip_results_hidden_and_other_formats():
    keys = ["catalogue/2026/a.jsonl", "catalogue/2026/sub/b.jsonl", "catalogue/2026/_results/part-00001.parquet",
            "catalogue/2026/_results/dead-letters/part-x", "catalogue/2026/.tmp.jsonl", "catalogue/2026/c.parquet"]
    assert bf.input_files(keys + ["catalogue/2026x.jsonl"], SPEC) == ["catalogue/2026/a.jsonl"]


def test_a_row_becomes_a_valid_prompt_under_the_contract():
    row = {"prompt": "Describe a red chair", "params": {"max_tokens": 32}, "id": "sku-1", "category": "chairs"}
    out = bf.to_prompt(row, PATH, 3, SPEC, 1_000)
    assert not isinstance(out, BadRow)
    assert out["request_id"] == bf.request_id(SPEC.backfill_id, PATH, 3)
    assert (out["tenant_id"], out["priority"], out["modality"]) == ("acme", "LOW", "TEXT")
    assert out["params"]["max_tokens"] == 32 and set(out["params"]) == set(bf.PARAM_NAMES)
    assert out["metadata"]["source_id"] == "sku-1" and out["metadata"]["category"] == "chairs"
    assert out["metadata"]["backfill_row"] == "3" and out["metadata"]["backfill_file"] == PATH
    from schemas.serde import TopicSerde  # noqa: F401 - the contract's own check is the Avro encode below
    import fastavro

    schema = fastavro.parse_schema(json.load(open(bf.__file__.replace("operators/backfill.py",
                                                                      "schemas/prompt_request.avsc"))))
    import io

    fastavro.schemaless_writer(io.BytesIO(), schema, out)  # raises on any contract violation


@pytest.mark.parametrize("line,reason", [
    ("{not json", "unparseable"),
    ("[1, 2]", "schema_mismatch"),
    ('{"text": "no prompt"}', "missing_field"),
    ('{"prompt": 42}', "schema_mismatch"),
    ('{"prompt": "x", "params": "hot"}', "schema_mismatch"),
    ('{"prompt": "x", "metadata": [1]}', "schema_mismatch"),
    (json.dumps({"prompt": "x" * 5000}), "oversize"),
    ('{"prompt": "x", "modality": "VIDEO"}', "invalid:unknown_modality"),
    ('{"prompt": "x", "params": {"max_tokens": 100000}}', "invalid:param_out_of_range"),
    ('{"prompt": "   "}', "invalid:empty_prompt"),
])
def test_bad_rows_get_a_reason_with_file_and_row(line, reason):
    parsed = bf.parse_line(line, PATH, 12)
    out = parsed if isinstance(parsed, BadRow) else bf.to_prompt(parsed, PATH, 12, SPEC, 0)
    assert isinstance(out, BadRow), out
    assert (out.reason, out.path, out.row) == (reason, PATH, 12)
    assert out.detail


def test_an_oversize_line_is_refused_before_parsing():
    out = bf.parse_line("x" * (bf.MAX_ROW_BYTES + 1), PATH, 1)
    assert isinstance(out, BadRow) and out.reason == "oversize"


def test_result_row_of_a_final():
    rid = bf.request_id(SPEC.backfill_id, PATH, 5)
    final = {"request_id": rid, "tenant_id": "acme", "status": "SUCCEEDED", "reason": None, "output_text": "hi",
             "artifact_uris": [], "model_name": "echo", "model_version": "1", "pool": "echo", "cost_units": 0.5,
             "completed_at": 123}
    row = bf.result_row(final, {bf.file_tag(PATH): PATH})
    assert row["file"] == PATH and row["row"] == 5 and row["status"] == "SUCCEEDED" and row["cost_units"] == 0.5
    assert set(row) == set(bf.RESULT_COLUMNS)
    assert bf.result_row({**final, "request_id": "live-1"}, {}) is None


def test_manifest_round_trip_and_progress():
    m = bf.Manifest(spec=SPEC.to_dict(), rows_total=10, counts={"SUCCEEDED": 4, "DEAD_LETTER": 1})
    assert bf.Manifest.from_json(m.to_json()) == m
    p = bf.progress(10, 4, 1, 5.0)
    assert p["done"] == 5 and p["fraction"] == 0.5 and p["eta_s"] == 1.0
    assert bf.progress(10, 0, 0, 0.0)["eta_s"] is None


def test_done_ranges_compact_and_membership():
    ids = [bf.request_id(SPEC.backfill_id, PATH, n) for n in (1, 2, 3, 7, 9, 10)] + ["live-1",
           bf.request_id("otherbackfil", PATH, 4)]
    ranges = bf.done_ranges(ids, SPEC.backfill_id)
    assert ranges == {bf.file_tag(PATH): [[1, 3], [7, 7], [9, 10]]}
    tag = bf.file_tag(PATH)
    assert [n for n in range(0, 12) if bf.in_ranges(ranges[tag], n)] == [1, 2, 3, 7, 9, 10]
    assert not bf.in_ranges(None, 1)

