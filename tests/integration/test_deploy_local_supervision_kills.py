"""The local stack heals itself: supervisord restarts a killed service, a killed TaskManager's or JobManager's
job runs again from its last checkpoint with nobody typing a command, and a crash loop makes `up` fail with the log tail."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def _kill(name: str) -> int:
    from deploy.local import supervision

    prog = supervision.program_states(supervision.layout()).get(name)
    assert prog is not None and prog.pid, f"{name} does not run under supervisord: {prog}"
    os.kill(prog.pid, signal.SIGKILL)
    return prog.pid


def _wait_back(name: str, old_pid: int, timeout_s: float) -> float:
    """Seconds until a new process of the service passes its health check."""
    from deploy.local import supervision
    from deploy.local.services import SERVICE_BY_NAME

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        prog = supervision.program_states(supervision.layout()).get(name)
        if prog is not None and prog.pid not in (None, old_pid) and SERVICE_BY_NAME[name].health():
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"{name} not healthy again {timeout_s} s after SIGKILL")


def _restarts(name: str) -> int:
    from deploy.local import stack as local_stack
    from deploy.local.services import SERVICE_BY_NAME

    return local_stack.service_state(SERVICE_BY_NAME[name]).restarts


def test_killed_redis_is_back_by_itself(stack):
    from deploy.local import stack as local_stack
    from deploy.local.processes import recorded_process
    from deploy.local.services import SERVICE_BY_NAME

    before = _restarts("redis")
    old = _kill("redis")
    took = _wait_back("redis", old, 30)
    state = local_stack.service_state(SERVICE_BY_NAME["redis"])
    assert state.healthy and state.pid != old and state.state in ("STARTING", "RUNNING")
    assert state.restarts == before + 1
    assert recorded_process(SERVICE_BY_NAME["redis"].pid_file).pid == state.pid  # the PID file follows
    print(f"figures: redis back in {took:.1f} s")


def _checkpoints(job_id: str) -> dict:
    from rscf.settings import SETTINGS

    return httpx.get(f"{SETTINGS.flink_url}/jobs/{job_id}/checkpoints", timeout=5).json()


def _answering_with_a_checkpoint(run, prefix: str) -> tuple[str, list[str]]:
    """Start the run's job and worker, see three prompts answered and one checkpoint completed."""
    from tools import harness

    run.producer.control(harness.policy_event(f"{prefix}-t", ["echo"]))
    run.producer.flush()
    run.job.start()
    run.worker.start()
    job_id = run.job.job_id
    early = [f"{prefix}-a{i}" for i in range(3)]
    for rid in early:
        run.producer.prompt(harness.prompt(rid, f"{prefix}-t", f"before the kill {rid}"))
    run.producer.flush()
    got = run.reader.until(lambda g: all(r in g.content for r in early), 90)
    assert all(r in got.content for r in early), "the pipeline did not answer before the kill"
    deadline = time.monotonic() + 30
    while _checkpoints(job_id)["counts"]["completed"] < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _checkpoints(job_id)["counts"]["completed"] >= 1
    return job_id, early


def test_killed_taskmanager_is_back_and_the_job_runs_again_from_its_checkpoint(stack):
    from deploy.local import flink_jobs
    from tools import harness

    with harness.isolated_run("sup", checkpoint_interval_ms=1000) as run:
        job_id, early = _answering_with_a_checkpoint(run, "sup")

        before = _restarts("flink-taskmanager")
        t0 = time.monotonic()
        _kill("flink-taskmanager")  # nobody calls `rscf up` below
        late = [f"sup-b{i}" for i in range(3)]
        for rid in late:
            run.producer.prompt(harness.prompt(rid, "sup-t", f"after the kill {rid}"))
        run.producer.flush()
        # Region failover restarts the tasks while the job itself may stay RUNNING: the restore of a
        # checkpoint (or the job leaving RUNNING) is what shows it went through a restart.
        left_running = None
        while time.monotonic() - t0 < 120:
            state = httpx.get(f"{stack.flink_url}/jobs/{job_id}", timeout=5).json()["state"]
            tasks_ok = state == "RUNNING" and flink_jobs.all_tasks_running(job_id)
            if left_running is None and (not tasks_ok or _checkpoints(job_id).get("latest", {}).get("restored")):
                left_running = time.monotonic() - t0
            if left_running is not None and tasks_ok:
                break
            time.sleep(0.5)
        back = time.monotonic() - t0
        assert left_running is not None and flink_jobs.all_tasks_running(job_id), \
            f"job {job_id} not running again {back:.0f} s after the TaskManager was killed"
        restored = _checkpoints(job_id).get("latest", {}).get("restored")
        assert restored and not restored["is_savepoint"], "the job did not restore from its checkpoint"
        got = run.reader.until(lambda g: all(r in g.content for r in late), 90)
        assert all(r in got.content for r in late), "prompts sent after the kill were not answered"
        assert _restarts("flink-taskmanager") == before + 1
        print(f"figures: job left RUNNING after {left_running:.1f} s, all tasks running again after {back:.1f} s, "
              f"restored checkpoint {restored['id']}")


