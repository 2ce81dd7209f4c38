"""Pool controller decisions: KEDA lag semantics, stabilisation, budget, crash back-off (pure, time passed in)."""

from __future__ import annotations

import pytest

from inference_workers.scaling import Cost, CrashBackoff, Policy, ScaleState, decide, fit_budget, reactive_replicas
from rscf.pools import POOL_TABLE, pool

P = Policy(min_replicas=0, max_replicas=4, lag_threshold=50, activation_lag=0, cooldown_s=60,
           stabilization_s=30, scale_down_period_s=15)


def test_desired_is_ceil_lag_over_threshold_bounded() -> None:
    assert [reactive_replicas(lag, P) for lag in (0, 1, 50, 51, 175)] == [0, 1, 1, 2, 4]
    d = decide("p", P, ScaleState(), 10_000, 1, now=0)
    assert (d.desired, d.target) == (4, 4)  # capped at max, straight up (scale-up is fast)


def test_activation_threshold_keeps_a_zero_pool_asleep() -> None:
    pol = Policy(0, 4, 50, activation_lag=5)
    assert decide("p", pol, ScaleState(), 5, 0, now=0).target == 0
    assert decide("p", pol, ScaleState(), 6, 0, now=0).target == 1
    # requests arriving wake it too, even if the lag reads at the threshold
    assert decide("p", pol, ScaleState(), 5, 0, now=0, rate=2.0).target == 1


def test_idle_pool_goes_to_zero_after_cooldown_only() -> None:
    st = ScaleState()
    assert decide("p", P, st, 30, 1, now=0).target == 1
    assert decide("p", P, st, 0, 1, now=59, rate=0.0).target == 1  # within the cooldown: kept warm
    d = decide("p", P, st, 0, 1, now=100, rate=0.0)
    assert (d.target, d.reason) == (0, "scale to zero")


def test_steady_traffic_with_zero_lag_is_not_idle() -> None:
    st = ScaleState()
    decide("p", P, st, 30, 1, now=0)
    assert decide("p", P, st, 0, 1, now=500, rate=3.0).target == 1


def test_scale_down_waits_for_the_window_and_goes_one_step_at_a_time() -> None:
    st = ScaleState()
    assert decide("p", P, st, 200, 1, now=0).target == 4
    assert decide("p", P, st, 0, 4, now=10, rate=1.0).target == 4  # the window still holds the wish for 4
    d = decide("p", P, st, 0, 4, now=31, rate=1.0)
    assert (d.desired, d.target) == (1, 3)
    assert decide("p", P, st, 0, 3, now=40, rate=1.0).target == 3  # one step per period
    assert decide("p", P, st, 0, 3, now=47, rate=1.0).target == 2


def test_below_min_is_restored_at_once_and_unknown_lag_holds() -> None:
    pol = Policy(2, 4, 50)
    st = ScaleState()
    st.last_scale_down_at = 0
    assert decide("p", pol, st, 0, 0, now=1).target == 2
    d = decide("p", pol, st, None, 3, now=2, hold_reason="kafka admin: timed out")
    assert (d.target, d.reason) == (3, "hold: kafka admin: timed out")


def test_prediction_scales_ahead_of_lag() -> None:
    d = decide("p", P, ScaleState(), 0, 1, now=0, rate=1.0, forecast=80.0, predicted=3)
    assert (d.reactive, d.target) == (1, 3) and "predicted" in d.reason


def test_budget_never_exceeded_and_wakes_zero_pools_first() -> None:
    costs = {"a": Cost(1.0), "b": Cost(0.25), "c": Cost(1.0, 8.0)}
    got = fit_budget({"a": 4, "b": 2, "c": 1}, {"a": 1, "b": 1, "c": 0}, costs, cpu_budget=3.0, gpu_budget_gb=8.0)
    assert got["c"] == 1 and got["b"] == 2
    assert sum(costs[p].cores * n for p, n in got.items()) <= 3.0
    assert got["a"] < 4  # what it wanted is reported by the caller
    # running replicas still wanted are never taken away by the budget
    assert fit_budget({"a": 3}, {"a": 3}, {"a": Cost(1.0)}, cpu_budget=1.0) == {"a": 3}
    # no GPU memory left: a GPU pool stays where it is
    assert fit_budget({"c": 2}, {"c": 1}, costs, cpu_budget=10, gpu_budget_gb=8.0) == {"c": 1}


