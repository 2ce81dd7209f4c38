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
    from jobs.backfill_ingest import parse

    settings = backfills.SETTINGS
    monkeypatch.setattr(backfills, "SETTINGS", dataclasses.replace(settings, paths=dataclasses.replace(
        settings.paths, data=tmp_path)))
    ns = parse(backfills._ingest_args("b1", "backfill", 500, backfills.Yielding("process", 0.8, 10, 2000)))
    assert (ns.execution_mode, ns.yield_busy, ns.max_rows_per_s) == ("process", 0.8, 500)
    assert ns.python_executable.startswith(str(tmp_path))
    out = subprocess.run([ns.python_executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True)
    assert out.stdout.strip() == str(os.nice(0) + 10), "the Python worker's interpreter runs niced"
    old = parse(backfills._ingest_args("b1", "backfill", 500, backfills.NOT_YIELDING))
    assert (old.execution_mode, old.yield_busy, old.python_executable) == ("thread", 0.0, None)
    assert backfills.lane_config("x", 2000).checkpoint_interval_ms == 2000
    assert backfills.lane_config("x", 0).checkpoint_interval_ms == 200, "0: the delivery mode's default"
    # a row queued behind live traffic is not expired on the live 30 s deadline; the live job keeps it
    lane = backfills.lane_config("x", 2000)
    assert lane.limits().request_timeout_ms == settings.limits.backfill_request_timeout_ms > 10 * 30_000
    assert "--request-timeout-ms" in lane.to_args() and "--request-timeout-ms" not in backfills.JobConfig().to_args()
