"""`rscf submit|produce|results` without services: bad input, human output, JSON output."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from cli.commands.prompts import dumps, human_line
from cli.main import EXIT_BAD_INPUT, main


def test_submit_rejects_bad_input_before_touching_kafka(capsys):
    rc = main(["submit", "--tenant", "t", "--modality", "text", "--var", "novalue", "hi",
               "--bootstrap", "127.0.0.1:9"])
    assert rc == EXIT_BAD_INPUT
    assert "invalid request" in capsys.readouterr().err


def test_produce_missing_file_is_bad_input(tmp_path):
    assert main(["produce", str(tmp_path / "nope.jsonl")]) == EXIT_BAD_INPUT


def test_human_line_for_content_and_dead_letters():
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    content = {
        "request_id": "r1", "tenant_id": "acme", "modality": "TEXT", "status": "SUCCEEDED", "reason": None,
        "output_text": "Hello\nworld", "artifact_uris": [], "model_name": "smol", "model_version": "v2",
        "pool": "text-small", "attempts": 1, "verdicts": [],
        "latency": {"total_ms": 120, "pipeline_ms": 10, "queue_ms": 5, "inference_ms": 105},
        "cost_units": 3.0, "created_at": ts, "completed_at": ts,
    }
    line = human_line("genai.content", content)
    assert line.startswith("r1 SUCCEEDED tenant=acme model=smol@v2 pool=text-small attempts=1 total_ms=120")
    assert line.endswith("| Hello world")
    rejected = human_line("genai.content", dict(content, status="REJECTED", reason="quota_exceeded",
                                                output_text=None, model_name=None))
    assert "REJECTED reason=quota_exceeded" in rejected and "model=-" in rejected
    dead = human_line("genai.dlq", {
        "original": b"\x01", "source_topic": "genai.prompts", "source_partition": 1, "source_offset": 9,
        "stage": "decode", "reason": "not_confluent_framed", "error": "magic", "request_id": None, "failed_at": ts,
    })
    assert "DEAD stage=decode reason=not_confluent_framed from genai.prompts[1]@9" in dead


def test_json_output_handles_timestamps_and_bytes():
    out = json.loads(dumps({"t": datetime(2026, 1, 1, tzinfo=timezone.utc), "b": b"\x00\xff"}))
    assert out == {"t": "2026-01-01T00:00:00+00:00", "b": "AP8="}


def test_results_filters_by_tenant_too():
    """Request ids are unique per tenant only: `rscf results --request-id R --tenant T` names one request."""
    from cli.main import build_parser

    args = build_parser().parse_args(["results", "--request-id", "r1", "--tenant", "acme"])
    assert (args.request_id, args.tenant) == ("r1", "acme")