def test_crash_backoff_grows_then_resets_and_flags_a_loop() -> None:
    b = CrashBackoff(base_s=1, cap_s=8, stable_s=30, loop_after=3)
    assert b.exited("p", 0, lifetime_s=0.5, now=100) == 101
    assert not b.may_start("p", 0, 100.5) and b.may_start("p", 0, 101)
    assert b.exited("p", 0, 0.5, 101) == 103
    assert b.exited("p", 0, 0.5, 103) == 107 and b.crash_loop("p")
    assert b.exited("p", 0, 0.5, 107) == 115 and b.exited("p", 0, 0.5, 115) == 123  # capped at 8 s
    assert b.exited("p", 0, lifetime_s=45, now=200) == 201 and not b.crash_loop("p")  # ran long: reset


def test_policy_from_the_pool_table() -> None:
    for row in POOL_TABLE:
        pol = Policy.of(row)
        assert pol.max_replicas == row.max_replicas and pol.lag_threshold == row.lag_threshold
    assert Policy.of(pool("text-large")).min_replicas == 0  # scales to zero
    assert pool("echo").replica_cores == 0.25 and pool("text-small").replica_cores == 1.0
    with pytest.raises(ValueError):
        Policy(3, 2, 50)


def test_replicas_found_running_get_a_full_cooldown() -> None:
    st = ScaleState()
    assert decide("p", P, st, 0, 1, now=1000).target == 1  # adopted, idle: not killed at once
    assert decide("p", P, st, 0, 1, now=1059).target == 1
    assert decide("p", P, st, 0, 1, now=1100).target == 0


def test_replicas_started_by_hand_in_an_idle_pool_get_a_full_cooldown() -> None:
    from inference_workers.controller_targets import Target

    policy = Policy(min_replicas=0, max_replicas=4, lag_threshold=10, cooldown_s=60)
    t = Target("echo", policy, "req", "grp")
    t.state.last_active_at = 1000.0  # the pool's last activity, long ago
    assert t.notice(set(), 1100.0) == set()
    assert t.state.last_active_at == 1000.0
    assert t.notice({0}, 1101.0) == {0}  # `rscf workers start` just added replica 0
    assert decide("echo", policy, t.state, 0, 1, 1103.0).target == 1  # kept, not drained 2 s later
    assert t.notice({0}, 1103.0) == set()  # already seen: no new cooldown
    assert decide("echo", policy, t.state, 0, 1, 1161.0 + policy.stabilization_s).target == 0
    t.spawned[1] = 1200.0  # the controller's own start is not an arrival
    assert t.notice({0, 1}, 1201.0) == set()


def test_a_replacement_standby_is_parked_only_while_the_pool_keeps_up(monkeypatch) -> None:
    """During a burst the cores go to the serving replicas; the next standby is parked after it."""
    from inference_workers import pool_controller as pc
    from inference_workers.controller_targets import Target

    parked_calls: list[int] = []
    monkeypatch.setattr(pc.standby, "park", lambda pool, index, args: parked_calls.append(index) or
                        type("R", (), {"pid": None})())
    ctl = pc.Controller.__new__(pc.Controller)  # no broker, no Redis: only the parking rule
    ctl.backoff = CrashBackoff()
    monkeypatch.setattr(ctl, "_parked", lambda t: {}, raising=False)
    monkeypatch.setattr(ctl, "_free_index", lambda t: 3, raising=False)
    t = Target("image", Policy(min_replicas=1, max_replicas=2, lag_threshold=5), "req", "grp", standby=1)
    ctl._keep_standby(t, 100.0, keeping_up=False)
    assert parked_calls == []  # a backlog: nothing loads a model beside the serving replicas
    ctl._keep_standby(t, 101.0, keeping_up=True)
    assert parked_calls == [3]


def test_a_replica_started_by_hand_is_kept_while_it_loads_then_for_a_cooldown() -> None:
    """Four models loading at once on 2 busy cores can outlast a cooldown: the pool is not scaled to
    zero under a replica that is still loading, and its cooldown counts from when it is ready."""
    from inference_workers.controller_targets import Target

    policy = Policy(min_replicas=0, max_replicas=4, lag_threshold=10, cooldown_s=60, stabilization_s=0)
    t = Target("echo", policy, "req", "grp")
    ready: set[int] = set()
    t.notice({0}, 1000.0)
    for now in (1030.0, 1090.0, 1150.0):  # still loading, well past one cooldown
        assert t.hold_while_loading({0}, ready.__contains__, now) == {0}
        assert decide("echo", policy, t.state, 0, 1, now).target == 1
    ready.add(0)  # loaded at 1150
    assert t.hold_while_loading({0}, ready.__contains__, 1152.0) == set()
    assert decide("echo", policy, t.state, 0, 1, 1200.0).target == 1  # the cooldown runs from readiness
    assert decide("echo", policy, t.state, 0, 1, 1211.0).target == 0
    t.notice({1}, 1300.0)
    assert t.hold_while_loading(set(), ready.__contains__, 1302.0) == set(), "an arrival that exited holds nothing"
