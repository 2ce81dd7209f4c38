"""Route: pick the worker pool and model version for a request; keep per-pool circuit breakers.

Pool choice: IMAGE -> image, AUDIO -> speech, TEXT -> text-small or text-large
by an estimated complexity against a threshold that depends on tier and
priority (FREE and LOW always get text-small); a tenant with the `echo` feature
goes to the echo pool (benchmarks without model cost). When the chosen pool is
unhealthy, its fallbacks from the pool table (`rscf.pools`) are tried in order;
a request that failed on a pool is routed again with `exclude=` that pool.

Canary: each pool has a rollout {version: weight}; the version is chosen by
hashing (pool, request_id), so retries of a request hit the same version and the
split over many ids follows the weights. A fallback pool hashes with its own
name, so the fallback's version is just as stable.

Circuit breaker per pool, as a pure value: `CircuitBreaker.on_event(event,
now_ms, cfg)` returns the next breaker. CLOSED counts successes and failures
(errors and timeouts) in one-second buckets over a sliding window; when at least
`min_requests` were seen and the failure rate reaches `error_rate` it OPENs.
After `cooldown_ms` it admits up to `half_open_probes` probe requests
(HALF_OPEN); any probe failure re-opens, `half_open_probes` successes close it.
A FORCE_OPEN command keeps it open until RESET.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from operators.admit import TenantPolicy
from rscf.pools import ECHO, IMAGE, POOL_BY_NAME, POOL_TABLE, SPEECH, TEXT_LARGE, TEXT_SMALL
from rscf.settings import SETTINGS

ECHO_FEATURE = "echo"


@dataclass(frozen=True)
class Rollout:
    pool: str
    model_name: str
    weights: Mapping[str, float]


# Each pool's model at its default version until a rollout event says otherwise.
DEFAULT_ROLLOUTS: dict[str, Rollout] = {
    p.name: Rollout(p.name, p.model, {p.default_version: 1.0}) for p in POOL_TABLE
}


def apply_rollout_event(rollouts: Mapping[str, Rollout], event: Mapping[str, Any]) -> dict[str, Rollout]:
    """Rollout table after a ControlEvent carrying `rollout`; unchanged otherwise."""
    r = event.get("rollout")
    updated = dict(rollouts)
    if r:
        weights = {str(k): float(v) for k, v in (r.get("weights") or {}).items() if float(v) > 0}
        if weights:
            updated[r["pool"]] = Rollout(r["pool"], r["model_name"], weights)
    return updated


def _unit_hash(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_version(request_id: str, pool: str, weights: Mapping[str, float]) -> str:
    """Deterministic weighted choice; versions are ordered by name so the split is stable across processes."""
    items = [(v, float(w)) for v, w in sorted(weights.items()) if float(w) > 0]
    if not items:
        raise ValueError(f"rollout for {pool} has no positive weight")
    total = sum(w for _, w in items)
    point = _unit_hash(pool, request_id) * total
    acc = 0.0
    for version, w in items:
        acc += w
        if point < acc:
            return version
    return items[-1][0]


_REASONING = re.compile(
    r"\b(?:explain|why|analy[sz]e|compare|contrast|prove|derive|step[- ]by[- ]step|reason|evaluate|"
    r"plan|design|strategy|trade-?offs?|code|function|algorithm|debug|summari[sz]e|essay|report)\b",
    re.IGNORECASE,
)


def estimate_complexity(prompt: str, params: Mapping[str, Any] | None = None) -> float:
    """A 0..1 score: longer prompts, reasoning verbs, several questions and long outputs weigh more."""
    params = params or {}
    words = len(prompt.split())
    length = min(words / 150.0, 1.0)
    reasoning = min(len(_REASONING.findall(prompt)) / 3.0, 1.0)
    questions = min(prompt.count("?") / 3.0, 1.0)
    max_tokens = params.get("max_tokens") or 64
    output = min(max_tokens / float(SETTINGS.limits.max_text_tokens), 1.0)
    score = 0.35 * length + 0.35 * reasoning + 0.1 * questions + 0.2 * output
    return round(min(max(score, 0.0), 1.0), 4)


def large_threshold(tier: str, priority: str) -> float | None:
    """Complexity at which TEXT goes to text-large; None means never."""
    if tier == "FREE" or priority == "LOW":
        return None
    threshold = 0.35 if tier == "PREMIUM" else 0.5
    if priority == "HIGH":
        threshold -= 0.1
    return threshold


# ----------------------------------------------------------------------------- breaker

CLOSED, OPEN, HALF_OPEN = "CLOSED", "OPEN", "HALF_OPEN"
SUCCESS, FAILURE, TIMEOUT, DISPATCH, RESET, FORCE_OPEN = (
    "success", "failure", "timeout", "dispatch", "reset", "force_open",
)


@dataclass(frozen=True)
class BreakerConfig:
    window_s: int = 30
    min_requests: int = 10
    error_rate: float = 0.5
    cooldown_ms: int = 10_000
    half_open_probes: int = 3


@dataclass(frozen=True)
class CircuitBreaker:
    """Breaker state (a small value: Flink state can pickle it). `buckets`: (second, successes, failures)."""

    state: str = CLOSED
    buckets: tuple[tuple[int, int, int], ...] = ()
    opened_at_ms: int = 0
    probes_sent: int = 0
    probe_successes: int = 0
    forced: bool = False

    def counts(self, now_ms: int, cfg: BreakerConfig) -> tuple[int, int]:
        oldest = now_ms // 1000 - cfg.window_s + 1
        ok = sum(s for sec, s, _ in self.buckets if sec >= oldest)
        bad = sum(f for sec, _, f in self.buckets if sec >= oldest)
        return ok, bad

    def allows(self, now_ms: int, cfg: BreakerConfig = BreakerConfig()) -> bool:
        """Would a request be sent to this pool now? (Does not change state; see DISPATCH.)"""
        if self.state == CLOSED:
            return True
        if self.forced:
            return False
        if self.state == OPEN:
            return now_ms >= self.opened_at_ms + cfg.cooldown_ms
        return self.probes_sent < cfg.half_open_probes

    def on_event(self, event: str, now_ms: int, cfg: BreakerConfig = BreakerConfig()) -> "CircuitBreaker":
        if event == RESET:
            return CircuitBreaker()
        if event == FORCE_OPEN:
            return CircuitBreaker(state=OPEN, opened_at_ms=now_ms, forced=True)
        current = self
        if current.state == OPEN and not current.forced and now_ms >= current.opened_at_ms + cfg.cooldown_ms:
            current = replace(current, state=HALF_OPEN, probes_sent=0, probe_successes=0)
        if current.state == CLOSED:
            return current._record_closed(event, now_ms, cfg)
        if current.state == HALF_OPEN:
            if event == DISPATCH:
                return replace(current, probes_sent=current.probes_sent + 1)
            if event in (FAILURE, TIMEOUT):
                return CircuitBreaker(state=OPEN, opened_at_ms=now_ms)
            if event == SUCCESS:
                successes = current.probe_successes + 1
                if successes >= cfg.half_open_probes:
                    return CircuitBreaker()
                return replace(current, probe_successes=successes)
        return current  # OPEN: results of requests sent before it opened change nothing

    def _record_closed(self, event: str, now_ms: int, cfg: BreakerConfig) -> "CircuitBreaker":
        if event not in (SUCCESS, FAILURE, TIMEOUT):
            return self
        sec = now_ms // 1000
        oldest = sec - cfg.window_s + 1
        kept = [b for b in self.buckets if b[0] >= oldest]
        ok, bad = (1, 0) if event == SUCCESS else (0, 1)
        if kept and kept[-1][0] == sec:
            last = kept.pop()
            kept.append((sec, last[1] + ok, last[2] + bad))
        else:
            kept.append((sec, ok, bad))
        updated = replace(self, buckets=tuple(kept))
        total_ok, total_bad = updated.counts(now_ms, cfg)
        total = total_ok + total_bad
        if total >= cfg.min_requests and total_bad / total >= cfg.error_rate:
            return CircuitBreaker(state=OPEN, opened_at_ms=now_ms)
        return updated


def apply_breaker_command(
    breakers: Mapping[str, CircuitBreaker], event: Mapping[str, Any], now_ms: int
) -> dict[str, CircuitBreaker]:
    """Breakers after a ControlEvent carrying `breaker` {pool, action RESET|FORCE_OPEN}."""
    cmd = event.get("breaker")
    updated = dict(breakers)
    if cmd:
        action = RESET if cmd["action"] == "RESET" else FORCE_OPEN
        updated[cmd["pool"]] = updated.get(cmd["pool"], CircuitBreaker()).on_event(action, now_ms)
    return updated


# ----------------------------------------------------------------------------- route


@dataclass(frozen=True)
class RouteDecision:
    pool: str | None
    model_name: str | None
    model_version: str | None
    fallback_from: str | None
    reason: str
    failed: bool = False  # True: end the request as FAILED with `reason`
    complexity: float | None = None
    candidates: tuple[str, ...] = field(default=())


NO_HEALTHY_POOL = "no_healthy_pool"


def primary_pool(record: Mapping[str, Any], tier: str, features: frozenset[str]) -> tuple[str, str, float | None]:
    """(pool, why, complexity) before health is considered."""
    if ECHO_FEATURE in features:
        return ECHO, "feature:echo", None
    modality = record.get("modality")
    if modality == "IMAGE":
        return IMAGE, "modality:IMAGE", None
    if modality == "AUDIO":
        return SPEECH, "modality:AUDIO", None
    complexity = estimate_complexity(record.get("prompt", ""), record.get("params"))
    threshold = large_threshold(tier, record.get("priority") or "NORMAL")
    if threshold is not None and complexity >= threshold:
        return TEXT_LARGE, f"complexity {complexity:.2f} >= {threshold:.2f}", complexity
    return TEXT_SMALL, f"complexity {complexity:.2f}", complexity


def route(
    record: Mapping[str, Any],
    policy: TenantPolicy,
    rollouts: Mapping[str, Rollout] | None,
    breakers: Mapping[str, CircuitBreaker] | None,
    now_ms: int,
    cfg: BreakerConfig = BreakerConfig(),
    exclude: str | None = None,
) -> RouteDecision:
    """Route a validated TEXT/IMAGE/AUDIO record: its primary pool, else the first healthy fallback.

    `exclude` skips a pool: the one a request just failed on, when it falls back.
    The caller should apply DISPATCH to the chosen pool's breaker when it sends
    the request, so half-open probes are counted.
    """
    rollouts = rollouts or DEFAULT_ROLLOUTS
    breakers = breakers or {}
    tier = policy.tier
    primary, why, complexity = primary_pool(record, tier, policy.features)
    candidates = (primary, *POOL_BY_NAME[primary].fallbacks)
    if tier == "FREE":
        candidates = tuple(p for p in candidates if p != TEXT_LARGE) or candidates
    for pool in candidates:
        if pool == exclude:
            continue
        if not breakers.get(pool, CircuitBreaker()).allows(now_ms, cfg):
            continue
        rollout = rollouts.get(pool) or DEFAULT_ROLLOUTS[pool]
        version = choose_version(record["request_id"], pool, rollout.weights)
        fallback_from = None if pool == primary else primary
        reason = why if fallback_from is None else f"fallback {primary}->{pool}: {why}"
        return RouteDecision(pool, rollout.model_name, version, fallback_from, reason, False, complexity, candidates)
    return RouteDecision(None, None, None, None, NO_HEALTHY_POOL, True, complexity, candidates)
