"""The backfill lane's control events: the tenant's backfill budget and the version pin (no services)."""

from __future__ import annotations

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
