"""What the pool controller measures and exports: lag and arrivals over a pool's priority lanes
(Kafka admin), the rate history (Redis, so a restarted controller keeps its forecast), /metrics.

Lag per lane = latest - committed offset of that lane's group (a lane's group is the pool's group
with the lane's suffix, as the topic: rscf/settings.py Topics.lane), summed over lanes: requests
queued *or* in a batch, since workers commit only after their answers are acknowledged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rscf.settings import SETTINGS

log = logging.getLogger("rscf.pool_controller")


@dataclass(frozen=True)
class Reading:
    lag: int = 0
    latest: int = 0  # sum of the lanes' end offsets: its change over time is the arrival rate
    partitions: int = 0  # of the NORMAL lane (the others have as many)
    error: str | None = None


class LagReader:
    """One admin client for every pool; an error (broker down, timeout) is a Reading with `error`."""

    def __init__(self, bootstrap: str, timeout_s: float = 3.0) -> None:
        self.bootstrap, self.timeout = bootstrap, timeout_s
        self._admin = None
        self._prev: dict[str, tuple[float, int]] = {}

    def _client(self):
        if self._admin is None:
            from rscf.kafka_clients import CONTROLLER, admin_client

            self._admin = admin_client(self.bootstrap, CONTROLLER, **{"socket.timeout.ms": int(self.timeout * 1000)})
        return self._admin

    def read(self, topic: str, group: str) -> Reading:
        try:
            lag = latest = parts = 0
            for i, (lane_topic, lane_group) in enumerate(zip(SETTINGS.topics.lanes(topic), SETTINGS.topics.lanes(group))):
                lane_lag, lane_latest, n = self._lane(lane_topic, lane_group)
                lag, latest = lag + lane_lag, latest + lane_latest
                if lane_topic == topic:
                    parts = n
            return Reading(lag, latest, parts)
        except Exception as exc:  # noqa: BLE001 - KafkaException, timeouts: hold and say why
            return Reading(error=f"{type(exc).__name__}: {str(exc)[:200]}")

    def _lane(self, topic: str, group: str) -> tuple[int, int, int]:
        from confluent_kafka import TopicPartition

        from rscf.kafka_clients import group_lag

        admin, t = self._client(), self.timeout
        md = admin.list_topics(topic, timeout=t)
        if not md.brokers:
            raise TimeoutError("no broker in the metadata")
        tmeta = md.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            return 0, 0, 0
        tps = [TopicPartition(topic, p) for p in sorted(tmeta.partitions)]
        lag, latest = group_lag(admin, group, tps, t)
        return lag, latest, len(tps)

    def rate(self, pool: str, reading: Reading, now: float) -> float | None:
        """Arrivals per second since this pool's previous reading (None on the first one)."""
        prev = self._prev.get(pool)
        self._prev[pool] = (now, reading.latest)
        if prev is None or now <= prev[0] or reading.latest < prev[1]:
            return None
        return (reading.latest - prev[1]) / (now - prev[0])


class RateHistory:
    """Per pool (keyed by its consumer group), a Redis list of "time rate" samples, trimmed to `keep`: survives a controller restart.
    Redis down: samples are dropped and `load` returns None (the forecast says so; scaling goes on)."""

    def __init__(self, url: str, keep: int = 1200) -> None:
        self.url, self.keep = url, keep
        self._redis = None
        self._warned = False

    def key(self, group: str) -> str:
        from rscf.redis_security import POOL_RATE_PREFIX

        return f"{POOL_RATE_PREFIX}{group}"

    def _client(self):
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return self._redis

    def add(self, pool: str, t: float, rate: float) -> None:
        try:
            pipe = self._client().pipeline()
            pipe.rpush(self.key(pool), f"{t:.3f} {rate:.4f}")
            pipe.ltrim(self.key(pool), -self.keep, -1)
            pipe.execute()
            self._warned = False
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    def load(self, pool: str) -> list[tuple[float, float]] | None:
        try:
            raw = self._client().lrange(self.key(pool), 0, -1)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)
            return None
        out = []
        for item in raw:
            t, r = item.decode().split()
            out.append((float(t), float(r)))
        return out

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("rate history unavailable (Redis: %s): no forecast, scaling on lag only", exc)
            self._warned = True


def probe_ready(port: int, timeout_s: float = 0.3) -> bool:
    """A replica's /readyz: its model is loaded and it holds partitions (consuming)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(f"http://{SETTINGS.host}:{port}/readyz", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ControllerMetrics:
    """deploy/prometheus/METRICS.md, pool controller. Labels: pool (and action for decisions)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        g = lambda name, doc: Gauge(name, doc, ["pool"], registry=r)  # noqa: E731
        self.lag = g("rscf_pool_consumer_lag", "Unanswered requests over the pool's lanes (-1: unknown)")
        self.rate = g("rscf_pool_arrival_rate", "Requests per second written to the pool's lanes")
        self.forecast = g("rscf_pool_forecast_rate", "Peak forecast arrival rate over the lead time (-1: none)")
        self.desired = g("rscf_pool_desired_replicas", "Replicas wished for (KEDA rule, bounds, cooldown)")
        self.wanted = g("rscf_pool_wanted_replicas", "Replicas the decision asked for, before the budget")
        self.target = g("rscf_pool_target_replicas", "Replicas applied this tick (within the budget)")
        self.replicas = g("rscf_pool_replicas", "Replicas running (not draining)")
        self.hold = g("rscf_pool_controller_hold", "1 while the pool holds its size: lag could not be read")
        self.crash_loop = g("rscf_pool_replica_crash_loop", "1 while replicas exit quickly in a row (back-off)")
        self.cold_start_last = g("rscf_pool_cold_start_seconds_last", "Start to ready of the latest replica")
        self.crashes = Counter("rscf_pool_replica_crashes", "Replica exits the controller did not ask for",
                               ["pool"], registry=r)
        self.budget_capped = Counter("rscf_pool_budget_capped", "Ticks where the budget held a pool below its wish",
                                     ["pool"], registry=r)
        self.decisions = Counter("rscf_pool_scaling_decisions", "Decisions by action (up, down, hold)",
                                 ["pool", "action"], registry=r)
        self.cold_start = Histogram("rscf_pool_cold_start_seconds", "Replica start to ready (model loaded, consuming)",
                                    ["pool"], buckets=(0.5, 1, 2, 4, 8, 15, 30, 60, 120), registry=r)
        self.last_cold_start: dict[str, float] = {}
        self.started_at = time.time()

    def render(self) -> bytes:
        return generate_latest(self.registry)
