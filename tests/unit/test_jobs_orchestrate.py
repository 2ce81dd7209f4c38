"""The orchestrate step without Flink: route, dispatch, correlate, output moderation, audit."""

from __future__ import annotations

import dataclasses

import pytest

from jobs.envelopes import Admitted, Finished, ResultIn
from tools.harness import prompt
from jobs.intake import control_updates
from jobs.orchestrate import Orchestrator
from operators import correlate, route
from operators.correlate import EffectKind
from rscf.settings import SETTINGS


def _admitted(rid="r1", text="hello", features=frozenset({"echo"}), tier="STANDARD", tenant="t", source=(0, 1),
              **extra):
    rec = prompt(rid, tenant, text, **extra)
    return Admitted(rec, text, [], tier, features, 1_000, source=source)


def _result(rid="r1", attempt=1, status="OK", output_text="olleh", pool="echo"):
    return {"request_id": rid, "attempt": attempt, "pool": pool, "worker_id": "w", "model_name": "echo",
            "model_version": "1", "status": status, "output_text": output_text if status == "OK" else None,
            "artifact_uris": [], "content_type": None, "error": None if status == "OK" else "boom",
            "retryable": True, "queue_ms": 3, "inference_ms": 2, "batch_size": 1, "tokens_out": None,
            "completed_at": 2_000}


def _slot(effects):
    from jobs.envelopes import Slot

    return None if effects.state is None else Slot(effects.state, effects.features)


def test_orchestrator_dispatch_result_final_and_duplicate():
    orch = Orchestrator()
    eff = orch.on_input(_admitted(), None, 1_000)
    assert eff.kind is EffectKind.EMIT_REQUEST and eff.final is None
    req = eff.request
    assert req["pool"] == "echo" and req["attempt"] == 1 and eff.state.pool == "echo"
    assert eff.timers == (1_000 + SETTINGS.limits.request_timeout_ms,)
    done = orch.on_input(ResultIn(_result()), _slot(eff), 1_500)
    assert done.kind is EffectKind.EMIT_FINAL and done.request is None
    content, audit = done.final
    assert content["status"] == "SUCCEEDED" and audit["request_id"] == "r1"
    dup = orch.on_input(ResultIn(_result()), _slot(done), 1_600)
    assert dup.final is None and dup.request is None and dup.counter == "duplicate_results"
    again = orch.on_input(_admitted(), _slot(done), 1_700)  # the same Kafka record read again (a replay)
    assert again.final is None and again.request is None and again.counter == "duplicate_prompts"
    assert again.state is done.state and again.features == done.features


def test_another_prompt_under_a_request_id_in_use_is_rejected_as_a_duplicate():
    """The tenant's id is pending or finished (within the dedup TTL): the new prompt gets its own REJECTED
    final and audit record, reason duplicate_request_id; the first request is untouched."""
    orch = Orchestrator()
    eff = orch.on_input(_admitted(source=(0, 1)), None, 1_000)
    for slot, now in ((_slot(eff), 1_100), (_slot(orch.on_input(ResultIn(_result()), _slot(eff), 1_200)), 1_300)):
        dup = orch.on_input(_admitted(text="something else", source=(0, 9)), slot, now)
        assert dup.kind is EffectKind.REJECT_DUPLICATE and dup.request is None and dup.timers == ()
        assert dup.state is slot.pending and dup.counter == "duplicate_request_ids"
        content, audit = dup.final
        assert (content["request_id"], content["tenant_id"], content["status"], content["reason"]) == \
            ("r1", "t", "REJECTED", "duplicate_request_id")
        assert audit["reason"] == "duplicate_request_id" and audit["prompt_sha256"] == correlate.sha256_text("something else")
    # an early refusal under the id in use (say, the quota) is the same answer
    quota = Finished(correlate.finished_early(prompt("r1", "t", "x"), "REJECTED", "quota_exceeded", 1_400, source=(1, 2)))
    dup = orch.on_input(quota, _slot(eff), 1_400)
    assert dup.final[0]["reason"] == "duplicate_request_id" and dup.state is eff.state


