"""What the pool controller runs: a `Target` per pool (and per backfill lane), from its command line.

Split from pool_controller.py so the loop stays readable; tests and benchmarks build targets here for
private topics and ports.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Callable

from inference_workers.backfill_lanes import lane_group, lane_policy, lane_topic, lane_worker_args
from inference_workers.metrics import LANE_REPLICA_BASE, announced_port
from inference_workers.scaling import Policy, ScaleState
from rscf.pools import POOLS, pool as pool_row
from rscf.settings import SETTINGS


@dataclass
class Target:
    """A pool as the controller runs it (tests and benchmarks point it at private topics)."""

    pool: str
    policy: Policy
    topic: str
    group: str
    worker_args: list[str] = field(default_factory=list)
    metrics_port_base: int | None = None  # replica i serves /readyz on base + i (None: metrics_port())
    replica_rps: float | None = None  # requests/s one replica serves (None: the pool table's)
    lane: str = ""  # "": the pool's live lanes; else its backfill lane of that topic suffix (backfill_lanes.py)
    nice: int = 0  # niceness of its replicas
    standby: int = 0  # warm replicas kept parked, model loaded, while below max (standby.py)
    state: ScaleState = field(default_factory=ScaleState)
    spawned: dict[int, float] = field(default_factory=dict)  # index -> spawn time, until ready
    draining: dict[int, tuple[int, float]] = field(default_factory=dict)  # index -> (pid, kill at)
    activated: set[int] = field(default_factory=set)  # parked replicas activated, until ready
    seen: set[int] = field(default_factory=set)  # replicas alive at the last tick
    loading: set[int] = field(default_factory=set)  # arrivals not ready yet: the pool counts as active

    @property
    def name(self) -> str:
        """Key of its decisions, back-off and metrics label: the pool, or `<pool>.<lane>`."""
        return f"{self.pool}.{self.lane}" if self.lane else self.pool

    @property
    def first_index(self) -> int:
        return LANE_REPLICA_BASE if self.lane else 0

    def notice(self, alive: set[int], now: float) -> set[int]:
        """Replicas that appeared without this controller starting them (`rscf workers start`, the demo)
        get a full cooldown from now. Without it an idle pool's last activity, a minute old, drained
        the demo's four replicas 2 s after `rscf workers start`, before their models had loaded."""
        arrived = alive - self.seen - set(self.spawned) - self.activated
        if arrived:
            self.state.last_active_at = now
        self.seen = set(alive)
        self.loading |= arrived
        return arrived

    def hold_while_loading(self, alive: set[int], ready: Callable[[int], bool], now: float) -> set[int]:
        """Arrivals still loading their model keep the pool active, so its cooldown counts from when
        they can serve: four pools loading at once on 2 busy cores can take longer than a cooldown
        (60 s), and a replica drained before it was ready left `rscf workers start` waiting for nothing."""
        self.loading = {i for i in self.loading & alive if not ready(i)}
        if self.loading:
            self.state.last_active_at = now
        return self.loading

    def owns(self, index: int) -> bool:
        """Live targets own replica indices below LANE_REPLICA_BASE, lane targets those from it."""
        return (index >= LANE_REPLICA_BASE) == bool(self.lane)

    def port(self, index: int) -> int:
        if self.metrics_port_base is not None:
            return self.metrics_port_base + index - self.first_index
        return announced_port(self.pool, index)

    def args(self, index: int) -> list[str]:
        extra = list(self.worker_args)
        if self.metrics_port_base is not None or self.lane:
            extra += ["--metrics-port", str(self.port(index))]
        return extra


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m inference_workers.pool_controller", description=__doc__.split("\n")[0])
    p.add_argument("--pool", action="append", choices=POOLS, help="pools to run (default: RSCF_CONTROLLER_POOLS or all)")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--requests-topic", default=None, help="one pool only: its base request topic (tests, benchmarks)")
    p.add_argument("--group", default=None, help="one pool only: its base consumer group")
    p.add_argument("--metrics-port-base", type=int, default=None, help="replica i serves health on base + i")
    p.add_argument("--port", type=int, default=SETTINGS.ports.pool_controller, help="controller /metrics; -1 none")
    p.add_argument("--min", type=int, default=None)
    p.add_argument("--max", type=int, default=None)
    p.add_argument("--lag-threshold", type=int, default=None)
    p.add_argument("--cooldown", type=float, default=None)
    p.add_argument("--stabilization", type=float, default=None)
    p.add_argument("--scale-down-period", type=float, default=None)
    p.add_argument("--season", type=float, default=3600.0, help="seconds of the recurring pattern to forecast")
    p.add_argument("--step", type=float, default=10.0, help="seconds per rate sample in the forecast")
    p.add_argument("--no-predictive", action="store_true")
    p.add_argument("--replica-rps", type=float, default=None, help="requests/s a replica serves (forecast -> replicas)")
    p.add_argument("--cpu-budget", type=float, default=None)
    p.add_argument("--standby", type=int, default=None,
                   help="parked warm replicas per pool (default: the pool table's `standby`)")
    p.add_argument("--worker-arg", action="append", default=[], help="extra argument for `rscf worker run`")
    p.add_argument("--backfill-lane", default=SETTINGS.topics.backfill_lane,
                   help="topic suffix of the backfill lane whose replicas it runs too; '' for none")
    p.add_argument("--backfill-max", type=int, default=None, help="lane replicas per pool (default: the setting)")
    p.add_argument("--backfill-nice", type=int, default=SETTINGS.limits.backfill_nice)
    p.add_argument("--backfill-metrics-port-base", type=int, default=None, help="lane replica i: health on base + i")
    return p.parse_args(argv)


def targets_from(ns: argparse.Namespace) -> list[Target]:
    env = os.environ.get("RSCF_CONTROLLER_POOLS")
    pools = ns.pool or ([p for p in env.split(",") if p] if env else list(POOLS))
    if (ns.requests_topic or ns.group) and len(pools) != 1:
        raise SystemExit("--requests-topic/--group need exactly one --pool")
    out = []
    for p in pools:
        overrides = dict(lag_threshold=ns.lag_threshold, cooldown_s=ns.cooldown, stabilization_s=ns.stabilization,
                         scale_down_period_s=ns.scale_down_period)
        policy = Policy.of(pool_row(p), min_replicas=ns.min, max_replicas=ns.max, **overrides)
        args = list(ns.worker_arg)
        if ns.requests_topic:
            args += ["--requests-topic", ns.requests_topic]
        if ns.group:
            args += ["--group", ns.group]
        group = ns.group or f"rscf-workers-{p}"
        out.append(Target(p, policy, ns.requests_topic or SETTINGS.topics.requests(p), group,
                          args, ns.metrics_port_base, ns.replica_rps,
                          standby=pool_row(p).standby if ns.standby is None else ns.standby))
        if ns.backfill_lane:
            lane = ns.backfill_lane
            out.append(Target(p, lane_policy(pool_row(p), ns.backfill_max, **overrides), lane_topic(p, lane),
                              lane_group(group, lane), list(ns.worker_arg) + lane_worker_args(p, lane, group),
                              ns.backfill_metrics_port_base, lane=lane, nice=ns.backfill_nice))
    return out
