"""The pool controller's backfill-lane targets: identity that never meets a live replica's, bounds, budget."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from inference_workers import pool_controller as pc
from inference_workers.backfill_lanes import LANE_REPLICA_BASE, lane_grants, lane_policy, lower_priority
from inference_workers.metrics import metrics_port
from inference_workers.scaling import Cost
from rscf.pools import POOL_TABLE, POOLS, pool
from rscf.settings import SETTINGS


def _targets(*argv: str) -> dict[str, pc.Target]:
    return {t.name: t for t in pc.targets_from(pc.parse(list(argv)))}


def test_every_pool_gets_a_backfill_lane_target_on_the_lane_topics():
    targets = _targets()
    for p in POOLS:
        live, lane = targets[p], targets[f"{p}.backfill"]
        assert (live.lane, lane.lane) == ("", "backfill")
        assert lane.topic == f"genai.inference.requests.{p}.backfill"
        assert lane.group == f"rscf-workers-{p}-backfill" != live.group
        args = lane.args(LANE_REPLICA_BASE)
        assert args[args.index("--requests-topic") + 1] == lane.topic
        assert args[args.index("--results-topic") + 1] == "genai.inference.results.backfill"
        assert args[args.index("--group") + 1] == lane.group
        assert (lane.policy.min_replicas, lane.policy.max_replicas) == (0, SETTINGS.limits.backfill_replicas_max)
        assert lane.nice == SETTINGS.limits.backfill_nice > 0 and live.nice == 0


def test_lane_and_live_replicas_never_share_an_index_or_a_port():
    targets = _targets("--backfill-max", "3")
    live_ports = {metrics_port(p, i) for p in POOLS for i in range(pool(p).max_replicas)}
    lane_ports = set()
    for p in POOLS:
        live, lane = targets[p], targets[f"{p}.backfill"]
        assert all(live.owns(i) and not lane.owns(i) for i in range(pool(p).max_replicas))
        indices = range(lane.first_index, lane.first_index + lane.policy.max_replicas)
        assert all(lane.owns(i) and not live.owns(i) for i in indices)
        for i in indices:
            args = lane.args(i)
            port = int(args[args.index("--metrics-port") + 1])
            assert port == lane.port(i)
            lane_ports.add(port)
    assert len(lane_ports) == 3 * len(POOLS), "no two lane replicas share a port"
    assert not lane_ports & live_ports
    assert max(p.max_replicas for p in POOL_TABLE) < LANE_REPLICA_BASE


def test_a_private_group_and_the_lane_can_be_turned_off():
    targets = _targets("--pool", "echo", "--requests-topic", "t.echo", "--group", "g", "--backfill-lane", "bfx",
                       "--worker-arg=--max-batch", "--worker-arg=4")
    lane = targets["echo.bfx"]
    assert lane.group == "g-bfx" and lane.topic == "genai.inference.requests.echo.bfx"
    assert lane.args(LANE_REPLICA_BASE)[:2] == ["--max-batch", "4"], "common worker arguments first"
    assert set(_targets("--backfill-lane", "")) == set(POOLS)


def test_lane_policy_bounds():
    assert lane_policy(pool("echo"), 1, cooldown_s=5).cooldown_s == 5
    for bad in (0, LANE_REPLICA_BASE):
        with pytest.raises(ValueError):
            lane_policy(pool("echo"), bad)


def test_lanes_get_what_live_leaves_and_nothing_while_live_is_capped():
    costs = {"a.b": Cost(1.0), "c.b": Cost(1.0), "g.b": Cost(1.0, 8.0)}
    wants = {"a.b": 1, "c.b": 1, "g.b": 1}
    assert lane_grants(wants, {"a.b": 1}, costs, True, 4.0, 16.0) == {"a.b": 0, "c.b": 0, "g.b": 0}
    assert lane_grants(wants, {}, costs, False, 3.0, 16.0) == {"a.b": 1, "c.b": 1, "g.b": 1}
    # one core left: the lane already running keeps it, the idle one waits
    assert lane_grants(wants, {"c.b": 1}, costs, False, 1.0, 0.0) == {"a.b": 0, "c.b": 1, "g.b": 0}
    assert lane_grants({"a.b": 0}, {"a.b": 1}, costs, False, 4.0, 0.0) == {"a.b": 0}, "never above a wish"


def test_lower_priority_renices_a_real_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lower_priority(proc.pid, 7, idle=False)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 7
        assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER
    finally:
        proc.kill()
        proc.wait()


def test_lower_priority_idle_puts_every_thread_on_sched_idle_and_threads_made_later_inherit_it():
    code = "import threading, time; time.sleep(0.5); threading.Thread(target=time.sleep, args=(30,)).start()"
    proc = subprocess.Popen([sys.executable, "-c", code + "; time.sleep(30)"])
    try:
        lower_priority(proc.pid, 7, idle=True)
        time.sleep(1.5)
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert len(tids) == 2, "the thread started after the call exists"
        assert [os.sched_getscheduler(t) for t in tids] == [os.SCHED_IDLE] * 2
    finally:
        proc.kill()
        proc.wait()


def test_a_replica_that_dies_just_before_a_start_counts_against_the_back_off_first(tmp_path, monkeypatch):
    """CI caught it: replica 0 died between the tick's look at exits and its start, and the controller
    started replica 1 at once, past the back-off; the exit was noticed a tick later. Now the start asks
    about exits first: the death is a crash, and nothing starts before its back-off."""
    from inference_workers import supervisor

    target = _targets("--pool", "echo")["echo"]
    pid_file = tmp_path / "worker-echo-0.pid"
    pid_file.write_text("999999")
    os.utime(pid_file, (1_000.0, 1_000.0))  # started at t=1000, dead at t=1003
    dead = supervisor.Replica("echo", 0, 999999, False, pid_file, tmp_path / "worker-echo-0.log", 0)
    started: list[int] = []
    monkeypatch.setattr(pc.supervisor, "replicas", lambda pool=None: [dead] if pid_file.exists() else [])
    monkeypatch.setattr(pc.supervisor, "alive_replicas", lambda pool: [])
    monkeypatch.setattr(pc.supervisor, "start_replica", lambda pool, index, args=None: started.append(index) or
                        supervisor.Replica(pool, index, 1, True, pid_file, pid_file, 0))
    monkeypatch.setattr(pc.standby, "parked", lambda pool: {})
    monkeypatch.setattr(pc.standby, "marker", lambda pool, index: tmp_path / f"parked-{index}")
    monkeypatch.setattr(pc, "unregister_scrape_target", lambda name: None)
    ctl = object.__new__(pc.Controller)  # no Kafka, no Redis: only what _apply uses
    ctl.backoff, ctl.metrics = pc.CrashBackoff(), pc.ControllerMetrics()
    target.spawned[0] = 1_000.0
    ctl._apply(target, 1, 1_003.0, keeping_up=False)
    assert started == [] and not pid_file.exists()  # noticed as a crash, and the back-off holds the start
    assert not ctl.backoff.may_start(target.name, 0, 1_003.5) and 0 not in target.spawned
    ctl._apply(target, 1, 1_004.5, keeping_up=False)  # past the first back-off (1 s): one start, index 0 again
    assert started == [0]
