"""The local Flink cluster's config (no cluster needed): each configuration key has one owner."""

from __future__ import annotations

import yaml

from deploy.local import flink
from rscf.settings import SETTINGS


def _flat(conf: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in conf.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cluster_keys() -> dict:
    wheel = yaml.safe_load((flink.flink_home() / "conf" / "config.yaml").read_text())
    return _flat(flink.cluster_config(flink.flink_dirs(), wheel))


def test_cluster_config_leaves_the_jobs_keys_to_the_job(monkeypatch):
    from jobs import content_pipeline
    from jobs.config import JobConfig

    class Recorded(dict):
        def set_string(self, key, value):
            self[key] = value

    monkeypatch.setattr(content_pipeline, "Configuration", Recorded)
    job_keys = set(content_pipeline.flink_configuration(JobConfig(job_name="j")))
    assert "python.executable" in job_keys and "restart-strategy.type" in job_keys
    assert job_keys & set(_cluster_keys()) == set()


def test_cluster_config_binds_loopback_and_pushes_metrics_per_role():
    conf = _cluster_keys()
    host = SETTINGS.host
    assert conf["jobmanager.bind-host"] == conf["taskmanager.bind-host"] == conf["rest.bind-address"] == host
    assert conf["metrics.reporter.promgateway.randomJobNameSuffix"] is False
    assert "env.java.opts.all" in conf  # the wheel's JVM options survive
    # the unrotated console copy of the log gets warnings only; Flink's rolling file keeps INFO
    assert all(conf[f"env.java.opts.{role}"].endswith("-Dconsole.log.level=WARN")
               for role in ("jobmanager", "taskmanager"))
    argv = flink.flink_script("taskmanager.sh", "taskmanager")
    assert argv[-1] == "metrics.reporter.promgateway.jobName=flink-taskmanager"


def test_s3_plugin_sits_in_its_own_plugins_folder_and_s3_keys_reach_the_config(tmp_path, monkeypatch):
    """The S3 filesystem must be a plugin (its own folder under FLINK_PLUGINS_DIR) before the cluster
    starts, and `s3.*` (endpoint, path style, keys) in the cluster's config (issue #17)."""
    jar = tmp_path / "cache" / "flink-s3-fs-hadoop-2.2.0.jar"
    jar.parent.mkdir()
    jar.write_bytes(b"jar")
    monkeypatch.setattr(type(SETTINGS.paths), "s3_plugin_jar", property(lambda self: jar))
    d = {"plugins": tmp_path / "plugins"}
    flink.write_plugins_dir(d)
    assert (d["plugins"] / "s3-fs-hadoop" / jar.name).resolve() == jar
    assert (d["plugins"] / "metrics-prometheus").is_dir()  # the wheel's reporters stay
    keys = _cluster_keys()
    assert keys["s3.endpoint"] == f"http://{SETTINGS.s3_endpoint}" and keys["s3.path.style.access"] is True
    assert keys["s3.access-key"] == "rscf-job"  # the job's own key (rscf/s3_security.py)
    assert flink.flink_env()["FLINK_PLUGINS_DIR"] == str(flink.flink_dirs()["plugins"])
