"""How `rscf job start` calls Flink's client (no cluster needed)."""

from __future__ import annotations

from deploy.local.flink_jobs import flink_command
from jobs.config import JobConfig


def test_savepoint_restore_passes_allow_non_restored_state_only_when_asked():
    cfg = JobConfig(job_name="j", parallelism=2)
    plain = flink_command(cfg)
    assert "-s" not in plain and "--allowNonRestoredState" not in plain
    assert plain[plain.index("-p") + 1] == "2"
    strict = flink_command(cfg, "file:///sp/1")
    assert strict[strict.index("-s") + 1] == "file:///sp/1" and "--allowNonRestoredState" not in strict
    upgrade = flink_command(cfg, "file:///sp/1", allow_non_restored=True)
    assert "--allowNonRestoredState" in upgrade
    assert upgrade.index("--allowNonRestoredState") < upgrade.index("--job-name")  # a flink option, not a job arg
