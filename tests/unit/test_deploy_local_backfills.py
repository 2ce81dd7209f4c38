"""The backfill lane's control events: the tenant's backfill budget and the version pin (no services)."""

from __future__ import annotations

import os

from operators.backfill import BackfillSpec

SPEC = BackfillSpec("s3://rscf-backfill/catalogue/2026", "acme", "2", "LOW", "jsonl")


def test_budget_events_copy_live_tier_and_features_and_pin_the_version_on_the_lane():
    from deploy.local.backfills import budget_events
    from rscf.pools import POOL_TABLE

    events = budget_events(SPEC, 300, {"tier": "PREMIUM", "features": ["echo"]})
    policy = events[0]["tenant_policy"]
    assert (policy["tenant_id"], policy["tier"], policy["rate_per_s"], policy["features"]) == \
        ("acme", "PREMIUM", 300.0, ["echo"])
    assert {e["rollout"]["pool"]: e["rollout"]["weights"] for e in events[1:]} == \
        {p.name: {"2": 1.0} for p in POOL_TABLE}
    plain = budget_events(BackfillSpec(SPEC.uri, "acme"), 10, None)
    assert plain[0]["tenant_policy"]["tier"] == "STANDARD"
    assert {e["rollout"]["pool"]: e["rollout"]["weights"] for e in plain[1:]} == \
        {p.name: {p.default_version: 1.0} for p in POOL_TABLE}



def test_yielding_ingest_runs_in_a_niced_process_mode_worker_and_not_yielding_as_before(tmp_path, monkeypatch):
    import dataclasses
    import subprocess

    from deploy.local import backfills
    from jobs.backfill_ingest import pacing, parse

    settings = backfills.SETTINGS
    monkeypatch.setattr(backfills, "SETTINGS", dataclasses.replace(settings, paths=dataclasses.replace(
        settings.paths, data=tmp_path)))
    niced = "import os; print(os.nice(0), os.sched_getscheduler(0))"
    for idle, policy in ((True, os.SCHED_IDLE), (False, os.SCHED_OTHER)):
        y = dataclasses.replace(backfills.Yielding("process", 0.8, 10, 2000), sched_idle=idle)
        ns = parse(backfills._ingest_args("b1", "backfill", 500, y))
        assert (ns.execution_mode, ns.yield_busy, ns.max_rows_per_s) == ("process", 0.8, 500)
        assert ns.python_executable.startswith(str(tmp_path))
        out = subprocess.run([ns.python_executable, "-c", niced], capture_output=True, text=True)
        assert out.stdout.split() == [str(os.nice(0) + 10), str(policy)], "the Python worker runs niced (and idle)"
    old = parse(backfills._ingest_args("b1", "backfill", 500, backfills.NOT_YIELDING))
    assert (old.execution_mode, old.yield_busy, old.python_executable) == ("thread", 0.0, None)
    assert pacing(old)["live_busy"] == 0.0 and pacing(old)["max_lag_s"] == 0.0, "as before: a fixed pace"
    live_first = pacing(parse(backfills._ingest_args("b1", "backfill", 500, backfills.Yielding())))
    assert live_first["live_busy"] > 0 and live_first["max_lag_s"] > 0, "the defaults: live first, the lag bounded"
    assert live_first["lane_group"] == backfills.lane_config("backfill").group_id, "the lane job's own group"
    every_2s, every_0 = (dataclasses.replace(backfills.Yielding(), lane_checkpoint_ms=ms) for ms in (2000, 0))
    assert backfills.lane_config("x", every_2s).checkpoint_interval_ms == 2000
    from jobs.config import EXACTLY_ONCE, default_checkpoint_interval_ms

    assert backfills.lane_config("x", every_0).checkpoint_interval_ms == default_checkpoint_interval_ms(EXACTLY_ONCE), \
        "0: the delivery mode's default"
    # a row queued behind live traffic is not expired on the live 30 s deadline; the live job keeps it
    lane = backfills.lane_config("x", every_2s)
    assert lane.limits().request_timeout_ms == settings.limits.backfill_request_timeout_ms > 10 * 30_000
    assert "--request-timeout-ms" in lane.to_args() and "--request-timeout-ms" not in backfills.JobConfig().to_args()


