"""No secret the stack generated appears in any of its logs (issue #16, "secrets hygiene").

Runs after the suite's pipeline and backfill tests (file order), so the logs hold job submissions
(Flink's client logs the job's arguments), JobManager and TaskManager starts (Flink logs their JVM
options) and every service's own lines. Two leaks it found: the Java key stores' random password in the
JVM options, and the job's Redis password in the job's arguments."""

from __future__ import annotations

from pathlib import Path

from rscf.settings import SETTINGS

MIN_LEN = 12  # shorter values (user names, "operator") are not secrets


def generated_secrets(base: Path) -> dict[str, str]:
    """One-line values under the secrets directory: passwords, tokens, S3 keys (PEM files are multi-line)."""
    out = {}
    for path in base.rglob("*"):
        if path.is_file() and path.stat().st_size < 512:
            value = path.read_text(errors="replace").strip()
            if len(value) >= MIN_LEN and "\n" not in value:
                out[str(path.relative_to(base))] = value
    return out


def test_no_generated_secret_in_any_log(stack):
    secrets = generated_secrets(SETTINGS.paths.data / "secrets")
    assert len(secrets) >= 5, sorted(secrets)  # the stack's passwords are there to look for
    logs = [p for p in SETTINGS.paths.logs.glob("*.log*") if p.is_file()]
    assert any(p.name.startswith("flink--taskexecutor") for p in logs)
    leaks = []
    for log in logs:
        with open(log, "rb") as f:
            data = f.read()
        leaks += [f"{log.name}: {name}" for name, value in secrets.items() if value.encode() in data]
    assert not leaks, leaks


def test_no_generated_secret_on_a_job_submission_command_line(stack):
    """`flink run`'s argv (what `ps` shows to every local user) and the environment it is given, for the live
    job, a backfill's lane and its ingest job: the job's Kafka and Redis passwords are resolved inside the job (its DDL and `job_redis_url`), never passed."""
    import os

    from deploy.local.flink_jobs import flink_command
    from deploy.local.flink import flink_env
    from jobs.config import JobConfig

    secrets = generated_secrets(SETTINGS.paths.data / "secrets")
    assert any(name.startswith("kafka/") for name in secrets), sorted(secrets)
    from deploy.local import backfills

    lines = [" ".join(flink_command(cfg)) for cfg in (JobConfig(), JobConfig(delivery="at-least-once"),
                                                      backfills.lane_config(backfills.LANE))]
    lines.append(" ".join(backfills._ingest_args("bf-secrets", backfills.LANE, 100, backfills.Yielding())))
    env = {**os.environ, **flink_env()}
    seen = "\n".join(lines + [f"{k}={v}" for k, v in env.items()])
    assert "flink" in lines[0] and "content_pipeline.py" in lines[0]
    leaks = [name for name, value in secrets.items() if value in seen]
    assert not leaks, leaks
