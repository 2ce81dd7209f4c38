"""Dispatch: the pending state of a routed request and the InferenceRequest of its current attempt."""

from dataclasses import replace

from operators.correlate import on_dispatch, sha256_text
from operators.dispatch import inference_request, new_pending
from operators.route import RouteDecision
from rscf.settings import SETTINGS

LIM = replace(SETTINGS.limits, max_attempts=4, request_timeout_ms=1_000)
REC = {"request_id": "r1", "tenant_id": "t1", "modality": "TEXT", "priority": None, "prompt": "ctx + question",
       "params": {"max_tokens": 20}, "created_at": 1_000, "trace": {"traceparent": "00-ab-cd-01"}}


def test_new_pending_takes_the_route_decision_and_the_limits():
    decision = RouteDecision("text-small", "smollm2-135m", "2", "text-large", "fallback text-large->text-small")
    st = new_pending(REC, decision, 1_010, sanitized_prompt="question", input_verdicts=[{"check": "pii"}],
                     tier="PREMIUM", limits=LIM)
    assert (st.pool, st.model_name, st.model_version, st.fallback_from) == ("text-small", "smollm2-135m", "2",
                                                                           "text-large")
    assert (st.tier, st.priority, st.max_attempts, st.attempt) == ("PREMIUM", "NORMAL", 4, 0)
    assert st.prompt == "ctx + question" and st.prompt_sha256 == sha256_text("question")  # hash before RAG
    assert st.params["max_tokens"] == 20 and st.params["voice"] is None
    assert (st.created_at_ms, st.accepted_at_ms, st.input_verdicts) == (1_000, 1_010, [{"check": "pii"}])


def test_inference_request_is_the_current_attempt():
    st = new_pending(REC, RouteDecision("text-small", "m", "1", None, "t"), 1_010, limits=LIM)
    sent = on_dispatch(st, 2_000, LIM).state
    req = inference_request(sent)
    assert (req["request_id"], req["attempt"], req["pool"], req["deadline"]) == ("r1", 1, "text-small", 3_000)
    assert req["trace"] == REC["trace"] and req["created_at"] == 1_000 and req["priority"] == "NORMAL"
    req["params"]["max_tokens"] = 1  # the record is a copy: the state keeps its params
    assert sent.params["max_tokens"] == 20
    assert inference_request(replace(sent, attempt=2))["attempt"] == 2