def test_two_tenants_with_the_same_request_id_are_two_requests():
    """State is per (tenant, request id): the glue keys it by `schemas.keys.identity_key`, and each
    tenant's prompt, result and final stay its own."""
    from jobs.envelopes import request_key

    orch = Orchestrator()
    a, b = _admitted(tenant="a"), _admitted(tenant="b", text="other")
    assert request_key(a) == "a\x1fr1" and request_key(b) == "b\x1fr1" and request_key(a) != request_key(b)
    slots = {}
    for value in (a, b):
        eff = orch.on_input(value, None, 1_000)
        assert eff.kind is EffectKind.EMIT_REQUEST and eff.request["tenant_id"] == value.record["tenant_id"]
        slots[request_key(value)] = _slot(eff)
    done = orch.on_input(ResultIn(dict(_result(), tenant_id="b")), slots["b\x1fr1"], 1_500)
    assert done.final[0]["tenant_id"] == "b" and done.final[0]["status"] == "SUCCEEDED"
    assert request_key(ResultIn(dict(_result(), tenant_id="b"))) == "b\x1fr1"


def test_orchestrator_timeout_retries_with_backoff_then_fails():
    orch = Orchestrator()
    eff = orch.on_input(_admitted(), None, 0)
    now = 0
    attempts = 1
    while True:
        now = max(eff.timers)
        eff = orch.on_timer(_slot(eff), now)
        if eff.final is not None:
            break
        if eff.request is not None:
            attempts += 1
            assert eff.request["attempt"] == attempts
    assert attempts == SETTINGS.limits.max_attempts
    assert eff.final[0]["reason"] == f"timeout_after_{attempts}_attempts"


def test_early_final_keeps_a_tombstone_against_duplicates():
    state = correlate.finished_early(prompt("r1", "t", "x"), "REJECTED", "quota_exceeded", 1_000)
    eff = Orchestrator().on_input(Finished(state, frozenset({"echo"})), None, 1_000)
    assert eff.kind is EffectKind.EMIT_FINAL and eff.final[0]["reason"] == "quota_exceeded"
    assert eff.timers == (1_000 + SETTINGS.limits.dedup_ttl_ms,) and eff.state.finished


def test_evolve_is_replace_and_rejects_unknown_fields():
    state = Orchestrator().on_input(_admitted(), None, 1_000).state
    assert correlate.evolve(state, attempt=2, pool="x") == dataclasses.replace(state, attempt=2, pool="x")
    assert state.attempt == 1
    with pytest.raises(TypeError):
        correlate.evolve(state, no_such_field=1)


def test_answered_request_cancels_its_timeout_and_ttl_mode_sets_no_tombstone_timer():
    ttl = Orchestrator(tombstone_timers=False)
    eff = ttl.on_input(_admitted(), None, 1_000)
    deadline = 1_000 + SETTINGS.limits.request_timeout_ms
    assert eff.timers == (deadline,)
    done = ttl.on_input(ResultIn(_result()), _slot(eff), 1_500)
    assert done.cancel_timers == (deadline,)
    assert done.timers == () and done.state.finished  # the tombstone stays, state TTL expires it
    # with tombstone timers (the model without state TTL) the final keeps its cleanup timer
    plain = Orchestrator()
    kept = plain.on_input(ResultIn(_result()), _slot(plain.on_input(_admitted(), None, 1_000)), 1_500)
    assert kept.timers == (1_500 + SETTINGS.limits.dedup_ttl_ms,) and kept.cancel_timers == (deadline,)


def test_error_result_retry_replaces_the_deadline_timer():
    orch = Orchestrator(tombstone_timers=False)
    eff = orch.on_input(_admitted(), None, 1_000)
    retry = orch.on_input(ResultIn(_result(status="ERROR")), _slot(eff), 1_200)
    assert retry.cancel_timers == (1_000 + SETTINGS.limits.request_timeout_ms,)
    assert retry.timers and retry.timers[0] > 1_200 and not retry.state.finished


