"""Alert rules under simulated series (`promtool test rules`): the restart-loop alert fires on a loop, not on one fault."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"
SERIES = 'flink_jobmanager_job_numRestarts{job_name="rscf_content_pipeline", job_id="j1"}'
LABELS = {"job_name": "rscf_content_pipeline", "job_id": "j1", "severity": "critical"}


def _rule(name: str) -> dict:
    return next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if r.get("alert") == name)


def _test_file(tmp_path: Path, values: str, fires: bool) -> Path:
    annotations = {
        "summary": f"Flink job rscf_content_pipeline is in a restart loop: {values.split()[-1]} restarts in 15 minutes",
        "description": _rule("RscfFlinkJobRestartLoop")["annotations"]["description"],
    }
    alerts = [{"exp_labels": LABELS, "exp_annotations": annotations}] if fires else []
    doc = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": SERIES, "values": values}],
            "alert_rule_test": [{"eval_time": "14m", "alertname": "RscfFlinkJobRestartLoop", "exp_alerts": alerts}],
        }],
    }
    path = tmp_path / "restart_loop_test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
@pytest.mark.parametrize(("values", "fires"), [
    ("0 9 15 21 27 33 39 45 51 57 63 69 75 81 87", True),  # a loop under the back-off: 9, then 6 a minute
    ("0 0 0 1 1 1 1 1 1 1 1 1 1 1 1", False),  # a TaskManager killed once
    ("0 0 5 5 5 5 5 5 5 5 5 5 5 5 5", False),  # a TaskManager killed under load: 5 restarts while it came back
    ("0 0 2 2 2 5 5 5 5 5 5 5 5 5 5", False),  # two faults
])
def test_restart_loop_alert(tmp_path, values, fires):
    path = _test_file(tmp_path, values, fires)
    out = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
