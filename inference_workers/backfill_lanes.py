"""The pool controller's backfill lanes: per pool, replicas for the backfill lane's requests.

A backfill's requests go to `genai.inference.requests.<pool>.backfill` (and its `.high`/`.low` lanes),
answered on `genai.inference.results.backfill` (deploy/local/backfills.py). The controller gives every
pool a second target for them, so a backfill needs no hand-started worker:

- idle at 0 replicas; lag on the lane wakes one (KEDA activation), the pool's cool-down takes it back to 0;
- bounded: at most SETTINGS.limits.backfill_replicas_max (1) per pool, granted only from the CPU/GPU
  budget the live pools leave, and taken back while a live pool is held below its wish by the budget;
- niced (SETTINGS.limits.backfill_nice, 10; I/O best-effort 7): on a busy machine the scheduler runs
  live work first (CFS weight 110 vs 1024; with backfill_sched_idle on, SCHED_IDLE: weight 3);
- its own identity: replica indices from LANE_REPLICA_BASE (PID file `worker-<pool>-100.pid`, log,
  scrape target `worker-<pool>-100`, worker id), metrics ports from a block of their own
  (SETTINGS.ports.backfill_worker_metrics_first), consumer group `<pool group>-<lane>`, and the label
  `pool="<pool>.<lane>"` on the controller's metrics. Live replicas never reach index 100 (max 8 here).
"""

from __future__ import annotations

import logging
import os

from inference_workers.metrics import LANE_REPLICA_BASE
from inference_workers.scaling import Cost, Policy
from rscf.pools import Pool
from rscf.settings import SETTINGS

log = logging.getLogger("rscf.pool_controller")



def lane_topic(pool: str, lane: str) -> str:
    """The lane's request topic of a pool: the live topic with the lane's suffix (jobs.config.JobConfig.topic)."""
    return f"{SETTINGS.topics.requests(pool)}.{lane}"


def lane_results(lane: str) -> str:
    return f"{SETTINGS.topics.results}.{lane}"


def lane_group(base_group: str, lane: str) -> str:
    return f"{base_group}-{lane}"


def lane_policy(row: Pool, max_replicas: int | None = None, **overrides) -> Policy:
    """The pool's rules (lag threshold, cool-down, ...) with min 0 and the backfill's maximum."""
    top = SETTINGS.limits.backfill_replicas_max if max_replicas is None else max_replicas
    if not 1 <= top < LANE_REPLICA_BASE:
        raise ValueError(f"backfill replicas per pool must be 1..{LANE_REPLICA_BASE - 1}, not {top}")
    return Policy.of(row, **{**overrides, "min_replicas": 0, "max_replicas": top, "activation_lag": 0})


def lane_worker_args(pool: str, lane: str, base_group: str) -> list[str]:
    """What a lane replica adds to `rscf worker run` (after the common worker arguments: the last wins)."""
    return ["--requests-topic", lane_topic(pool, lane), "--results-topic", lane_results(lane),
            "--group", lane_group(base_group, lane)]


def lower_priority(pid: int, nice: int, idle: bool = SETTINGS.limits.backfill_sched_idle) -> None:
    """Renice a replica right after its start: its threads (librdkafka's, torch's) are created later and
    inherit it. I/O class best-effort, lowest level; with `idle`, every thread SCHED_IDLE as well (weight 3 vs
    1024: it runs on cores live work leaves idle). A failure is logged, never fatal."""
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        import psutil

        psutil.Process(pid).ionice(psutil.IOPRIO_CLASS_BE, 7)
        if idle:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
    except Exception as exc:  # noqa: BLE001 - OSError, psutil.NoSuchProcess (exited: the next tick sees it)
        log.warning("cannot lower the priority of pid %s: %s", pid, exc)


def lane_grants(lane_wants: dict[str, int], lane_running: dict[str, int], costs: dict[str, Cost],
                live_capped: bool, cpu_left: float, gpu_left_gb: float) -> dict[str, int]:
    """Replicas granted to the lanes from what the live pools left of the budget. A live pool held below
    its wish by the budget takes every lane to 0 (live first); otherwise running lanes that still fit are
    kept, then idle ones woken while they fit. Never above a wish."""
    granted = {name: 0 for name in lane_wants}
    if live_capped:
        return granted
    order = sorted(lane_wants, key=lambda n: (lane_running.get(n, 0) == 0, n))  # running ones keep their place
    progress = True
    while progress:
        progress = False
        for name in order:
            c = costs[name]
            if granted[name] < lane_wants[name] and c.cores <= cpu_left + 1e-9 and c.gpu_memory_gb <= gpu_left_gb + 1e-9:
                granted[name] += 1
                cpu_left -= c.cores
                gpu_left_gb -= c.gpu_memory_gb
                progress = True
    return granted