def test_restored_control_keeps_forced_breakers_and_rollouts_but_not_reset_ones():
    entries = dict(control_updates({"breaker": {"pool": "image", "action": "FORCE_OPEN"}}))
    entries.update(control_updates({"breaker": {"pool": "speech", "action": "FORCE_OPEN"}}))
    entries.update(control_updates({"breaker": {"pool": "speech", "action": "RESET"}}))  # last one wins
    assert set(entries) == {"breaker:image", "breaker:speech"}
    fresh = Orchestrator()
    fresh.restore_control(entries.items(), 1_000)
    assert not fresh.breakers["image"].allows(10**12, route.BreakerConfig())  # forced: no cooldown
    assert "speech" not in fresh.breakers
    img = Admitted(prompt("i1", "t", "a red circle", modality="IMAGE"), "a red circle", [], "STANDARD",
                   frozenset(), 1_000)
    eff = fresh.on_input(img, None, 2_000)
    assert eff.request is None and eff.counter == "no_healthy_pool"
    assert eff.final[0]["reason"] == route.NO_HEALTHY_POOL


def test_exhausted_pool_falls_back_once_to_another_pool():
    orch = Orchestrator(tombstone_timers=False)
    hard = ("Explain step by step why the algorithm is correct, compare it with the alternative design, "
            "analyze the trade-offs and write a report with code. " * 3)
    eff = orch.on_input(_admitted(text=hard, features=frozenset(), params={"max_tokens": 512}), None, 0)
    assert eff.request["pool"] == "text-large"
    for attempt in range(1, SETTINGS.limits.max_attempts + 1):
        eff = orch.on_input(ResultIn(_result(attempt=attempt, status="ERROR", pool="text-large")), _slot(eff), 10)
        if eff.kind is EffectKind.SCHEDULE_RETRY:
            eff = orch.on_timer(_slot(eff), eff.timers[0])
    assert eff.counter == "fallbacks" and eff.request["pool"] == "text-small"
    assert eff.state.fallback_from == "text-large" and eff.request["attempt"] == SETTINGS.limits.max_attempts + 1


def test_output_moderation_decides_the_final_and_the_tombstone():
    orch = Orchestrator(tombstone_timers=False)
    eff = orch.on_input(_admitted(), None, 1_000)
    blocked = orch.on_input(ResultIn(_result(output_text="to make a bomb you ...")), _slot(eff), 1_500)
    content, audit = blocked.final
    assert (content["status"], content["reason"]) == ("REJECTED", "moderation:blocked_terms")
    assert (blocked.state.status, blocked.state.reason) == ("REJECTED", "moderation:blocked_terms")
    assert [v["stage"] for v in audit["verdicts"]] == ["OUTPUT", "OUTPUT"]


class Unreachable:
    block_threshold = 0.5

    def classify(self, text):
        from operators.embedding import EmbedderUnavailable

        raise EmbedderUnavailable("embedding service marked down")


@pytest.mark.parametrize("closed", [False, True])
def test_output_moderation_with_the_classifier_down_follows_the_tenants_policy(closed):
    from operators.moderate import Moderator

    orch = Orchestrator(Moderator(classifier_source=Unreachable))
    skipped = ({"stage": "rag", "outcome": "skipped", "dependency": "redis", "reason": "refused"},)
    value = dataclasses.replace(_admitted(features=frozenset({"echo", "moderation_model"})), degraded=skipped,
                                moderation_fail_closed=closed)
    eff = orch.on_input(value, None, 1_000)
    assert eff.state.moderation_fail_closed is closed and eff.state.degraded == skipped
    content, audit = orch.on_input(ResultIn(_result()), _slot(eff), 1_500).final
    stages = [(d["stage"], d["outcome"]) for d in content["degraded"]]
    assert stages == [("rag", "skipped"), ("output_classifier", "failed_closed" if closed else "skipped")]
    assert audit["degraded"] == content["degraded"]
    if closed:
        assert (content["status"], content["reason"], content["output_text"]) == \
            ("REJECTED", "moderation_unavailable", None)
    else:
        assert (content["status"], content["output_text"]) == ("SUCCEEDED", "olleh")