def test_a_process_mode_lane_runs_the_pipeline_python_niced_and_a_thread_mode_lane_inside(tmp_path, monkeypatch):
    import dataclasses
    import subprocess

    from deploy.local import backfills
    from jobs import content_pipeline
    from jobs.config import parse

    class Recorded(dict):
        def set_string(self, key, value):
            self[key] = value

    settings = backfills.SETTINGS
    monkeypatch.setattr(backfills, "SETTINGS", dataclasses.replace(settings, paths=dataclasses.replace(
        settings.paths, data=tmp_path)))
    monkeypatch.setattr(content_pipeline, "Configuration", Recorded)
    process = backfills.lane_config("x", dataclasses.replace(backfills.Yielding(), lane_mode="process", nice=10,
                                                             sched_idle=True))
    assert parse(process.to_args()) == dataclasses.replace(process, redis_url=parse(process.to_args()).redis_url)
    conf = content_pipeline.flink_configuration(process)
    assert conf["python.execution-mode"] == "process" and conf["python.executable"] == process.python_worker
    out = subprocess.run([process.python_worker, "-c", "import os; print(os.nice(0), os.sched_getscheduler(0))"],
                         capture_output=True, text=True)
    assert out.stdout.split() == [str(os.nice(0) + 10), str(os.SCHED_IDLE)], "the lane's Python workers: niced, idle"
    thread = backfills.lane_config("x", dataclasses.replace(backfills.Yielding(), lane_mode="thread"))
    conf = content_pipeline.flink_configuration(thread)
    assert (thread.python_worker, conf["python.execution-mode"]) == ("", "thread")
    assert "--python-worker" not in thread.to_args()
    assert content_pipeline.flink_configuration(backfills.JobConfig())["python.execution-mode"] == "thread", \
        "the live job stays in thread mode"


def test_the_lane_counts_its_budget_by_read_time_so_a_lane_that_catches_up_rejects_nothing():
    """Rows read at the budget's pace (created_at 2 ms apart = 500/s), arriving at the gate all at once after
    a stall behind live traffic: by arrival the bucket (10 s of budget) runs dry; by read time none is over."""
    from deploy.local import backfills
    from jobs.envelopes import Admitted, Finished, PromptIn
    from jobs.gate import gate
    from operators.admit import TenantPolicy
    from operators.moderate import Moderator
    from tools.harness import prompt

    assert backfills.lane_config("x").admit_by_created_at and not backfills.JobConfig().admit_by_created_at
    assert "--admit-by-created-at" in backfills.lane_config("x").to_args()
    policy = TenantPolicy("bf", rate_per_s=500, burst=5_000)
    read_at = 1_000_000

    def run(by_created_at: bool) -> dict[str, int]:
        bucket, out = None, {"admitted": 0, "quota": 0}
        for i in range(8_000):  # 16 s of rows, caught up 60 s after the first was read, in 1 s
            rec = prompt(f"r{i}", "bf", "hello", created_at=read_at + 2 * i)
            r = gate(PromptIn(rec, "hello", (0, i)), policy, bucket, read_at + 60_000 + i // 8, Moderator(),
                     admit_by_created_at=by_created_at)
            bucket = r.bucket
            if isinstance(r.out, Admitted):
                out["admitted"] += 1
            elif isinstance(r.out, Finished) and r.out.state.reason == "quota_exceeded":
                out["quota"] += 1
        return out

    assert run(True) == {"admitted": 8_000, "quota": 0}
    by_arrival = run(False)
    assert by_arrival["quota"] > 2_000, by_arrival  # what the lane did before


def test_a_resume_may_lower_the_pace_and_raise_it_back_to_the_start_budget_only():
    import pytest

    from deploy.local.backfills import lowered_budget
    from operators.backfill import BadInput

    state = {"budget_rows_per_s": 200.0}
    assert lowered_budget(state, None) == 200.0
    assert lowered_budget(state, 10.0) == 10.0 and state["start_budget_rows_per_s"] == 200.0
    state["budget_rows_per_s"] = 10.0  # what resume saves
    assert lowered_budget(state, 200.0) == 200.0  # back up to the start's
    for bad in (0.0, -5.0, 200.5):
        with pytest.raises(BadInput, match="token bucket"):
            lowered_budget(state, bad)
