"""Pool choice, canary split, fallback and the circuit breaker."""

from collections import Counter

from operators.admit import TenantPolicy
from operators.route import (
    CLOSED,
    DEFAULT_ROLLOUTS,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    CircuitBreaker,
    Rollout,
    apply_breaker_command,
    apply_rollout_event,
    choose_version,
    estimate_complexity,
    route,
)
from rscf.pools import POOL_TABLE

CFG = BreakerConfig(window_s=10, min_requests=4, error_rate=0.5, cooldown_ms=5_000, half_open_probes=2)
STD = TenantPolicy("t", tier="STANDARD")
FREE = TenantPolicy("t", tier="FREE")
PREMIUM = TenantPolicy("t", tier="PREMIUM")


def rec(prompt="hi", modality="TEXT", priority="NORMAL", rid="r1", **params):
    return {"request_id": rid, "modality": modality, "prompt": prompt, "priority": priority, "params": params}


HARD = ("Explain step by step why the algorithm is correct, compare it with the alternative design, "
        "analyze the trade-offs and write a report with code. " * 3)


def test_complexity_orders_prompts():
    easy = estimate_complexity("hello there", {})
    hard = estimate_complexity(HARD, {"max_tokens": 512})
    assert 0.0 <= easy < 0.2 < 0.6 < hard <= 1.0


def test_pool_by_modality_tier_priority_and_echo():
    assert route(rec(modality="IMAGE"), STD, None, None, 0).pool == "image"
    assert route(rec(modality="AUDIO"), STD, None, None, 0).pool == "speech"
    assert route(rec("hello"), STD, None, None, 0).pool == "text-small"
    assert route(rec(HARD, max_tokens=512), STD, None, None, 0).pool == "text-large"
    assert route(rec(HARD, max_tokens=512), FREE, None, None, 0).pool == "text-small"
    assert route(rec(HARD, priority="LOW", max_tokens=512), PREMIUM, None, None, 0).pool == "text-small"
    echo = TenantPolicy("t", features=frozenset({"echo"}))
    d = route(rec(HARD, modality="IMAGE"), echo, None, None, 0)
    assert (d.pool, d.reason) == ("echo", "feature:echo")


def test_canary_split_close_to_weights_and_sticky():
    weights = {"v1": 0.9, "v2": 0.1}
    counts = Counter(choose_version(f"req-{i}", "text-small", weights) for i in range(10_000))
    assert abs(counts["v2"] / 10_000 - 0.1) < 0.015
    assert all(choose_version(f"req-{i}", "text-small", weights) == choose_version(f"req-{i}", "text-small", weights)
               for i in range(100))
    # weights need not sum to one; order of the mapping does not matter
    counts = Counter(choose_version(f"x{i}", "image", {"b": 3, "a": 1}) for i in range(10_000))
    assert abs(counts["a"] / 10_000 - 0.25) < 0.02
    assert choose_version("x1", "image", {"b": 3, "a": 1}) == choose_version("x1", "image", {"a": 1, "b": 3})


def test_rollout_event_changes_model_and_version():
    rollouts = apply_rollout_event({}, {"rollout": {"pool": "text-small", "model_name": "m2", "weights": {"v9": 1.0}}})
    d = route(rec("hi"), STD, rollouts, None, 0)
    assert (d.model_name, d.model_version) == ("m2", "v9")
    assert apply_rollout_event(rollouts, {"rollout": None}) == rollouts


def trip(b, now, n=4):
    for i in range(n):
        b = b.on_event("failure", now + i, CFG)
    return b


def test_breaker_needs_min_requests_and_error_rate():
    b = CircuitBreaker()
    for i in range(3):
        b = b.on_event("failure", 1000 + i, CFG)
    assert b.state == CLOSED  # 3 failures but fewer than min_requests
    b = CircuitBreaker()
    for i, event in enumerate(["success", "success", "success", "failure", "failure"]):
        b = b.on_event(event, 1000 + i, CFG)
    assert b.state == CLOSED and b.counts(1010, CFG) == (3, 2)  # 40 % < 50 %
    b = b.on_event("timeout", 1400, CFG)
    assert b.state == OPEN and not b.allows(1401, CFG)  # 3/6 = 50 %


