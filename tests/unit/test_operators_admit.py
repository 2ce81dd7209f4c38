"""Token bucket admission and tenant policies."""

from operators.admit import TenantPolicy, TokenBucket, admit, default_policy, policy_from_dict


def test_burst_then_refill():
    policy = TenantPolicy("t", rate_per_s=2.0, burst=3)
    state, now = None, 1_000
    results = []
    for _ in range(4):
        ok, state, retry = admit(state, policy, now)
        results.append((ok, retry))
    assert [r[0] for r in results] == [True, True, True, False]
    assert results[-1][1] == 500  # one token at 2/s
    ok, state, retry = admit(state, policy, now + 499)
    assert not ok and retry == 1
    ok, state, _ = admit(state, policy, now + 500)
    assert ok
    # a long pause refills only up to burst
    _, state, _ = admit(state, policy, now + 100_000)
    assert abs(state.tokens - 2.0) < 1e-9


def test_rate_is_respected_over_time():
    policy = TenantPolicy("t", rate_per_s=10.0, burst=1)
    state = None
    admitted = 0
    for ms in range(0, 10_000, 10):  # 100 offers/s for 10 s
        ok, state, _ = admit(state, policy, ms)
        admitted += ok
    assert 100 <= admitted <= 102


def test_clock_going_backwards_refills_nothing():
    policy = TenantPolicy("t", rate_per_s=1.0, burst=1)
    ok, state, _ = admit(None, policy, 10_000)
    assert ok
    ok, state2, _ = admit(state, policy, 5_000)
    assert not ok and state2.last_ms == 10_000


def test_never_admissible():
    assert admit(None, TenantPolicy("t", rate_per_s=1.0, burst=2), 0, cost=3)[2] == -1
    assert admit(TokenBucket(0.0, 0), TenantPolicy("t", rate_per_s=0.0, burst=2), 10)[2] == -1


def test_tier_defaults_and_control_events():
    assert default_policy("a", "FREE").rate_per_s < default_policy("a", "PREMIUM").rate_per_s
    assert "moderation_model" in default_policy("a", "PREMIUM").features
    assert default_policy("a", "BOGUS").tier == "STANDARD"
    p = policy_from_dict({"tenant_id": "acme", "tier": "PREMIUM", "rate_per_s": 3.5, "burst": 7, "features": ["echo"]})
    assert (p.tier, p.rate_per_s, p.burst, p.features) == ("PREMIUM", 3.5, 7, frozenset({"echo"}))
    unset = policy_from_dict({"tenant_id": "other", "tier": None, "rate_per_s": None, "burst": None, "features": None})
    assert unset == default_policy("other")
