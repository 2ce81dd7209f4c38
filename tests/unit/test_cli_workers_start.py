"""`rscf workers start --wait`: what counts as a pool already running, and what happens when the replica
it waits for goes away (a crash, or the pool controller draining an idle pool) before it is ready.

Replicas here are real processes whose command line names the pool (the supervisor's PID check reads
/proc), sleeping or exiting at once; only the /readyz probe is replaced."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cli.commands import workers as workers_cli
from inference_workers import supervisor
from inference_workers.metrics import LANE_REPLICA_BASE, metrics_port
from rscf.settings import SETTINGS

POOL = "echo"


def _spawn(index: int, code: str, children: list[subprocess.Popen]) -> supervisor.Replica:
    """A process that passes for replica `index` of POOL: its PID file, its log, `worker` and the pool in argv."""
    SETTINGS.paths.pids.mkdir(parents=True, exist_ok=True)
    SETTINGS.paths.logs.mkdir(parents=True, exist_ok=True)
    with open(supervisor.log_file(POOL, index), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, "worker", POOL], stdout=log, stderr=subprocess.STDOUT)
    children.append(proc)
    supervisor.pid_file(POOL, index).write_text(f"{proc.pid}\n")
    return supervisor.replica(POOL, index)


@pytest.fixture
def children(data):
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


SLEEP = "import time; print('loading the model', flush=True); time.sleep(60)"
CRASH = "import sys; print('cannot load the model: boom', flush=True); sys.exit(3)"


def test_lane_replicas_and_parked_standbys_do_not_count_as_the_pool_running(children) -> None:
    _spawn(LANE_REPLICA_BASE, SLEEP, children)  # a backfill lane's replica reads other topics
    _spawn(0, SLEEP, children)
    supervisor.standby_marker(POOL, 0).touch()  # parked: not in the consumer group
    assert supervisor.serving_replicas(POOL) == []
    assert supervisor.free_index(POOL) == 1
    supervisor.standby_marker(POOL, 0).unlink()
    assert [r.replica for r in supervisor.serving_replicas(POOL)] == [0]
    # the lane replica's health port is the one its controller gave it, not a live replica's
    assert supervisor.replica(POOL, LANE_REPLICA_BASE).port == SETTINGS.ports.backfill_worker_metrics_first + \
        supervisor.replica(POOL, 0).port - SETTINGS.ports.worker_metrics_first
    assert metrics_port(POOL, LANE_REPLICA_BASE) != metrics_port(POOL, 0)


def test_a_replica_gone_before_it_was_ready_is_replaced(children, monkeypatch) -> None:
    """Replica 0 exits while we wait (drained or crashed): a new one is started, and its readiness counts."""
    _spawn(0, "import time; time.sleep(1.5)", children)
    starts: list[int] = []
    monkeypatch.setattr(supervisor, "start_replica",
                        lambda pool, index, extra=None: starts.append(index) or _spawn(index, SLEEP, children))
    ready_port = metrics_port(POOL, 0)
    monkeypatch.setattr(workers_cli, "_probe", lambda port: "ready" if port == ready_port and starts else "no-http")
    t0 = time.monotonic()
    assert workers_cli._wait_ready([POOL], 30, started={POOL}) == {}
    assert starts == [0], "the replacement took the freed index"
    assert time.monotonic() - t0 < 20


def test_a_replica_that_keeps_exiting_is_reported_with_its_log(children, monkeypatch) -> None:
    monkeypatch.setattr(supervisor, "start_replica", lambda pool, index, extra=None: _spawn(index, CRASH, children))
    monkeypatch.setattr(workers_cli, "_probe", lambda port: "no-http")
    supervisor.start_replica(POOL, 0)
    failed = workers_cli._wait_ready([POOL], 30, started={POOL})
    assert list(failed) == [POOL]
    assert f"({workers_cli.START_ATTEMPTS} started)" in failed[POOL]
    assert "cannot load the model: boom" in failed[POOL], "the reason is in the message, not only in the log"


def test_a_replica_that_never_gets_ready_is_reported_after_the_wait(children, monkeypatch) -> None:
    _spawn(0, SLEEP, children)
    monkeypatch.setattr(workers_cli, "_probe", lambda port: "not-ready")
    failed = workers_cli._wait_ready([POOL], 2, started=set())
    assert failed[POOL].startswith("not ready after 2 s") and "loading the model" in failed[POOL]


def test_a_new_replica_on_a_drained_index_is_not_mistaken_for_the_drained_one(children, monkeypatch) -> None:
    """The controller drained replica 0, it exited, and `rscf workers start` started a new replica 0 at
    once. The controller took the new process for the old one: "still running after SIGTERM" every
    tick, and at its stop it deleted the new replica's PID file, so `rscf down` never stopped it and it
    kept the pool's health port (the next CI run's replica fell back to an ephemeral one, never ready)."""
    from inference_workers import pool_controller as pc
    from inference_workers.controller_targets import Target
    from inference_workers.scaling import CrashBackoff, Policy

    old = _spawn(0, "pass", children)  # drained: exits at once
    children[-1].wait()
    new = _spawn(0, SLEEP, children)  # the index's new replica
    killed: list[int] = []
    monkeypatch.setattr(pc, "_signal", lambda pid, sig: killed.append(pid))
    ctl = pc.Controller.__new__(pc.Controller)  # no broker, no Redis: only the drain bookkeeping
    ctl.backoff = CrashBackoff()
    t = Target(POOL, Policy(min_replicas=0, max_replicas=2, lag_threshold=5), "req", "grp")
    t.draining[0] = (old.pid, 0.0)  # its grace long over
    ctl._settle(t, 10.0)
    assert t.draining == {} and killed == [], "the drain is over; the new process is not killed"
    assert supervisor.pid_file(POOL, 0).exists() and supervisor.replica(POOL, 0).pid == new.pid
    t.draining[0] = (old.pid, 0.0)
    ctl.targets = {POOL: t}
    ctl.drain_all()
    assert supervisor.replica(POOL, 0).alive, "drain_all leaves another process's PID file alone"


def test_a_replica_on_a_fallback_port_is_probed_where_it_announced_itself(children) -> None:
    """A replica that found its health port taken serves on an ephemeral one and announces it (its scrape
    target); the supervisor and the pool controller probe that port, not the one it was given. (Before, such
    a replica stayed "not ready" for 600 s: the e2e failure of session 7.)"""
    from inference_workers.controller_targets import Target
    from inference_workers.metrics import register_scrape_target, unregister_scrape_target
    from inference_workers.scaling import Policy

    _spawn(0, SLEEP, children)
    assert supervisor.replica(POOL, 0).port == metrics_port(POOL, 0)  # nothing announced yet
    register_scrape_target(f"worker-{POOL}-0", 47_123, {"pool": POOL, "replica": "0"})
    try:
        assert supervisor.replica(POOL, 0).port == 47_123
        assert Target(POOL, Policy(min_replicas=0, max_replicas=2, lag_threshold=5), "req", "grp").port(0) == 47_123
        assert supervisor.replica(POOL, 1).port == metrics_port(POOL, 1)
    finally:
        unregister_scrape_target(f"worker-{POOL}-0")
    assert supervisor.replica(POOL, 0).port == metrics_port(POOL, 0)
