"""Pending-request state machine: retries, backoff, fallback, timeouts, duplicates."""

from dataclasses import replace

from operators.correlate import EffectKind, backoff_ms, on_dispatch, on_finished, on_result, on_timer, on_timeout
from operators.dispatch import inference_request, new_pending
from operators.route import RouteDecision
from rscf.settings import SETTINGS

LIM = replace(SETTINGS.limits, max_attempts=3, retry_base_ms=200, retry_cap_ms=1_000, request_timeout_ms=1_000,
              dedup_ttl_ms=60_000)
ROUTE = RouteDecision("text-large", "big", "v2", None, "test")
FALLBACK = RouteDecision("text-small", "small", "v1", "text-large", "fallback")


def fb(_state):
    return FALLBACK


def pending():
    rec = {"request_id": "r1", "tenant_id": "t1", "modality": "TEXT", "priority": "HIGH", "prompt": "final prompt",
           "params": {"max_tokens": 20}, "created_at": 1_000, "trace": None}
    return new_pending(rec, ROUTE, accepted_at_ms=1_010, sanitized_prompt="sanitised", limits=LIM)


def result(attempt, status="OK", retryable=True, **kw):
    base = {"request_id": "r1", "attempt": attempt, "pool": "text-large", "worker_id": "w", "status": status,
            "output_text": "hello" if status == "OK" else None, "error": None if status == "OK" else "boom",
            "retryable": retryable, "queue_ms": 5, "inference_ms": 50, "artifact_uris": [], "tokens_out": 3}
    base.update(kw)
    return base


def test_dispatch_emits_request_with_deadline_timer():
    out = on_dispatch(pending(), 2_000, LIM)
    assert out.kind is EffectKind.EMIT_REQUEST
    req = inference_request(out.state)
    assert (req["attempt"], req["pool"], req["model_version"], req["deadline"]) == (1, "text-large", "v2", 3_000)
    assert set(req["params"]) >= {"max_tokens", "voice"} and req["created_at"] == 1_000
    assert out.timers == (3_000,)


def test_success_finishes_and_later_duplicate_is_dropped():
    st = on_dispatch(pending(), 2_000, LIM).state
    out = on_result(st, result(1), 2_100, fb, LIM)
    assert out.kind is EffectKind.EMIT_FINAL and out.state.status == "SUCCEEDED"
    assert out.breaker_event == ("text-large", "success")
    assert out.timers == (2_100 + LIM.dedup_ttl_ms,)
    dup = on_result(out.state, result(1), 2_200, fb, LIM)
    assert dup.kind is EffectKind.DROP_DUPLICATE and dup.state.duplicates == 1 and dup.counter == "duplicate_results"
    assert dup.state.status == "SUCCEEDED" and dup.breaker_event is None
    # the tombstone expires
    assert on_timer(dup.state, 2_100 + LIM.dedup_ttl_ms - 1, None, LIM).kind is EffectKind.WAIT
    gone = on_timer(dup.state, 2_100 + LIM.dedup_ttl_ms, None, LIM)
    assert gone.kind is EffectKind.CLEAR and gone.state is None


def test_retry_backoff_grows_and_is_capped():
    assert [backoff_ms(a, LIM) for a in (1, 2, 3, 4, 5)] == [200, 400, 800, 1_000, 1_000]


def test_error_ladder_retries_then_fallback_then_fails():
    st = on_dispatch(pending(), 0, LIM).state
    now, delays = 0, []
    for attempt in (1, 2):
        out = on_result(st, result(attempt, "ERROR"), now + 10, fb, LIM)
        assert out.kind is EffectKind.SCHEDULE_RETRY
        assert out.breaker_event == ("text-large", "failure")
        delays.append(out.delay_ms)
        assert out.timers == (now + 10 + out.delay_ms,)
        early = on_timer(out.state, now + 11, fb, LIM)
        assert early.kind is EffectKind.WAIT  # backoff not over yet
        now = out.timers[0]
        sent = on_timer(out.state, now, fb, LIM)
        assert sent.kind is EffectKind.EMIT_REQUEST and sent.state.attempt == attempt + 1
        assert sent.state.pool == "text-large"  # retries stay on the pool and version
        st = sent.state
    assert delays == [200, 400]
    out = on_result(st, result(3, "ERROR"), now + 10, fb, LIM)
    assert out.kind is EffectKind.EMIT_REQUEST and out.counter == "fallbacks"
    assert (out.state.attempt, out.state.pool, out.state.model_name) == (4, "text-small", "small")
    assert out.state.fallback_from == "text-large" and out.state.fallback_used
    final = on_result(out.state, result(4, "ERROR", pool="text-small"), now + 20, fb, LIM)
    assert final.kind is EffectKind.EMIT_FINAL
    assert (final.state.status, final.state.reason) == ("FAILED", "error_after_4_attempts")
    assert [h["outcome"] for h in final.state.history] == ["error"] * 4


