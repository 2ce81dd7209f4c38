"""Deployment artefacts users run elsewhere: docker-compose, Kubernetes manifests, Prometheus rules, Grafana.

No Docker engine or cluster here, so these check what can go wrong without one: files parse, images are
pinned to the versions the local stack runs, nothing is published beyond loopback, every RSCF_* variable
is one rscf/settings.py reads, rules pass promtool, and every metric a rule or panel uses is documented.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rscf.settings import POOLS, SETTINGS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
METRICS_MD = ROOT / "deploy" / "prometheus" / "METRICS.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "rscf-overview.json"


# ----------------------------------------------------------------------------- helpers


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def settings_env_names() -> set[str]:
    """RSCF_* variables rscf/settings.py reads (its _env/_env_int/_env_float calls)."""
    src = (ROOT / "rscf" / "settings.py").read_text()
    return {f"RSCF_{n}" for n in re.findall(r'_env(?:_int|_float)?\(\s*"([A-Z0-9_]+)"', src)}


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}


def metric_names(expr: str) -> set[str]:
    """Metric (and recorded series) names a PromQL expression reads."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def documented_metrics() -> set[str]:
    """First cell of each table row in METRICS.md."""
    return set(re.findall(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|", METRICS_MD.read_text(), re.M))


def is_documented(name: str, documented: set[str]) -> bool:
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in documented or base in documented


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(d: dict) -> list[str]:
    exprs = []
    for p in d["panels"]:
        for sub in [p] + p.get("panels", []):
            exprs += [t["expr"] for t in sub.get("targets", [])]
    for var in d["templating"]["list"]:
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"label_values\(\s*([^,]+),", q or "")
        if m:
            exprs.append(m.group(1))
    return exprs


# ----------------------------------------------------------------------------- docker-compose


def test_compose_images_pinned_to_the_local_stack_versions():
    services = compose()["services"]
    images = {name: svc["image"] for name, svc in services.items()}
    for name, image in images.items():
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
    assert images["kafka"] == f"apache/kafka:{SETTINGS.versions.kafka}"
    assert images["flink-jobmanager"] == f"flink:{SETTINGS.versions.flink}"
    assert images["registry"] == f"apicurio/apicurio-registry:{SETTINGS.versions.apicurio}"
    assert images["redis"].startswith("redis:8.")
    assert images["s3"].startswith("minio/minio:RELEASE.")
    assert images["prometheus"].startswith("prom/prometheus:v")
    assert images["flink-rest-proxy"] == f"caddy:{SETTINGS.versions.caddy}"  # the local stack's Caddy
    built = {n for n, s in services.items() if "build" in s}
    assert {"init", "job", "worker-echo", "flink-taskmanager", "gateway"} <= built
    for n in built:
        assert services[n]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    # The TaskManager image is the official one plus Python, at the same Flink version.
    assert f"ARG FLINK_IMAGE=flink:{SETTINGS.versions.flink}" in DOCKERFILE.read_text()


def test_compose_publishes_ports_on_loopback_only():
    services = compose()["services"]
    published = []
    for name, svc in services.items():
        for spec in svc.get("ports", []):
            assert isinstance(spec, str) and spec.startswith("127.0.0.1:"), f"{name}: {spec!r} not on 127.0.0.1"
            published.append(spec)
        mode = svc.get("network_mode")
        assert "ports" in svc or mode in ("service:net", "none"), f"{name}: neither publishes nor joins `net`"
        if mode == "service:net":
            assert "ports" not in svc, f"{name}: a service in net's namespace cannot publish ports"
    host_ports = set()
    for spec in published:
        hp = spec.split(":")[1]
        lo, _, hi = hp.partition("-")
        host_ports |= set(range(int(lo), int(hi or lo) + 1))
    p = SETTINGS.ports
    need = {p.kafka, p.registry, p.s3, p.redis, p.flink_rest, p.prometheus, p.gateway}
    assert need <= host_ports, f"not published: {sorted(need - host_ports)}"


def test_compose_rscf_env_and_commands():
    doc = compose()
    known = settings_env_names()
    for name, svc in doc["services"].items():
        env = svc.get("environment") or {}
        for key in env:
            if key.startswith("RSCF_"):
                assert key in known, f"{name}: {key} is not read by rscf/settings.py"
    assert doc["services"]["init"]["command"][:3] == ["python", "-m", "deploy.container_init"]
    assert (ROOT / "deploy" / "container_init.py").exists()
    assert doc["services"]["job"]["command"] == ["bash", "deploy/compose/submit-job.sh"]
    assert doc["services"]["gateway"]["command"][:3] == ["python", "-m", "gateway.server"]
    job = (ROOT / "deploy" / "compose" / "submit-job.sh").read_text()
    assert "-py jobs/content_pipeline.py" in job
    for script in (ROOT / "deploy" / "compose").glob("*.sh"):  # bash parses them
        out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"{script.name}: {out.stderr}"
    for pool in ("echo", "text-small", "image", "speech"):
        cmd = doc["services"][f"worker-{pool}"]["command"]
        assert cmd[:5] == ["rscf", "worker", "run", "--pool", pool] and pool in POOLS
    connector = SETTINGS.versions.flink_kafka_connector
    assert f"flink-sql-connector-kafka-{connector}.jar" in doc["services"]["flink-connector"]["command"][0]
    assert f"ARG KAFKA_CONNECTOR={connector}" in DOCKERFILE.read_text()


def test_compose_prometheus_scrapes_every_exporter_and_loads_rules():
    from inference_workers.metrics import metrics_port

    doc = compose()
    cfg = yaml.safe_load(doc["configs"]["prometheus-config"]["content"])
    assert cfg["rule_files"] == ["/etc/prometheus/rules.yml"]
    mounts = doc["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in mounts
    targets = {
        job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]} for job in cfg["scrape_configs"]
    }
    p = SETTINGS.ports
    assert targets["flink"] == {f"127.0.0.1:{n}" for n in range(p.flink_metrics_first, p.flink_metrics_last + 1)}
    assert targets["rscf-workers"] == {f"127.0.0.1:{metrics_port(pool)}" for pool in POOLS}
    echo_health = doc["services"]["worker-echo"]["healthcheck"]["test"]
    assert f"http://127.0.0.1:{metrics_port('echo')}/readyz" in echo_health


