"""A TaskManager killed mid-stream: the job restores from its last checkpoint and loses nothing.

With the exactly-once switch (transactional sinks, read_committed readers) every
accepted prompt ends in exactly one final result, even though the job replays
the records since its last checkpoint after the restore.
"""

from __future__ import annotations

import signal
import time

import pytest

from deploy.local import flink_jobs
from tools import harness

pytestmark = pytest.mark.integration

N = 60


def _kill_taskmanager() -> int:
    from deploy.local.processes import recorded_process
    from deploy.local.services import SERVICE_BY_NAME

    proc = recorded_process(SERVICE_BY_NAME["flink-taskmanager"].pid_file)
    assert proc is not None, "the stack's TaskManager is not running"
    for p in [proc] + proc.children(recursive=True):
        p.send_signal(signal.SIGKILL)
    proc.wait(10)
    return proc.pid


def _wait_running(job_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if flink_jobs.all_tasks_running(job_id):
            return
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not run again within {timeout_s} s")


def _completed_checkpoints(job_id: str) -> int:
    import httpx

    from rscf.settings import SETTINGS

    body = httpx.get(f"{SETTINGS.flink_url}/jobs/{job_id}/checkpoints", timeout=5).json()
    return int(body.get("counts", {}).get("completed", 0))


def test_taskmanager_killed_mid_stream_every_prompt_ends_once(stack):
    from deploy.local import stack as local_stack

    with harness.isolated_run("tm", exactly_once=True, checkpoint_interval_ms=2000) as run:
        ids = [f"tm-{i:03d}" for i in range(N)]
        run.producer.control(harness.policy_event("tm-t", ["echo"]))
        run.producer.flush()
        run.job.start()
        run.worker.start()
        for rid in ids[: N // 2]:
            run.producer.prompt(harness.prompt(rid, "tm-t", f"before the crash {rid}"))
            time.sleep(0.05)
        run.producer.flush()
        deadline = time.monotonic() + 60
        while _completed_checkpoints(run.job.job_id) < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _completed_checkpoints(run.job.job_id) >= 1, "no checkpoint completed before the crash"

        _kill_taskmanager()
        for rid in ids[N // 2 :]:  # keeps arriving while the job is down
            run.producer.prompt(harness.prompt(rid, "tm-t", f"after the crash {rid}"))
        run.producer.flush()
        local_stack.up()  # starts a new TaskManager in place of the dead one
        _wait_running(run.job.job_id, 180)

        got = run.reader.until(lambda g: all(r in g.content for r in ids), 240)
        got = run.reader.settle(6)  # a replayed final would show up here
        counts = {r: len(got.content.get(r, [])) for r in ids}
        assert counts == {r: 1 for r in ids}, {r: c for r, c in counts.items() if c != 1}
        assert all(got.content[r][0]["status"] == "SUCCEEDED" for r in ids)
        assert {r: len(got.audit.get(r, [])) for r in ids} == {r: 1 for r in ids}
        assert got.dlq == []