def _timeouts_on_echo(orch, n, start_ms, read_result_late_by_ms):
    """`n` requests dispatched to echo; before each deadline the orchestrator reads some other request's
    result that the worker completed `read_result_late_by_ms` earlier; then the deadline timer fires."""
    effects = []
    for i in range(n):
        effects.append(orch.on_input(_admitted(rid=f"r{i}", source=(0, i)), None, start_ms))
    deadline = effects[0].timers[0]
    late = dict(_result(rid="other"), completed_at=deadline - read_result_late_by_ms)
    orch.on_input(ResultIn(late), None, deadline)  # unknown request: dropped, but its age is observed
    return [orch.on_timer(_slot(eff), deadline) for eff in effects], deadline


def test_timeouts_while_the_job_reads_results_late_do_not_count_against_the_pool():
    """Issue #14: the job's own backlog (results read seconds after the worker wrote them) moves the
    deadline on instead of timing out; the echo breaker sees nothing and stays closed."""
    orch = Orchestrator()
    outs, deadline = _timeouts_on_echo(orch, 12, 1_000, read_result_late_by_ms=8_000)
    assert {o.kind for o in outs} == {EffectKind.DEFER_TIMEOUT}
    assert all(o.breaker_event is None and o.counter == "timeouts_deferred_job_behind" for o in outs)
    assert all(o.timers == (deadline + 8_000,) and o.state.deadline_ms == deadline + 8_000 for o in outs)
    assert "echo" not in orch.breakers or orch.breakers["echo"].counts(deadline, orch.breaker_cfg) == (0, 0)
    # the answer that was waiting in the job's input then completes the request normally
    done = orch.on_input(ResultIn(dict(_result(rid="r0"), completed_at=deadline)), _slot(outs[0]), deadline + 100)
    assert done.kind is EffectKind.EMIT_FINAL and done.final[0]["status"] == "SUCCEEDED"
    assert route.route(prompt("next", "t", "hi"), route.TenantPolicy("t", "STANDARD", features=frozenset({"echo"})),
                       None, orch.breakers, deadline + 200).pool == "echo"


def test_timeouts_while_the_job_keeps_up_count_and_open_the_breaker():
    """The same timeouts with results read promptly are the pool's: retries are scheduled, the failures
    are counted, and ten of them open the echo breaker (min_requests 10, error rate 0.5)."""
    orch = Orchestrator()
    outs, deadline = _timeouts_on_echo(orch, 12, 1_000, read_result_late_by_ms=20)
    assert {o.kind for o in outs} == {EffectKind.SCHEDULE_RETRY}
    assert all(o.breaker_event == ("echo", "timeout") for o in outs)
    assert orch.breakers["echo"].state == route.OPEN


def test_job_lag_goes_stale_without_results_and_deferral_is_bounded():
    """No result read for `fresh_ms`: no lag to blame (a dead pool times out as before); and a request
    defers at most MAX_JOB_WAITS times."""
    orch = Orchestrator()
    eff = orch.on_input(_admitted(), None, 1_000)
    deadline = eff.timers[0]
    orch.on_input(ResultIn(dict(_result(rid="other"), completed_at=deadline - 8_000)), None, deadline - 6_000)
    assert orch.on_timer(_slot(eff), deadline).kind is EffectKind.SCHEDULE_RETRY  # lag seen 6 s ago: stale
    state = dataclasses.replace(eff.state, job_waits=correlate.MAX_JOB_WAITS)
    out = correlate.on_timeout(state, deadline, None, job_lag_ms=5_000)
    assert out.kind is EffectKind.SCHEDULE_RETRY and out.breaker_event == ("echo", "timeout")
    assert correlate.on_timeout(eff.state, deadline, None, job_lag_ms=999).kind is EffectKind.SCHEDULE_RETRY