def test_killed_jobmanager_is_back_and_recovers_its_job_from_its_checkpoint(stack):
    """Without HA a restarted JobManager starts empty and the job is gone; with ZooKeeper HA it takes the
    job back (same job id) from its latest checkpoint, and every prompt gets exactly one final."""
    from deploy.local import flink_jobs
    from tools import harness

    with harness.isolated_run("jmk", checkpoint_interval_ms=1000) as run:
        job_id, early = _answering_with_a_checkpoint(run, "jmk")

        before = _restarts("flink-jobmanager")
        t0 = time.monotonic()
        old = _kill("flink-jobmanager")  # nobody calls `rscf up` below
        late = [f"jmk-b{i}" for i in range(3)]
        for rid in late:
            run.producer.prompt(harness.prompt(rid, "jmk-t", f"after the kill {rid}"))
        run.producer.flush()
        back = _wait_back("flink-jobmanager", old, 120)
        running = None
        while time.monotonic() - t0 < 180:
            try:
                state = httpx.get(f"{stack.flink_url}/jobs/{job_id}", timeout=5).json().get("state")
            except (httpx.HTTPError, ValueError):
                state = None
            if state == "RUNNING" and flink_jobs.all_tasks_running(job_id):
                running = time.monotonic() - t0
                break
            time.sleep(0.5)
        assert running is not None, f"job {job_id} not recovered {time.monotonic() - t0:.0f} s after the JobManager kill"
        got = run.reader.until(lambda g: all(r in g.content for r in late), 120)
        assert all(r in got.content for r in late), "prompts sent after the kill were not answered"
        got = run.reader.settle(5)
        assert all(len(got.content[r]) == 1 for r in early + late), "a prompt got more than one final"
        assert _restarts("flink-jobmanager") == before + 1
        print(f"figures: JobManager healthy again after {back:.1f} s, job {job_id} running again after {running:.1f} s")


@pytest.fixture
def table_restored(stack):
    """A test that swaps the service table leaves the stack's supervisord config as `up` writes it.

    Ask for it before `monkeypatch`, so that it runs after the table is back."""
    yield
    from deploy.local import stack as local_stack

    local_stack.up()


def test_crash_loop_fails_up_with_the_log_tail(stack, table_restored, monkeypatch):
    from deploy.local import stack as local_stack
    from deploy.local import supervision
    from deploy.local.processes import Service, StackError

    svc = Service("doomed", (), lambda: ["bash", "-c", "echo boom-marker; exit 3"], lambda: False, "n/a",
                  start_timeout_s=60)
    monkeypatch.setattr(local_stack, "SERVICES", (svc,))
    t0 = time.monotonic()
    with pytest.raises(StackError) as err:
        local_stack.up()
    took = time.monotonic() - t0
    assert "doomed: crash loop" in str(err.value) and "FATAL" in str(err.value)
    assert str(svc.log) in str(err.value) and "boom-marker" in str(err.value)
    assert took < 40, took
    assert supervision.program_states(supervision.layout())["doomed"].state == "FATAL"
    (state,) = local_stack.status()
    assert state.state == "FATAL" and not state.healthy and state.restarts >= 1 + supervision.START_RETRIES
