"""The pool controller's decisions, pure: KEDA's lag semantics, the machine budget, crash back-off.

KEDA's kafka scaler + the HPA behaviour it configures, as an operator who runs them expects:
desired = ceil(lag / lagThreshold) bounded by [min, max]; a pool at zero wakes only when lag
exceeds the activation threshold and goes back to zero after `cooldown_s` without activity;
scale-up is immediate (a backlog grows while we wait); scale-down takes the highest wish of the
last `stabilization_s` (HPA's stabilisation window) and removes one replica per
`scale_down_period_s` (a new replica pays a model load: flapping is expensive). A predicted
replica count (forecast.py) is one more wish, so pre-scaling rides the same rules.
Nothing here reads a clock or a socket; the loop (pool_controller.py) passes both in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rscf.pools import Pool


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    lag_threshold: int = 50
    activation_lag: int = 0
    cooldown_s: float = 60.0
    stabilization_s: float = 30.0
    scale_down_period_s: float = 15.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas) or self.lag_threshold <= 0:
            raise ValueError("need 0 <= min_replicas <= max_replicas, max_replicas >= 1, lag_threshold > 0")

    @classmethod
    def of(cls, pool: Pool, **overrides) -> "Policy":
        values = dict(min_replicas=pool.min_replicas, max_replicas=pool.max_replicas,
                      lag_threshold=pool.lag_threshold, activation_lag=pool.activation_lag,
                      cooldown_s=pool.cooldown_s, stabilization_s=pool.stabilization_s,
                      scale_down_period_s=pool.scale_down_period_s)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class ScaleState:
    """What a pool's decisions remember between ticks."""

    last_active_at: float | None = None  # last time lag exceeded the activation threshold
    wishes: list[tuple[float, int]] = field(default_factory=list)  # (time, want) within the window
    last_scale_down_at: float | None = None


@dataclass(frozen=True)
class Decision:
    """One tick for one pool: the inputs and what to run. `target` is applied; `reason` is logged."""

    pool: str
    lag: int | None
    rate: float | None
    forecast: float | None
    reactive: int
    predicted: int
    desired: int  # the wish after bounds and cooldown, before stabilisation and budget
    actual: int
    target: int
    reason: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def reactive_replicas(lag: int, policy: Policy, rate: float | None = None) -> int:
    """KEDA: ceil(lag / lagThreshold), at least 1, while active (lag above the activation threshold,
    or requests arriving: a fast pool's lag reads 0 most of the time under steady traffic); 0 when not."""
    if lag <= policy.activation_lag and not (rate or 0) > 0:
        return 0
    return max(1, math.ceil(max(lag, 0) / policy.lag_threshold))


def decide(pool: str, policy: Policy, state: ScaleState, lag: int | None, actual: int, now: float, *,
           rate: float | None = None, forecast: float | None = None, predicted: int = 0,
           hold_reason: str | None = None) -> Decision:
    """The replica count to run now. `lag` None (Kafka admin unreachable) or a `hold_reason`
    holds the current size; below `min_replicas` (replicas crashed) restores at once."""

    def out(desired: int, target: int, reason: str, reactive: int = 0) -> Decision:
        return Decision(pool, lag, rate, forecast, reactive, predicted, desired, actual, target, reason)

    if lag is None or hold_reason is not None:
        return out(actual, actual, f"hold: {hold_reason or 'lag unknown'}")
    if state.last_active_at is None and actual > 0:
        state.last_active_at = now  # replicas found running (adopted, started by hand) get a full cooldown
    reactive = reactive_replicas(lag, policy, rate)
    want = max(reactive, predicted)
    if want > 0:
        state.last_active_at = now
    elif actual > 0 and state.last_active_at is not None and now - state.last_active_at < policy.cooldown_s:
        want = 1  # idle, but within the cooldown: keep one replica warm
    want = max(policy.min_replicas, min(policy.max_replicas, want))
    state.wishes = [(t, w) for t, w in state.wishes if now - t < policy.stabilization_s] + [(now, want)]
    if actual < policy.min_replicas:
        return out(want, want, "below min: restore", reactive)
    if want > actual:
        why = "activate from zero" if actual == 0 else "scale up"
        return out(want, want, f"{why}{' (predicted)' if predicted > reactive else ''}", reactive)
    if want == actual:
        return out(want, actual, "steady", reactive)
    stabilised = max(w for _, w in state.wishes)
    if stabilised >= actual:
        return out(want, actual, f"hold: stabilising ({policy.stabilization_s:.0f} s window)", reactive)
    if state.last_scale_down_at is not None and now - state.last_scale_down_at < policy.scale_down_period_s:
        return out(want, actual, "hold: one step per scale-down period", reactive)
    state.last_scale_down_at = now
    return out(want, actual - 1, "scale to zero" if actual == 1 else "scale down one step", reactive)


