"""Worker intake (inference_workers/intake.py): a record becomes a request, or is answered at once."""

from __future__ import annotations

import pytest

from inference_workers.intake import Intake
from inference_workers.metrics import WorkerMetrics
from inference_workers.results import ResultBuilder
from rscf.settings import SETTINGS
from schemas.serde import DecodeError
from tests.helpers.worker_fakes import Msg, ScriptedHandler, make_request, serdes


class Recorder:
    def __init__(self) -> None:
        self.answers: list[tuple[dict, tuple, dict]] = []
        self.sent = []

    def answer(self, request, meta, result) -> None:
        self.answers.append((request, meta, result))

    def send(self, out) -> None:
        self.sent.append(out)


@pytest.fixture()
def parts():
    s = serdes()
    metrics = WorkerMetrics("echo", "unit")
    rec = Recorder()
    intake = Intake(s["request_serde"], s["dlq_serde"], SETTINGS.topics.dlq, ResultBuilder("echo", "w", ScriptedHandler()),
                    metrics, registry_retry_max_s=1.0, answer=rec.answer, send=rec.send)
    return intake, rec, s, metrics


def test_a_good_record_is_decoded(parts) -> None:
    intake, rec, s, _ = parts
    req = make_request("r1", "hello")
    got = intake.decode(Msg(s["request_serde"].encode(req), b"r1"))
    assert got["request_id"] == "r1" and got["prompt"] == "hello"
    assert not rec.answers and not rec.sent


def test_undecodable_with_key_gets_error_result_without_key_goes_to_dlq(parts) -> None:
    intake, rec, s, metrics = parts
    assert intake.decode(Msg(b"\x07garbage", b"acme\x1freq-42", offset=3)) is None
    assert intake.decode(Msg(b"\x00\x00\x00\x00\x01\xff\xff", None, offset=4)) is None
    (stub, meta, res), = rec.answers
    assert stub == {"request_id": "req-42", "tenant_id": "acme", "attempt": 0}
    assert meta == ("genai.inference.requests.echo", 0, 3) and res["tenant_id"] == "acme"
    assert res["status"] == "ERROR" and res["error"].startswith("decode_failed: not_confluent_framed")
    assert res["retryable"] is False
    (out,) = rec.sent
    dl = s["dlq_serde"].decode(out.value)
    assert out.topic == SETTINGS.topics.dlq and out.offsets == [("genai.inference.requests.echo", 0, 4)]
    assert dl["stage"] == "decode" and dl["source_offset"] == 4
    assert dl["original"] == b"\x00\x00\x00\x00\x01\xff\xff" and dl["request_id"] is None
    assert metrics.errors.labels("echo", "dead_letter")._value.get() == 1


class FlakyRegistrySerde:
    """Raises registry_unavailable ``outage`` times, then decodes."""

    def __init__(self, outage: int) -> None:
        self.outage = outage

    def decode(self, value: bytes) -> dict:
        if self.outage:
            self.outage -= 1
            raise DecodeError("registry_unavailable", "connection refused")
        return {"request_id": value.decode()}


def test_a_registry_outage_is_waited_out_and_counted_once(parts, monkeypatch) -> None:
    intake, rec, _, metrics = parts
    monkeypatch.setattr("inference_workers.intake.time.sleep", lambda _s: None)
    intake.request_serde = FlakyRegistrySerde(outage=3)
    assert intake.decode(Msg(b"r9", b"r9")) == {"request_id": "r9"}
    assert metrics.outages.labels("echo", "registry")._value.get() == 1 and not rec.answers


def test_a_registry_outage_past_its_budget_is_a_retryable_answer(parts, monkeypatch) -> None:
    intake, rec, _, _ = parts
    intake.registry_retry_max_s = 0.0
    intake.request_serde = FlakyRegistrySerde(outage=100)
    assert intake.decode(Msg(b"r9", b"r9")) is None
    (_, _, res), = rec.answers
    assert res["error"].startswith("decode_failed: registry_unavailable") and res["retryable"] is True


def test_an_undecodable_request_under_a_key_of_the_version_before_is_answered_under_it(parts) -> None:
    """A request the job wrote before identity keys (the request_id alone): answered under that key."""
    from inference_workers.results import result_key

    intake, rec, _, _ = parts
    assert intake.decode(Msg(b"\x07garbage", b"req-7", offset=5)) is None
    (stub, _, res), = rec.answers
    assert stub == {"request_id": "req-7", "tenant_id": "", "attempt": 0} and result_key(res) == b"req-7"
    assert intake.decode(Msg(b"\x07garbage", b"\xff\xfe", offset=6)) is None  # no usable key: a dead letter
    assert len(rec.answers) == 1 and len(rec.sent) == 1


def test_an_undecodable_request_too_large_for_a_dead_letter_is_claim_checked(parts) -> None:
    intake, rec, s, _ = parts
    kept = {}

    class Store:
        def put(self, key, data):
            kept[key] = data
            return f"s3://rscf-audit/{key}"

    intake.payload_store = Store
    poison = b"\x07" * 1_000_000
    assert intake.decode(Msg(poison, None, offset=8)) is None
    (out,) = rec.sent
    dl = s["dlq_serde"].decode(out.value)
    assert len(out.value) < 10_000 and dl["payload_status"] == "claim_check" and dl["original_size"] == len(poison)
    assert kept[dl["payload_uri"].removeprefix("s3://rscf-audit/")] == poison
