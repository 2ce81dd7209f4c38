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



def test_a_live_rscf_job_submitted_with_other_code_is_stale():
    from deploy.local.flink_jobs import JobInfo, stale_jobs

    submitted = {"old": "digest-1", "new": "digest-2", "gone": "digest-1", "bare": None, "other": "digest-1"}
    found = [JobInfo(jid, "rscf-content-pipeline" if jid != "other" else "someone-elses", state, 0, 0)
             for jid, state in (("old", "RUNNING"), ("new", "RUNNING"), ("gone", "CANCELED"), ("bare", "RUNNING"),
                                ("other", "RUNNING"))]
    # the job recovered with its old graph, and one from before jobs carried a digest; not the current
    # one, a finished one, or a job that is not RSCF's
    assert [j.job_id for j in stale_jobs(found, "digest-2", submitted.get)] == ["old", "bare"]
    assert [j.job_id for j in stale_jobs(found, "digest-1", submitted.get)] == ["new", "bare"]


def test_the_code_digest_follows_job_code_and_only_job_code(tmp_path):
    from rscf.code_digest import code_digest

    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "a.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("docs")
    first = code_digest(tmp_path)
    (tmp_path / "README.md").write_text("other docs")
    assert code_digest(tmp_path) == first
    (tmp_path / "jobs" / "a.py").write_text("x = 2\n")
    assert code_digest(tmp_path) != first