def test_dockerfile_stages():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim AS rscf$", text, re.M)
    assert re.search(r"^FROM \$\{FLINK_IMAGE\} AS flink-python$", text, re.M)
    assert text.count("pip install") >= 2 and "-e /app" in text and "-e /opt/rscf" in text
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".data", ".git"} <= set(ignore)


# ----------------------------------------------------------------------------- Kubernetes


def k8s_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def test_k8s_manifests_parse_and_kustomization_lists_existing_files():
    docs = k8s_docs()
    assert docs, "no manifests"
    for name, items in docs.items():
        for d in items:
            assert d.get("apiVersion") and d.get("kind"), f"{name}: missing apiVersion/kind"
            if d["kind"] != "Kustomization":
                assert d.get("metadata", {}).get("name"), f"{name}: {d['kind']} without metadata.name"
    kust = docs["kustomization.yaml"][0]
    assert kust["namespace"] == "rscf"
    for res in kust["resources"]:
        assert (K8S / res).exists(), f"kustomization lists missing {res}"
    for mine in ("configmap.yaml", "flinkdeployment.yaml"):
        assert mine in kust["resources"]


def test_flink_deployment_required_keys():
    (fd,) = k8s_docs()["flinkdeployment.yaml"]
    assert fd["apiVersion"] == "flink.apache.org/v1beta1" and fd["kind"] == "FlinkDeployment"
    spec = fd["spec"]
    for key in ("image", "flinkVersion", "serviceAccount", "flinkConfiguration", "jobManager", "taskManager", "job"):
        assert key in spec, key
    assert spec["flinkVersion"] == "v" + "_".join(SETTINGS.versions.flink.split(".")[:2])
    conf = spec["flinkConfiguration"]
    assert all(isinstance(v, str) for v in conf.values()), "operator config values must be strings"
    assert conf["execution.checkpointing.dir"].startswith("s3://")
    assert conf["execution.checkpointing.savepoint-dir"].startswith("s3://")
    assert conf["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    job = spec["job"]
    assert job["upgradeMode"] == "savepoint"
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    assert job["jarURI"] == f"local:///opt/flink/opt/flink-python-{SETTINGS.versions.flink}.jar"
    py = job["args"][job["args"].index("-py") + 1]
    assert py == "/opt/rscf/jobs/content_pipeline.py"  # the Dockerfile copies the repo to /opt/rscf
    assert "COPY --chown=flink:flink . /opt/rscf" in DOCKERFILE.read_text()
    container = spec["podTemplate"]["spec"]["containers"][0]
    assert container["name"] == "flink-main-container"
    assert {"configMapRef": {"name": "rscf-settings"}} in container["envFrom"]
    ports = {p["containerPort"] for p in container["ports"]}
    assert int(conf["metrics.reporter.prom.port"]) in ports


def test_k8s_configmap_sets_only_known_settings():
    (cm,) = k8s_docs()["configmap.yaml"]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "rscf-settings"
    data = cm["data"]
    unknown = set(data) - settings_env_names()
    assert not unknown, f"not read by rscf/settings.py: {sorted(unknown)}"
    assert {"RSCF_KAFKA_BOOTSTRAP", "RSCF_REGISTRY_URL", "RSCF_S3_ENDPOINT", "RSCF_REDIS_URL"} <= set(data)
    assert all(isinstance(v, str) for v in data.values())


def test_settings_endpoint_overrides(monkeypatch):
    """The ConfigMap's endpoints only work if Settings honours them; defaults stay on loopback."""
    from rscf.settings import Settings

    assert Settings().kafka_bootstrap.startswith("127.0.0.1:") or "RSCF_KAFKA_BOOTSTRAP" in __import__("os").environ
    monkeypatch.setenv("RSCF_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("RSCF_REGISTRY_URL", "http://schema-registry:8080/apis/ccompat/v7")
    monkeypatch.setenv("RSCF_S3_ENDPOINT", "minio:9000")
    s = Settings()
    assert (s.kafka_bootstrap, s.s3_endpoint) == ("kafka:9092", "minio:9000")
    assert s.registry_url == "http://schema-registry:8080/apis/ccompat/v7"


# ----------------------------------------------------------------------------- Prometheus rules


def test_rules_structure():
    rs = rules()
    records = [r for r in rs if "record" in r]
    alerts = [r for r in rs if "alert" in r]
    assert records and alerts and len(records) + len(alerts) == len(rs)
    for a in alerts:
        assert a["labels"]["severity"] in ("warning", "critical"), a["alert"]
        assert a["annotations"]["summary"] and a["annotations"]["description"], a["alert"]
    for r in records:
        assert r["record"].count(":") == 2, f"{r['record']}: use level:metric:operations"
    used = set().union(*(metric_names(r["expr"]) for r in rs))
    for needed in (
        "rscf_pool_consumer_lag",
        "rscf_worker_requests_total",
        "flink_taskmanager_job_task_operator_rscf_reason_stage_dead_letters",
        "flink_taskmanager_job_task_operator_rscf_status_finals",
        "flink_jobmanager_job_numRestarts",
        "flink_jobmanager_job_numberOfFailedCheckpoints",
        "rscf_worker_inference_ms_bucket",
    ):
        assert needed in used, f"no rule reads {needed}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_rules_pass_promtool():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


# ----------------------------------------------------------------------------- Grafana and the metric list


def test_dashboard_shape():
    d = dashboard()
    assert d["schemaVersion"] == 39 and d["uid"]
    (ds_var,) = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert ds_var["query"] == "prometheus"
    ds_ref = {"type": "prometheus", "uid": "${%s}" % ds_var["name"]}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in d["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for p in graphs:
        assert p["datasource"] == ds_ref, p["title"]
        assert p["targets"], f"{p['title']}: no targets"
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == ds_ref, p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0
    titles = " ".join(p["title"].lower() for p in graphs)
    for word in ("prompts", "finals", "latency", "batch", "throughput", "errors", "lag", "replicas",
                 "dead letters", "checkpoint", "restarts", "heap"):
        assert word in titles, f"no panel about {word}"


def test_metric_name_extraction():
    expr = 'sum by (pool) (rate(a_total{status!="OK", x=~"b_c"}[5m])) / clamp_min(x:y:z, 1e-9) > 0.5 and on() up'
    assert metric_names(expr) == {"a_total", "x:y:z", "up"}


def test_every_metric_in_rules_and_dashboard_is_documented():
    documented = documented_metrics()
    recorded = {r["record"] for r in rules() if "record" in r}
    exprs = [r["expr"] for r in rules()] + dashboard_exprs(dashboard())
    used = set().union(*(metric_names(e) for e in exprs))
    missing = sorted(n for n in used if not is_documented(n, documented))
    assert not missing, f"add to deploy/prometheus/METRICS.md: {missing}"
    assert recorded <= documented, f"recorded series not in METRICS.md: {sorted(recorded - documented)}"
    recorded_like = {n for n in used if n.count(":") == 2}
    assert recorded_like <= recorded, f"used but never recorded: {sorted(recorded_like - recorded)}"


def test_documented_exported_worker_and_dead_letter_metrics_exist_in_code():
    """Rows marked `exported` for workers and dead letters match what the code registers."""
    from inference_workers.metrics import WorkerMetrics
    from operators.dead_letters import DEAD_LETTERS

    samples = set()
    for family in WorkerMetrics("echo", "test-worker").registry.collect():
        samples |= {family.name, family.name + "_total"}
    samples |= {DEAD_LETTERS._name + "_total"}  # noqa: SLF001 - the exported counter name
    rows = re.findall(r"^\|\s*`((?:rscf_worker|rscf_dead)[a-z_]*)`\s*\|[^\n]*\|\s*exported", METRICS_MD.read_text(), re.M)
    assert rows
    for name in rows:
        assert name in samples, f"METRICS.md says {name} is exported, the code has no such metric"
