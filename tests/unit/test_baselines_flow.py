"""The baselines run the job's own steps in one process: same finals, same retries, same refusals."""

from __future__ import annotations

import time

from baselines.flow import InProcessFlow
from baselines.model_host import ModelHost
from baselines.servers import in_process
from inference_workers.handlers import EchoHandler
from operators.admit import TenantPolicy
from tools.harness import prompt

POLICY = {"t": TenantPolicy("t", rate_per_s=1000, burst=1000, features=frozenset({"echo"}))}


def test_a_prompt_is_answered_by_the_in_process_model_and_a_resent_id_is_refused():
    host = ModelHost("echo", EchoHandler(), max_wait_ms=1)
    try:
        flow = InProcessFlow(POLICY)
        first = flow.run(prompt("r1", "t", "hello"), in_process({"echo": host}))
        assert first.status == "SUCCEEDED" and first.content["output_text"] == "olleh"
        again = flow.run(prompt("r1", "t", "hello"), in_process({"echo": host}))
        assert again.status == "REJECTED" and again.content["reason"] == "duplicate_request_id"
    finally:
        host.stop()


def test_invalid_prompt_is_rejected_with_the_validators_reason():
    bad = prompt("r2", "t", "hi", modality="SMELL")
    answer = InProcessFlow(POLICY).run(bad, lambda _r, _t: {})
    assert answer.status == "REJECTED" and answer.content["reason"].startswith("invalid:")


def test_an_unreachable_model_is_retried_by_the_jobs_policy_then_failed():
    calls = []

    def down(request, _timeout_s):
        calls.append(request["attempt"])
        raise ConnectionError("refused")

    answer = InProcessFlow(POLICY).run(prompt("r3", "t", "hello"), down)
    assert answer.status == "FAILED" and calls == [1, 2, 3]


def test_a_model_that_answers_after_a_failure_succeeds_on_the_retry():
    calls = []

    def flaky(request, timeout_s):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ConnectionError("refused")
        return {**_ok(request)}

    answer = InProcessFlow(POLICY).run(prompt("r4", "t", "hello"), flaky)
    assert answer.status == "SUCCEEDED" and len(calls) == 2
    assert calls[1] - calls[0] >= 0.1  # the job's back-off, not an immediate retry


def _ok(request: dict) -> dict:
    from baselines.flow import model_error

    return {**model_error(request, ""), "status": "OK", "error": None, "output_text": "fine"}