def test_no_fallback_available_fails_after_max_attempts():
    st = replace(on_dispatch(pending(), 0, LIM).state, attempt=3)
    out = on_result(st, result(3, "ERROR"), 10, lambda s: None, LIM)
    assert out.state.status == "FAILED" and out.state.reason == "error_after_3_attempts"
    failed_route = RouteDecision(None, None, None, None, "no_healthy_pool", failed=True)
    out = on_result(st, result(3, "ERROR"), 10, lambda s: failed_route, LIM)
    assert out.state.reason == "error_after_3_attempts"


def test_request_that_ended_before_dispatch_keeps_a_tombstone():
    st = replace(pending(), status="REJECTED", reason="quota_exceeded", finished_at_ms=5)
    out = on_finished(st, 5, LIM)
    assert out.kind is EffectKind.EMIT_FINAL and out.state is st and out.timers == (5 + LIM.dedup_ttl_ms,)


def test_non_retryable_error_ends_at_once():
    st = on_dispatch(pending(), 0, LIM).state
    out = on_result(st, result(1, "ERROR", retryable=False), 10, fb, LIM)
    assert out.state.status == "FAILED" and out.state.reason == "non_retryable_error"


def test_timeout_then_late_result():
    st = on_dispatch(pending(), 0, LIM).state
    assert on_timeout(st, 999, fb, LIM).kind is EffectKind.WAIT
    out = on_timer(st, 1_000, fb, LIM)
    assert out.kind is EffectKind.SCHEDULE_RETRY and out.breaker_event == ("text-large", "timeout")
    assert out.state.history[-1]["outcome"] == "timeout"
    # attempt 1 answers while attempt 2 waits for its backoff: late
    late = on_result(out.state, result(1), 1_050, fb, LIM)
    assert late.kind is EffectKind.DROP_LATE and late.state.late == 1 and late.counter == "late_results"
    sent = on_timer(late.state, out.timers[0], fb, LIM)
    # ... and after attempt 2 is sent, still late
    late2 = on_result(sent.state, result(1), out.timers[0] + 5, fb, LIM)
    assert late2.kind is EffectKind.DROP_LATE
    ok = on_result(late2.state, result(2), out.timers[0] + 10, fb, LIM)
    assert ok.kind is EffectKind.EMIT_FINAL and ok.state.attempt == 2 and ok.state.late == 2


def test_timeouts_exhaust_to_terminal_reason():
    st = on_dispatch(pending(), 0, LIM).state
    now = 0
    while True:
        out = on_timer(st, st.deadline_ms, None, LIM)  # no fallback offered
        if out.kind is EffectKind.EMIT_FINAL:
            break
        now = out.timers[0]
        st = on_timer(out.state, now, None, LIM).state
    assert out.state.reason == "timeout_after_3_attempts"


def test_stale_timer_and_unknown_or_future_results():
    st = on_dispatch(pending(), 0, LIM).state
    assert on_timer(st, 500, fb, LIM).kind is EffectKind.WAIT
    assert on_result(None, result(1), 5, fb, LIM).kind is EffectKind.DROP_LATE
    assert on_result(st, result(7), 5, fb, LIM).kind is EffectKind.DROP_DUPLICATE


def test_state_is_not_mutated_in_place():
    st = on_dispatch(pending(), 0, LIM).state
    on_result(st, result(1, "ERROR"), 10, fb, LIM)
    assert st.attempt == 1 and st.history == [] and st.status is None


def test_pending_state_pickles_positionally_and_a_by_name_pickle_of_the_version_before_still_loads(monkeypatch):
    import pickle

    from operators.correlate import PendingRequest, tombstone

    state = on_dispatch(pending(), 1_000).state
    assert pickle.loads(pickle.dumps(state)) == state
    assert b"prompt_sha256" not in pickle.dumps(state)  # no field names in the bytes
    with monkeypatch.context() as m:
        m.delattr(PendingRequest, "__reduce__")  # how the version before pickled keyed state
        by_name = pickle.dumps(state)
    assert b"prompt_sha256" in by_name and pickle.loads(by_name) == state
    done = tombstone(replace(state, status="SUCCEEDED", finished_at_ms=2_000))
    assert done.finished and done.request_id == state.request_id and done.prompt == ""
    assert len(pickle.dumps(done)) < 400


def test_a_request_the_worker_found_past_its_deadline_ends_expired_not_failed():
    st = on_dispatch(pending(), 2_000, LIM).state
    out = on_result(st, result(1, "ERROR", retryable=False, error="deadline_exceeded"), 3_001, fb, LIM)
    assert out.kind is EffectKind.EMIT_FINAL and out.state.status == "EXPIRED"
    assert out.state.reason == "deadline_exceeded" and out.breaker_event is None  # not held against the pool
