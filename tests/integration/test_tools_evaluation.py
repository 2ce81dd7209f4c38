"""A CI-sized `rscf evaluate`: the three deployments under the same tiny load, a steady run, a model
kill and slow object storage each; every request is accounted for and none is lost while nothing is killed."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration


def test_every_request_is_accounted_for_in_every_deployment(stack, tmp_path):
    from tools import evaluation
    from tools.evaluation_metrics import summarise
    from tools.evaluation_report import write_html

    plan = evaluation.Plan(scenarios=("steady", "outage", "slow-s3"), rate=8, duration_s=6, drain_s=60,
                           restart_delay_s=1.5, s3_latency_ms=200)
    report = evaluation.evaluate(plan)
    runs = {(r["deployment"], r["scenario"]): r for r in report["runs"]}
    assert set(runs) == {(d, s) for d in evaluation.DEPLOYMENTS for s in plan.scenarios}
    for (dep, scenario), r in runs.items():
        assert r["sent"] == len(evaluation.schedule(scenario, plan.rate, plan.duration_s))
        assert r["answered"] + r["rejected"] + r["errors"] + r["lost"] == r["sent"], (dep, scenario, r)
        assert r["duplicated"] == 0, (dep, scenario)
        if scenario == "steady":
            assert r["answered"] == r["sent"], (dep, r)
        elif scenario == "slow-s3":  # every deployment ran behind the proxy; echo stores nothing: all answered
            assert r["answered"] == r["sent"] and r["kill_at_s"] is not None, (dep, r)
            assert any("200 ms" in n and "late each way" in n for n in r["notes"]), r["notes"]
        else:
            assert r["kill_at_s"] is not None and r["recovery"]["first_answer_s"] is not None, (dep, r)
    # RSCF keeps what arrives while its worker is dead in Kafka and answers it after the restart
    assert runs[("rscf", "outage")]["lost"] == 0 and runs[("rscf", "outage")]["answered"] == runs[("rscf", "outage")]["sent"]
    # ... and nobody restarted that worker but its pool controller: the live replicas went to 0 and back
    live = [sum(n.values()) for s in report["series"] if (s["deployment"], s["scenario"]) == ("rscf", "outage")
            for _t, n in s["replicas"]]
    assert 0 in live and live[-1] >= 1, live
    page = write_html(report, tmp_path / "evaluation.html")
    assert "<svg" in page.read_text() and "monolith" in page.read_text()
    assert summarise([], 1, 0, 1)["sent"] == 0
    assert "RSCF_S3_ENDPOINT" not in os.environ  # the proxy's endpoint left with it