def test_breaker_window_slides():
    b = CircuitBreaker()
    for i in range(3):
        b = b.on_event("failure", i * 100, CFG)
    # 11 s later the old failures have left the 10 s window
    b = b.on_event("failure", 11_000, CFG)
    assert b.state == CLOSED and b.counts(11_000, CFG) == (0, 1)


def test_breaker_half_open_probe_success_closes():
    b = trip(CircuitBreaker(), 0)
    assert b.state == OPEN and not b.allows(4_999, CFG) and b.allows(5_003, CFG)
    b = b.on_event("dispatch", 5_003, CFG)
    assert b.state == HALF_OPEN and b.probes_sent == 1
    b = b.on_event("dispatch", 5_004, CFG)
    assert not b.allows(5_005, CFG)  # probe budget used
    b = b.on_event("success", 5_100, CFG)
    assert b.state == HALF_OPEN
    b = b.on_event("success", 5_200, CFG)
    assert b.state == CLOSED and b.buckets == ()


def test_breaker_half_open_probe_failure_reopens():
    b = trip(CircuitBreaker(), 0).on_event("dispatch", 6_000, CFG)
    b = b.on_event("timeout", 6_500, CFG)
    assert b.state == OPEN and b.opened_at_ms == 6_500 and not b.allows(11_000, CFG) and b.allows(11_500, CFG)


def test_breaker_commands():
    breakers = apply_breaker_command({}, {"breaker": {"pool": "image", "action": "FORCE_OPEN"}}, 0)
    assert not breakers["image"].allows(10**9, CFG)  # forced open ignores the cool-down
    breakers = apply_breaker_command(breakers, {"breaker": {"pool": "image", "action": "RESET"}}, 5)
    assert breakers["image"].state == CLOSED


def test_fallback_when_primary_open_and_no_healthy_pool():
    opened = {"text-large": trip(CircuitBreaker(), 0)}
    d = route(rec(HARD, max_tokens=512), STD, None, opened, 1000, CFG)
    assert (d.pool, d.fallback_from, d.failed) == ("text-small", "text-large", False)
    both = {"text-large": opened["text-large"], "text-small": trip(CircuitBreaker(), 0)}
    d = route(rec(HARD, max_tokens=512), STD, None, both, 1000, CFG)
    assert d.failed and d.reason == "no_healthy_pool" and d.pool is None
    img = route(rec(modality="IMAGE"), STD, None, {"image": trip(CircuitBreaker(), 0)}, 1000, CFG)
    assert img.failed


def test_route_excluding_the_failed_pool_respects_tier_and_health():
    hard = rec(HARD, max_tokens=512)
    d = route(hard, STD, None, None, 0, exclude="text-large")
    assert (d.pool, d.fallback_from) == ("text-small", "text-large")
    assert route(rec("hi"), FREE, None, None, 0, exclude="text-small").failed  # FREE never gets text-large
    assert route(rec(modality="IMAGE"), STD, None, None, 0, exclude="image").failed  # no fallback pool
    opened = {"text-small": trip(CircuitBreaker(), 0)}
    assert route(hard, STD, None, opened, 1000, CFG, exclude="text-large").failed
    # a request that was sent to its fallback at dispatch falls back to its primary
    assert route(hard, STD, None, None, 0, exclude="text-small").pool == "text-large"
    rollouts = {"text-small": Rollout("text-small", "s", {"v1": 1, "v2": 1})}
    a = route(hard, STD, rollouts, None, 0, exclude="text-large")
    assert a.model_version == route(hard, STD, rollouts, None, 99, exclude="text-large").model_version


def test_default_rollouts_come_from_the_pool_table():
    assert {name: (r.model_name, dict(r.weights)) for name, r in DEFAULT_ROLLOUTS.items()} == {
        p.name: (p.model, {p.default_version: 1.0}) for p in POOL_TABLE}
