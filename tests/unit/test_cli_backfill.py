"""`rscf backfill start`: what it asks of deploy.local.backfills, and what the progress bar says."""

from __future__ import annotations

from cli.commands.backfill import _bar
from cli.main import main


def _started_with(monkeypatch, argv: list[str]):
    from deploy.local import backfills

    seen = {}
    monkeypatch.setattr(backfills, "start", lambda spec, budget, **kw: seen.update(kw, budget=budget) or
                        {"backfill_id": spec.backfill_id, "state": "RUNNING"})
    assert main(["backfill", "start", "s3://rscf-backfill/x", "--tenant", "acme", "--json", *argv]) == 0
    return seen


def test_start_yields_to_live_by_default_and_no_yield_reads_at_the_budget(monkeypatch):
    default = _started_with(monkeypatch, ["--budget", "300"])
    assert default["budget"] == 300 and default["yielding"].live_busy > 0, "live first by default"
    full = _started_with(monkeypatch, ["--no-yield"])["yielding"]
    assert (full.live_busy, full.yield_busy) == (0.0, 0.0), "--no-yield: neither live nor the CPU slows it"
    assert full.max_lag_s == default["yielding"].max_lag_s, "the lane's lag stays bounded (back-pressure)"


def test_the_progress_bar_says_when_the_backfill_yields_to_live():
    s = {"fraction": 0.5, "done": 50, "rows_total": 100, "rows_dead": 0, "job_state": "RUNNING", "eta_s": None}
    assert "yielding to live" in _bar({**s, "yielding_to_live": 1.0})
    assert "yielding to live" not in _bar({**s, "yielding_to_live": 0.0})