def test_finished_request_keeps_a_small_tombstone_that_still_drops_duplicates_and_replays():
    import pickle

    orch = Orchestrator(tombstone_timers=False)
    long_text = "a product description " * 40
    sent = orch.on_input(_admitted(text=long_text), None, 1_000)
    full = pickle.dumps(correlate.evolve(sent.state, status="SUCCEEDED",
                                         result=_result(output_text=long_text[::-1])))
    done = orch.on_input(ResultIn(_result(output_text=long_text[::-1])), _slot(sent), 1_500)
    assert done.final is not None and done.final[0]["output_text"] == long_text[::-1]  # the final has it all
    tomb = done.state
    assert tomb.finished and tomb.status == "SUCCEEDED" and tomb.prompt == "" and tomb.result is None
    assert len(pickle.dumps(tomb)) < len(full) / 3
    again = orch.on_input(ResultIn(_result(output_text="x")), _slot(done), 1_600)
    assert again.kind is EffectKind.DROP_DUPLICATE and again.final is None
    replay = orch.on_input(_admitted(text=long_text), _slot(done), 1_700)  # same partition and offset
    assert replay.kind is EffectKind.DROP_DUPLICATE and replay.final is None
    resent = orch.on_input(_admitted(text=long_text, source=(0, 9)), _slot(done), 1_800)
    assert resent.kind is EffectKind.REJECT_DUPLICATE and resent.final[0]["reason"] == "duplicate_request_id"


def test_a_timer_that_fires_late_after_a_restore_defers_instead_of_opening_the_breaker():
    """A TaskManager restored 25 s after the deadline: the timer fires late, no result has been read yet
    (no intake lag to see); the timeout is the job's own, so it waits on (at most a request timeout)
    and the pool's breaker sees nothing. A timer on time still counts against the pool."""
    orch = Orchestrator()
    effects = [orch.on_input(_admitted(rid=f"r{i}", source=(0, i)), None, 1_000) for i in range(12)]
    deadline = effects[0].timers[0]
    outs = [orch.on_timer(_slot(eff), deadline + 25_000) for eff in effects]
    assert {o.kind for o in outs} == {EffectKind.DEFER_TIMEOUT}
    assert all(o.breaker_event is None and o.timers == (deadline + 50_000,) for o in outs)
    assert "echo" not in orch.breakers or orch.breakers["echo"].state != route.OPEN
    very_late = orch.on_timer(_slot(effects[0]), deadline + 10 * SETTINGS.limits.request_timeout_ms)
    assert very_late.timers == (deadline + 11 * SETTINGS.limits.request_timeout_ms,)  # capped at one timeout
    on_time = orch.on_timer(_slot(outs[1]), outs[1].state.deadline_ms)
    assert on_time.kind is EffectKind.SCHEDULE_RETRY and on_time.breaker_event == ("echo", "timeout")


def test_a_job_with_its_own_attempt_deadline_times_out_on_it_not_on_the_stacks():
    """The backfill lane's job (`JobConfig.request_timeout_ms`): a row queued behind live traffic keeps its
    attempt; the stack's 30 s deadline would have expired or retried it."""
    from jobs.config import JobConfig, parse

    cfg = parse(JobConfig(topic_suffix="lane", request_timeout_ms=900_000).to_args())
    assert cfg.request_timeout_ms == 900_000 and cfg.limits().request_timeout_ms == 900_000
    assert cfg.limits().dedup_ttl_ms == SETTINGS.limits.dedup_ttl_ms  # only the deadline differs
    assert JobConfig().limits() is SETTINGS.limits and "--request-timeout-ms" not in JobConfig().to_args()
    orch = Orchestrator(limits=cfg.limits())
    eff = orch.on_input(_admitted(), None, 1_000)
    assert eff.timers == (901_000,) and eff.request["deadline"] == 901_000
    early = orch.on_timer(_slot(eff), 1_000 + SETTINGS.limits.request_timeout_ms + 1)  # the stack's would fire
    assert early.kind is EffectKind.WAIT
    late = orch.on_timer(_slot(eff), 901_001)
    assert late.kind is EffectKind.SCHEDULE_RETRY and late.state.attempt == 2