# ----------------------------------------------------------------------------- the machine's budget
@dataclass(frozen=True)
class Cost:
    cores: float
    gpu_memory_gb: float = 0.0


def cost_of(pool: Pool, gpu_budget_gb: float) -> Cost:
    """A GPU pool costs GPU memory where there is a GPU budget, and cores like any pool."""
    return Cost(pool.replica_cores, pool.gpu_memory_gb if (pool.gpu and gpu_budget_gb > 0) else 0.0)


def fit_budget(wants: dict[str, int], running: dict[str, int], costs: dict[str, Cost],
               cpu_budget: float, gpu_budget_gb: float = 0.0) -> dict[str, int]:
    """Replicas granted per pool: what runs and is still wanted is kept; growth is handed out one
    replica at a time to the pool furthest below its wish, while it fits. Never above a wish."""
    granted = {p: min(w, running.get(p, 0)) for p, w in wants.items()}

    def used() -> tuple[float, float]:
        return (sum(costs[p].cores * n for p, n in granted.items()),
                sum(costs[p].gpu_memory_gb * n for p, n in granted.items()))

    while True:
        cores, gpu = used()
        short = sorted((p for p in wants if granted[p] < wants[p]),
                       key=lambda p: (granted[p] > 0, granted[p] - wants[p]))  # wake pools at zero first
        for p in short:
            c = costs[p]
            if cores + c.cores <= cpu_budget + 1e-9 and gpu + c.gpu_memory_gb <= gpu_budget_gb + 1e-9:
                granted[p] += 1
                break
        else:
            return granted


# ----------------------------------------------------------------------------- crash back-off
@dataclass
class CrashBackoff:
    """Restart delays for replicas that exit on their own: 1, 2, 4 ... 60 s after consecutive quick
    exits; a replica that ran `stable_s` resets its count. `crash_loop` after `loop_after` quick
    exits in a row (an alert, never a fork bomb: one restart per delay per replica slot)."""

    base_s: float = 1.0
    cap_s: float = 60.0
    stable_s: float = 30.0
    loop_after: int = 3
    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    next_start: dict[tuple[str, int], float] = field(default_factory=dict)

    def exited(self, pool: str, index: int, lifetime_s: float, now: float) -> float:
        """Record an unasked exit; returns the time before which the slot must not restart."""
        key = (pool, index)
        n = 1 if lifetime_s >= self.stable_s else self.counts.get(key, 0) + 1
        self.counts[key] = n
        self.next_start[key] = now + min(self.cap_s, self.base_s * 2 ** (n - 1))
        return self.next_start[key]

    def may_start(self, pool: str, index: int, now: float) -> bool:
        return now >= self.next_start.get((pool, index), 0.0)

    def crash_loop(self, pool: str) -> bool:
        return any(n >= self.loop_after for (p, _), n in self.counts.items() if p == pool)

    def healthy(self, pool: str, index: int) -> None:
        """The replica has run `stable_s`: forget its crashes."""
        self.counts.pop((pool, index), None)
        self.next_start.pop((pool, index), None)
