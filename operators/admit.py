"""Admit: per-tenant admission with a token bucket, and the tenant policies that size it.

The bucket is two numbers (tokens, last_ms) so Flink keyed state keyed by
tenant_id holds it cheaply; `admit` is a pure function of (state, policy, now_ms)
so replays after a restore decide the same way. A tenant without an explicit
policy gets its tier's defaults. Policies arrive as ControlEvent `tenant_policy`
events, kept in the job's broadcast state; routing and moderation read the same
`TenantPolicy`, including whether the tenant's moderation fails open (the default:
rule checks only while the classifier is unavailable) or closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping


@dataclass(frozen=True)
class TenantPolicy:
    tenant_id: str
    tier: str = "STANDARD"
    rate_per_s: float = 10.0
    burst: int = 20
    features: frozenset[str] = field(default_factory=frozenset)
    # When the classifier the `moderation_model` feature asks for is unavailable: refuse the prompt or
    # output (REJECTED, reason moderation_unavailable) instead of going on with the rule checks only.
    moderation_fail_closed: bool = False


# Defaults when a tenant has no policy of its own.
TIER_DEFAULTS: dict[str, tuple[float, int, frozenset[str]]] = {
    "FREE": (1.0, 5, frozenset()),
    "STANDARD": (10.0, 20, frozenset({"rag"})),
    "PREMIUM": (50.0, 100, frozenset({"rag", "moderation_model"})),
}


def default_policy(tenant_id: str, tier: str = "STANDARD") -> TenantPolicy:
    rate, burst, features = TIER_DEFAULTS.get(tier, TIER_DEFAULTS["STANDARD"])
    return TenantPolicy(tenant_id, tier if tier in TIER_DEFAULTS else "STANDARD", rate, burst, features)


def policy_from_dict(data: Mapping[str, Any]) -> TenantPolicy:
    """A TenantPolicy from the Avro `TenantPolicy` record of a control event; unset fields take the tier's defaults."""
    tier = data.get("tier") or "STANDARD"
    base = default_policy(str(data["tenant_id"]), tier)
    features = data.get("features")
    return replace(
        base,
        rate_per_s=float(data["rate_per_s"]) if data.get("rate_per_s") is not None else base.rate_per_s,
        burst=int(data["burst"]) if data.get("burst") is not None else base.burst,
        features=frozenset(features) if features is not None else base.features,
        moderation_fail_closed=bool(data.get("moderation_fail_closed") or False),
    )


@dataclass(frozen=True)
class TokenBucket:
    """Keyed state: tokens left and when they were last counted."""

    tokens: float
    last_ms: int


def admit(
    state: TokenBucket | None, policy: TenantPolicy, now_ms: int, cost: float = 1.0
) -> tuple[bool, TokenBucket, int]:
    """(admitted, new state, retry_after_ms). A new tenant starts with a full bucket.

    retry_after_ms is 0 when admitted, the wait until enough tokens have refilled
    otherwise, and -1 when the request can never be admitted (cost above burst,
    or a zero rate with an empty bucket).
    """
    burst = float(max(policy.burst, 0))
    rate = max(policy.rate_per_s, 0.0)
    if state is None:
        tokens, last = burst, now_ms
    else:
        elapsed = max(now_ms - state.last_ms, 0)  # a clock step backwards refills nothing
        tokens = min(burst, state.tokens + elapsed * rate / 1000.0)
        last = max(now_ms, state.last_ms)
    if tokens + 1e-9 >= cost:
        return True, TokenBucket(tokens - cost, last), 0
    new_state = TokenBucket(tokens, last)
    if cost > burst or rate <= 0:
        return False, new_state, -1
    return False, new_state, max(1, int(math.ceil((cost - tokens) * 1000.0 / rate - 1e-6)))
