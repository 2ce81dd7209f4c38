"""The pipeline benchmark's verdicts on a run's finals (pure functions, no stack)."""

from __future__ import annotations

from tools.pipeline_bench import degraded_by_step, failures_by_reason


def _final(status: str = "SUCCEEDED", reason: str | None = None, degraded=()) -> dict:
    return {"status": status, "reason": reason, "degraded": [
        {"stage": stage, "outcome": outcome, "dependency": "embedding_service", "reason": "timed out"}
        for stage, outcome in degraded]}


def test_a_final_that_skipped_a_check_is_counted_by_step_so_a_run_cannot_pass_as_the_full_path() -> None:
    finals = [_final(), _final(degraded=[("output_classifier", "skipped")]),
              _final(degraded=[("input_classifier", "skipped"), ("rag", "skipped")]),
              _final(degraded=[("output_classifier", "skipped")])]
    assert degraded_by_step(finals) == {"output_classifier:skipped": 2, "input_classifier:skipped": 1,
                                        "rag:skipped": 1}
    assert degraded_by_step([_final(), {"status": "SUCCEEDED", "degraded": None}]) == {}


def test_failures_count_failed_and_expired_finals_and_prompts_without_one() -> None:
    finals = [_final(), _final("FAILED", "timeout_after_3_attempts"), _final("REJECTED", "quota"),
              _final("EXPIRED", "deadline")]
    assert failures_by_reason(finals, 5) == {"failed:timeout_after_3_attempts": 1, "expired:deadline": 1,
                                             "no_final": 1}
