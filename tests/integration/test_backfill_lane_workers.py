"""The pool controller runs the backfill lane's workers: a backfill completes with no hand-started worker,
its replica is niced and on the lane's topics only, and the lane goes back to zero replicas afterwards.

Real processes: the controller (`python -m inference_workers.pool_controller`, private data dir for its PID
files, a private live topic that stays idle) and the `worker run` replicas it starts; real Flink (the lane's
pipeline job and the bounded ingest job), real Kafka and S3.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest

from deploy.local import backfill_progress, backfills, flink_jobs
from inference_workers.backfill_lanes import LANE_REPLICA_BASE
from jobs.backfill_results import ResultsStore
from operators.backfill import BackfillSpec
from rscf.s3 import s3_client
from rscf.kafka_clients import credentials_env
from rscf.settings import SETTINGS
from tests.integration.test_pool_controller import free_port_base
from tools import harness

pytestmark = pytest.mark.integration

ROWS = 30
NICE = 12


def _lane_workers(lane: str) -> dict[int, psutil.Process]:
    """`worker run` processes consuming this lane's echo topic, by pid."""
    topic = f"{SETTINGS.topics.requests('echo')}.{lane}"
    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        try:
            if "worker" in cmd and topic in cmd and p.status() != psutil.STATUS_ZOMBIE:
                found[p.info["pid"]] = p
        except psutil.NoSuchProcess:
            continue
    return found


class Watcher(threading.Thread):
    """Samples the lane's worker processes (replica index, niceness) while the backfill runs."""

    def __init__(self, lane: str):
        super().__init__(daemon=True)
        self.lane, self.seen, self.stop_event = lane, {}, threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for pid, p in _lane_workers(self.lane).items():
                try:
                    cmd = p.cmdline()
                    self.seen[pid] = (int(cmd[cmd.index("--replica") + 1]), p.nice())
                except (psutil.NoSuchProcess, ValueError, IndexError):
                    continue
            time.sleep(0.5)


@pytest.fixture()
def lane_and_controller(stack, tmp_path):
    lane = f"bfc{uuid.uuid4().hex[:6]}"
    cfg = backfills.lane_config(lane)
    backfills.ensure_lane(lane)
    data = tmp_path / "data"
    data.mkdir()
    run = uuid.uuid4().hex[:8]
    cmd = [sys.executable, "-m", "inference_workers.pool_controller", "--pool", "echo",
           "--requests-topic", f"{SETTINGS.topics.request_prefix}bfc-idle-{run}", "--group", f"rscf-it-bfc-{run}",
           "--metrics-port-base", str(free_port_base(4)), "--backfill-lane", lane,
           "--backfill-metrics-port-base", str(free_port_base(4)), "--backfill-nice", str(NICE),
           "--port", "-1", "--interval", "1", "--no-predictive", "--cpu-budget", "4",
           "--cooldown", "6", "--stabilization", "2", "--scale-down-period", "1"]
    log = open(data / "controller.log", "ab")
    env = {**os.environ, "RSCF_DATA_DIR": str(data), "PYTHONPATH": str(SETTINGS.paths.repo), **credentials_env()}
    ctl = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=SETTINGS.paths.repo)
    yield lane, ctl, data
    if ctl.poll() is None:
        ctl.send_signal(signal.SIGTERM)
        try:
            ctl.wait(60)
        except subprocess.TimeoutExpired:
            ctl.kill()
    for pid in _lane_workers(lane):  # only this test's replicas (its private lane topic)
        os.kill(pid, signal.SIGKILL)
    job = flink_jobs.running(cfg.job_name)
    if job is not None:
        flink_jobs.stop(job.job_id, with_savepoint=False)
    harness.delete_topics(cfg)


def test_backfill_completes_on_controller_run_lane_workers_that_go_back_to_zero(lane_and_controller):
    lane, ctl, data = lane_and_controller
    log = lambda: (data / "controller.log").read_text(errors="replace")[-4000:]  # noqa: E731
    time.sleep(4)
    assert _lane_workers(lane) == {}, "an idle backfill lane runs no replica"
    prefix = f"it-{uuid.uuid4().hex[:8]}/lanes"
    body = ("\n".join(json.dumps({"prompt": f"describe item {i}"}) for i in range(ROWS)) + "\n").encode()
    client = s3_client()
    if not client.bucket_exists(SETTINGS.buckets.backfill):
        client.make_bucket(SETTINGS.buckets.backfill)
    client.put_object(SETTINGS.buckets.backfill, f"{prefix}/rows.jsonl", io.BytesIO(body), len(body))
    spec = BackfillSpec(f"s3://{SETTINGS.buckets.backfill}/{prefix}", "bf-tenant", fmt="jsonl")
    watcher = Watcher(lane)
    watcher.start()
    backfills.start(spec, 200, lane=lane, features=["echo"], start_lane=False)  # no worker started by hand
    status = backfill_progress.watch(spec.backfill_id, interval_s=1.0, timeout_s=240)
    watcher.stop_event.set()
    assert status["state"] == "FINISHED", (status, log())
    rows = ResultsStore(spec).rows()
    assert len(rows) == ROWS and {r["status"] for r in rows} == {"SUCCEEDED"}, {r["status"] for r in rows}
    assert watcher.seen, "a lane replica ran"
    assert {index for index, _ in watcher.seen.values()} == {LANE_REPLICA_BASE}, watcher.seen
    assert {nice for _, nice in watcher.seen.values()} == {NICE}, "the lane replica runs niced"
    assert f"pool=echo.{lane} replica={LANE_REPLICA_BASE} started" in log()
    assert not list((data / "pids").glob("worker-echo-0.pid")), "no live replica was started"
    # idle again: after the cool-down (6 s) the replica is drained and the lane is back at zero
    drained = f"pool=echo.{lane} replica={LANE_REPLICA_BASE} drained and stopped"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_lane_workers(lane) or drained not in log()):
        time.sleep(0.5)
    assert _lane_workers(lane) == {}, log()
    assert drained in log(), "the controller saw its replica go"
    assert not list((data / "pids").glob("worker-*.pid"))
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(60) == 0
