"""Scale worker replicas on consumer lag, the same signal KEDA's kafka trigger uses in Kubernetes.

Lag = latest offset - committed offset, summed over the pool's partitions. Workers
commit only after their results are acknowledged, so lag counts requests that are
queued *or* in a batch: the honest measure of unanswered work.
The decision is a pure function; the loop around it only measures and applies.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

from rscf.settings import SETTINGS

log = logging.getLogger(__name__)

# `rscf workers autoscale` (a loop in the foreground, base topic only). The pool controller service
# (pool_controller.py) supersedes it: lanes, KEDA semantics, budget, supervision; it and the KEDA
# manifests read each pool's `lag_threshold` from rscf/pools.py. Do not run both on one pool.
TARGET_LAG_PER_REPLICA = 50
MIN_REPLICAS = 1
MAX_REPLICAS = 4
SCALE_UP_COOLDOWN_S = 10.0
SCALE_DOWN_COOLDOWN_S = 60.0


def desired_replicas(
    lag: int,
    current: int,
    min_replicas: int = MIN_REPLICAS,
    max_replicas: int = MAX_REPLICAS,
    target_lag_per_replica: int = TARGET_LAG_PER_REPLICA,
    *,
    now: float = 0.0,
    last_scaled_at: float | None = None,
    scale_up_cooldown_s: float = SCALE_UP_COOLDOWN_S,
    scale_down_cooldown_s: float = SCALE_DOWN_COOLDOWN_S,
    max_step_down: int = 1,
) -> int:
    """Replicas to run for ``lag`` unanswered requests.

    ceil(lag / target) clamped to [min, max]. Scaling up is fast (short cooldown: a
    backlog grows while we wait); scaling down is slow and one step at a time (a new
    replica pays a model load, flapping is expensive). A pool whose min is 0 still
    gets one replica as soon as any request waits.
    """
    if min_replicas < 0 or max_replicas < min_replicas or target_lag_per_replica <= 0:
        raise ValueError("need 0 <= min_replicas <= max_replicas and target_lag_per_replica > 0")
    lag = max(0, lag)
    want = math.ceil(lag / target_lag_per_replica)
    want = max(min_replicas, min(max_replicas, want))
    since = math.inf if last_scaled_at is None else now - last_scaled_at
    if current < min_replicas:
        return want  # below the floor (crashed replicas): restore at once
    if want > current:
        return want if since >= scale_up_cooldown_s else current
    if want < current:
        if since < scale_down_cooldown_s:
            return current
        return max(want, current - max_step_down)
    return current


@dataclass
class PoolLag:
    pool: str
    group: str
    topic: str
    lag: int
    partitions: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def consumer_lag(topic: str, group: str, bootstrap: str | None = None, timeout: float = 10.0,
                 principal: str = "controller") -> PoolLag:
    """Sum over partitions of (latest - committed); an uncommitted partition counts from its earliest offset."""
    from confluent_kafka import TopicPartition

    from rscf.kafka_clients import admin_client, group_lag

    admin = admin_client(bootstrap, principal)
    md = admin.list_topics(topic, timeout=timeout)
    tmeta = md.topics.get(topic)
    if tmeta is None or tmeta.error is not None or not tmeta.partitions:
        return PoolLag(pool="", group=group, topic=topic, lag=0, partitions=0)
    tps = [TopicPartition(topic, p) for p in sorted(tmeta.partitions)]
    total, _latest = group_lag(admin, group, tps, timeout)
    return PoolLag(pool="", group=group, topic=topic, lag=total, partitions=len(tps))


def pool_lag(pool: str, bootstrap: str | None = None) -> PoolLag:
    lag = consumer_lag(SETTINGS.topics.requests(pool), f"rscf-workers-{pool}", bootstrap)
    lag.pool = pool
    return lag


def _state_path():
    return SETTINGS.paths.pids / "autoscaler.json"


def load_state() -> dict[str, float]:
    try:
        return json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return {}


def save_state(state: dict[str, float]) -> None:
    SETTINGS.paths.pids.mkdir(parents=True, exist_ok=True)
    _state_path().write_text(json.dumps(state))


def autoscale_once(
    pools: list[str],
    min_replicas: int = MIN_REPLICAS,
    max_replicas: int = MAX_REPLICAS,
    target_lag: int = TARGET_LAG_PER_REPLICA,
    grace_s: float = 60.0,
    metrics=None,
) -> list[dict]:
    """Measure each pool's lag, decide, and start/stop replicas; returns what it did per pool."""
    from inference_workers import supervisor

    state = load_state()
    now = time.time()
    report = []
    for pool in pools:
        lag = pool_lag(pool)
        current = len(supervisor.alive_replicas(pool))
        want = desired_replicas(
            lag.lag, current, min_replicas, max_replicas, target_lag,
            now=now, last_scaled_at=state.get(pool),
        )
        if want != current:
            supervisor.scale(pool, want, grace_s=grace_s)
            state[pool] = now
        if metrics is not None:
            metrics.lag.labels(pool).set(lag.lag)
            metrics.replicas.labels(pool).set(current if want == current else len(supervisor.alive_replicas(pool)))
            metrics.desired.labels(pool).set(want)
        report.append({"pool": pool, "lag": lag.lag, "partitions": lag.partitions, "replicas": current, "desired": want})
    save_state(state)
    return report
