"""docker-compose and Kubernetes ask for credentials as the local stack does (issue #16 item 3b).

No Docker engine or cluster here: these read the committed YAML and what `python -m deploy.container_secrets`
generates (into a temporary data dir): every RSCF container is its own Kafka principal with a password from a
secret, only the init steps hold the S3 admin key, Redis and Prometheus require auth, Flink's REST API is not
served without one, and no committed file holds a credential. Each check has a negative control below.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from deploy import container_secrets as cs
from deploy.container_init import s3_policy
from rscf import kafka_security as ks
from rscf import registry_security, s3_security
from rscf.pools import POOLS
from rscf.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE_DIR = ROOT / "deploy" / "compose"
RSCF_IMAGES = ("rscf:", "rscf-flink:")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    """(output dir, data dir) of the generator run against a data dir of its own."""
    data = tmp_path_factory.mktemp("data")
    return cs.write_all(data=data), data


def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def rscf_services() -> dict:
    return {n: s for n, s in services().items() if s.get("image", "").startswith(RSCF_IMAGES)}


def k8s_docs() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def workloads() -> dict[str, dict]:
    """"Kind/name" -> pod spec, for every manifest that runs pods."""
    out = {}
    for d in k8s_docs():
        if d["kind"] in ("Deployment", "Job"):
            out[f"{d['kind']}/{d['metadata']['name']}"] = d["spec"]["template"]["spec"]
        elif d["kind"] == "FlinkDeployment":
            out[f"FlinkDeployment/{d['metadata']['name']}"] = d["spec"]["podTemplate"]["spec"]
    return out


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def secret_refs(spec: dict) -> set[tuple[str, str]]:
    """(Secret, key) pairs a pod spec reads: env secretKeyRefs, secret volumes, projected sources."""
    refs = set()
    for c in spec["containers"]:
        for value in env_of(c).values():
            if isinstance(value, dict) and "secretKeyRef" in value:
                refs.add((value["secretKeyRef"]["name"], value["secretKeyRef"]["key"]))
    for v in spec.get("volumes", []):
        if "secret" in v:
            refs.add((v["secret"]["secretName"], "*"))
        for src in v.get("projected", {}).get("sources", []):
            refs |= {(src["secret"]["name"], i["key"]) for i in src["secret"].get("items", [])}
    return refs


def literal_credentials(doc, where: str = "") -> list[str]:
    """Places in a YAML document that hold a credential's value instead of pointing at one."""
    found = []
    secretish = re.compile(r"password|secret|token|jaas", re.I)
    references = ("secretName", "secretKeyRef", "secretRef", "secretTargetRef", "secrets")

    def holds_value(key, value) -> bool:  # a secret-sounding key with a value that is no path, reference or file name
        return (isinstance(key, str) and bool(secretish.search(key)) and key not in references
                and not key.endswith("_FILE") and isinstance(value, (str, int)) and bool(str(value).strip())
                and not str(value).startswith(("/", "$")))

    if isinstance(doc, dict):
        if holds_value(doc.get("name"), doc.get("value")):
            found.append(f"{where}/{doc['name']}")  # a Kubernetes env entry with a literal value
        for k, v in doc.items():
            if holds_value(k, v):
                found.append(f"{where}/{k}")
            found += literal_credentials(v, f"{where}/{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += literal_credentials(v, f"{where}[{i}]")
    elif isinstance(doc, str):
        found += [f"{where}: {m}" for m in re.findall(r"password\s*[=:]\s*\\?\"?'?([^\s\"'$%\\;]+)", doc, re.I)]
        if re.search(r"\$2[aby]\$\d\d\$|BEGIN [A-Z ]*PRIVATE KEY", doc):
            found.append(f"{where}: a hash or key")
    return found


# ----------------------------------------------------------------------------- docker-compose


def test_compose_only_init_and_the_s3_server_hold_the_s3_admin_key():
    for name, svc in services().items():
        env = svc.get("environment") or {}
        if "s3-admin" in svc.get("secrets", []) or "s3-admin" in str(env):
            assert name in ("init", "s3"), f"{name} gets the S3 admin key"
    assert services()["s3"]["environment"]["MINIO_ROOT_PASSWORD_FILE"] == "s3-admin"
    for name, svc in rscf_services().items():
        env = svc["environment"]
        if name == "init" or "RSCF_S3_SECRET_KEY_FILE" not in env:
            continue
        access = env["RSCF_S3_ACCESS_KEY"]  # its own identity, never the admin's default access key
        assert access in s3_security.component_identities() and access != s3_security.ADMIN, name
        assert env["RSCF_S3_SECRET_KEY_FILE"] == f"/run/secrets/{cs.s3_name(access)}", name
        assert cs.s3_name(access) in svc["secrets"] and "RSCF_S3_SECRET_KEY" not in env, name


def test_compose_every_rscf_container_is_its_own_kafka_principal():
    pools = [n.removeprefix("worker-") for n in rscf_services() if n.startswith("worker-")]
    expected = {"init": ks.ADMIN, "job": ks.JOB, "flink-taskmanager": ks.JOB, "gateway": ks.GATEWAY,
                **{f"worker-{p}": ks.worker_principal(p) for p in pools}}
    assert set(rscf_services()) == set(expected), "an RSCF container without a principal of its own"
    for name, svc in rscf_services().items():
        env = svc["environment"]
        principal = env["RSCF_KAFKA_PRINCIPAL"]
        assert env["RSCF_KAFKA_AUTH"] == ks.SCRAM and principal == expected[name], name
        assert env["RSCF_KAFKA_PASSWORD_FILE"] == f"/run/secrets/{cs.kafka_name(principal)}", name
        assert cs.kafka_name(principal) in svc["secrets"] and "RSCF_KAFKA_PASSWORD" not in env, name
        if name.startswith("worker-"):
            assert svc["command"][svc["command"].index("--pool") + 1] == name.removeprefix("worker-")
    holders = {n for n, s in services().items() if "kafka-admin" in s.get("secrets", [])}
    assert holders == {"init", "kafka"}
    assert {cs.kafka_name(p) for p in ks.fixed_principals()} <= set(services()["init"]["secrets"])


def test_compose_broker_takes_sasl_scram_only():
    props = dict(line.split("=", 1) for line in (COMPOSE_DIR / "kafka.properties").read_text().splitlines()
                 if line and not line.startswith("#"))
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    for listener in props["listeners"].split(",") + props["advertised.listeners"].split(","):
        assert protocols[listener.split("://")[0]].startswith("SASL_"), listener
    assert props["sasl.enabled.mechanisms"] == ks.MECHANISM == props["sasl.mechanism.inter.broker.protocol"]
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false" and props["super.users"] == "User:admin"
    start = (COMPOSE_DIR / "kafka-start.sh").read_text()
    assert "--add-scram" in start and "$(cat /run/secrets/kafka-admin)" in start and "umask 077" in start
    kafka = services()["kafka"]
    assert kafka["entrypoint"][-1] == "/etc/rscf/kafka-start.sh"
    assert "--command-config" in kafka["healthcheck"]["test"][-1]


def test_compose_redis_requires_a_user(generated):
    redis = services()["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--aclfile") + 1] == f"/run/secrets/{cs.REDIS_ACL}" and cs.REDIS_ACL in redis["secrets"]
    assert cmd[cmd.index("--protected-mode") + 1] == "yes"
    assert "--user health" in redis["healthcheck"]["test"][-1]
    for name, svc in rscf_services().items():
        env = svc["environment"]
        assert urlsplit(env.get("RSCF_REDIS_URL", "redis://h/0")).password is None, name
        if "RSCF_REDIS_USER" in env:
            assert env["RSCF_REDIS_PASSWORD_FILE"] == f"/run/secrets/{cs.redis_name(env['RSCF_REDIS_USER'])}"
    assert services()["flink-taskmanager"]["environment"]["RSCF_REDIS_USER"] == "job"
    out, _ = generated
    acl = (out / cs.REDIS_ACL).read_text().splitlines()
    assert acl[0].split()[:4] == ["user", "default", "reset", "off"]
    assert all(re.search(r" #[0-9a-f]{64} ", line) for line in acl[1:]) and "nopass" not in " ".join(acl)
    assert (out / "redis-job").read_text() not in "\n".join(acl)


def test_compose_prometheus_requires_basic_auth(generated):
    import bcrypt

    prom = services()["prometheus"]
    assert f"--web.config.file=/run/secrets/{cs.PROMETHEUS_WEB}" in prom["command"]
    assert {cs.PROMETHEUS_WEB, "prometheus-prometheus"} <= set(prom["secrets"])
    assert "cat /run/secrets/prometheus-prometheus" in prom["healthcheck"]["test"][-1]
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    scrape = yaml.safe_load(doc["configs"]["prometheus-config"]["content"])["scrape_configs"]
    (own,) = [j for j in scrape if j["job_name"] == "prometheus"]
    assert own["basic_auth"] == {"username": "prometheus", "password_file": "/run/secrets/prometheus-prometheus"}
    out, _ = generated
    users = yaml.safe_load((out / cs.PROMETHEUS_WEB).read_text())["basic_auth_users"]
    assert set(users) == {"admin", "prometheus"}
    for user, digest in users.items():
        assert bcrypt.checkpw((out / cs.prometheus_name(user)).read_bytes(), digest.encode())
    if shutil.which("promtool"):  # Debian's prometheus package
        check = subprocess.run(["promtool", "check", "web-config", str(out / cs.PROMETHEUS_WEB)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_compose_flink_rest_is_not_served_without_a_credential(generated):
    jm = services()["flink-jobmanager"]
    props = dict(line.split(": ", 1) for line in jm["environment"]["FLINK_PROPERTIES"].splitlines() if line)
    assert props["rest.bind-address"] == "127.0.0.1" and props["rest.port"] == str(cs.JOBMANAGER_REST)
    start = jm["command"][0]
    assert "security.ssl.rest.enabled: true" in start and "security.ssl.rest.authentication-enabled: true" in start
    assert {cs.FLINK_REST_KEYSTORE, cs.FLINK_REST_STORE_PASSWORD} <= set(jm["secrets"])
    proxy = services()["flink-rest-proxy"]
    assert f"/run/secrets/{cs.CADDYFILE_COMPOSE}" in proxy["command"]
    caddy = (generated[0] / cs.CADDYFILE_COMPOSE).read_text()
    assert "@write not method GET HEAD" in caddy and "basic_auth @write" in caddy and "basic_auth @sensitive" in caddy
    assert f"reverse_proxy https://127.0.0.1:{cs.JOBMANAGER_REST}" in caddy and "tls_client_auth" in caddy
    submit = (COMPOSE_DIR / "submit-job.sh").read_text()
    assert "security.ssl.rest.authentication-enabled: true" in submit and f"-m 127.0.0.1:{cs.JOBMANAGER_REST}" in submit


def test_compose_secrets_are_generated_files(generated):
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    declared = doc["secrets"]
    for name, spec in declared.items():
        assert spec == {"file": f"${{RSCF_SECRETS_DIR:-./.data/secrets}}/containers/{name}"}, name
    used = {s for svc in services().values() for s in svc.get("secrets", [])}
    assert used == set(declared)
    assert set(declared) <= {p.name for p in generated[0].iterdir()}
    ignored = subprocess.run(["git", "check-ignore", "-q", ".data/secrets/containers/kafka-admin"], cwd=ROOT)
    assert ignored.returncode == 0, ".data/ must stay git-ignored"


# ----------------------------------------------------------------------------- Kubernetes


def test_k8s_only_the_init_job_holds_the_s3_admin_key():
    for workload, spec in workloads().items():
        names = {s for s, _ in secret_refs(spec)}
        assert "rscf-s3" not in names, f"{workload}: the old shared admin Secret"
        if "rscf-s3-admin" in names:  # the one-shot set-up Jobs: everything, or the tenants' S3 users only
            assert workload in ("Job/rscf-init", "Job/rscf-s3-tenants"), f"{workload} gets the S3 admin key"
        for c in spec["containers"]:
            env = env_of(c)
            if "RSCF_S3_SECRET_KEY" in env and workload != "Job/rscf-init":
                ref = env["RSCF_S3_SECRET_KEY"]["secretKeyRef"]["name"]
                assert env["RSCF_S3_ACCESS_KEY"]["secretKeyRef"]["name"] == ref != "rscf-s3-admin", workload
    tenants_job = {s for s, _ in secret_refs(workloads()["Job/rscf-s3-tenants"])}
    assert tenants_job == {"rscf-s3-admin", "rscf-s3-tenants"}, "the tenants' Job needs no other credential"


def test_k8s_every_rscf_workload_is_its_own_kafka_principal():
    (cm,) = [d for d in k8s_docs() if d["kind"] == "ConfigMap"]
    assert cm["data"]["RSCF_KAFKA_AUTH"] == ks.SCRAM
    seen = {}
    for workload, spec in workloads().items():
        for c in spec["containers"]:
            if not c.get("image", "rscf:").startswith(RSCF_IMAGES):  # FlinkDeployment: the image is the spec's
                continue
            env = env_of(c)
            if workload == "Job/rscf-s3-tenants":  # S3 only: no Kafka client, no Kafka credential
                assert not any(k.startswith("RSCF_KAFKA") for k in env), env
                continue
            principal = env["RSCF_KAFKA_PRINCIPAL"]
            seen[workload] = principal
            if workload == "Job/rscf-init":
                assert principal == ks.ADMIN and env["RSCF_KAFKA_PASSWORD_FILE"].endswith("/kafka-admin")
                assert ("rscf-kafka-admin", "password") in secret_refs(spec)
            else:
                assert env["RSCF_KAFKA_PASSWORD"] == {"secretKeyRef": {"name": f"rscf-{cs.kafka_name(principal)}",
                                                                       "key": "password"}}, workload
    pools = {w.removeprefix("Deployment/rscf-worker-") for w in seen if w.startswith("Deployment/rscf-worker-")}
    assert pools == set(POOLS)
    assert all(seen[f"Deployment/rscf-worker-{p}"] == ks.worker_principal(p) for p in pools)
    assert seen["FlinkDeployment/rscf-content-pipeline"] == ks.JOB
    assert seen["Deployment/rscf-gateway"] == ks.GATEWAY
    assert [p for w, p in seen.items() if p == ks.ADMIN] == [ks.ADMIN] and seen["Job/rscf-init"] == ks.ADMIN
    auth = [d for d in k8s_docs() if d["kind"] == "TriggerAuthentication"]
    assert [a["metadata"]["name"] for a in auth] == ["rscf-kafka-controller"]
    assert {(r["parameter"], r["name"]) for r in auth[0]["spec"]["secretTargetRef"]} == {
        ("username", "rscf-kafka-controller"), ("password", "rscf-kafka-controller")}
    for so in (d for d in k8s_docs() if d["kind"] == "ScaledObject"):
        for t in so["spec"]["triggers"]:
            assert t["metadata"]["sasl"] == "scram_sha512" and t["authenticationRef"]["name"] == "rscf-kafka-controller"


def test_k8s_redis_user_and_flink_rest_behind_the_proxy(generated):
    (cm,) = [d for d in k8s_docs() if d["kind"] == "ConfigMap"]
    assert urlsplit(cm["data"]["RSCF_REDIS_URL"]).password is None
    assert urlsplit(cm["data"]["RSCF_FLINK_URL"]).hostname == "rscf-flink-rest-proxy"
    (fd,) = [d for d in k8s_docs() if d["kind"] == "FlinkDeployment"]
    env = env_of(fd["spec"]["podTemplate"]["spec"]["containers"][0])
    assert env["RSCF_REDIS_USER"] == "job"
    assert env["RSCF_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "rscf-redis-job", "key": "password"}}
    exposed = fd["spec"]["flinkConfiguration"].get("kubernetes.rest-service.exposed.type", "ClusterIP")
    assert exposed == "ClusterIP", "the JobManager's REST Service must not leave the cluster"
    (policy,) = [d for d in k8s_docs() if d["kind"] == "NetworkPolicy"
                 and d["metadata"]["name"] == "rscf-flink-jobmanager"]  # gateway.yaml has its own
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app": fd["metadata"]["name"], "component": "jobmanager"}
    rest_from = []
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        assert "from" in rule or (ports and 8081 not in ports), f"REST open to every pod: {rule}"
        if 8081 in ports:
            rest_from += [f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for f in rule["from"]]
    assert sorted(rest_from) == ["flink-kubernetes-operator", "rscf-flink-rest-proxy"]
    (proxy,) = [d for d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "rscf-flink-rest-proxy"]
    assert proxy["spec"]["template"]["spec"]["containers"][0]["image"] == f"caddy:{SETTINGS.versions.caddy}"
    caddy = (generated[0] / cs.CADDYFILE_K8S).read_text()
    assert "basic_auth @write" in caddy and f"reverse_proxy http://{cs.K8S_REST_SERVICE}:8081" in caddy


def test_k8s_every_referenced_secret_is_made_by_the_script(generated):
    made = cs.k8s_secrets()
    refs = {r for spec in workloads().values() for r in secret_refs(spec)}
    refs |= {(r["name"], r["key"]) for d in k8s_docs() if d["kind"] == "TriggerAuthentication"
             for r in d["spec"]["secretTargetRef"]}
    for secret, key in refs:
        assert secret in made and (key == "*" or key in made[secret]), (secret, key)
    out, _ = generated
    commands = "\n".join(cs.kubectl_commands(out))
    for f in out.iterdir():
        assert f.read_text(errors="replace") not in commands, f"kubectl lines carry the value of {f.name}"


# ----------------------------------------------------------------------------- nothing committed


def committed_docs() -> dict[str, object]:
    files = [ROOT / "docker-compose.yml", *sorted(K8S.glob("*.yaml")), *sorted(COMPOSE_DIR.iterdir())]
    out = {}
    for f in files:
        text = f.read_text()
        out[str(f.relative_to(ROOT))] = list(yaml.safe_load_all(text)) if f.suffix in (".yaml", ".yml") else text
    return out


def test_no_committed_file_holds_a_credential():
    found = [hit for name, doc in committed_docs().items() for hit in literal_credentials(doc, name)]
    assert not found, f"literal credentials: {found}"


def test_the_credential_check_can_fail():
    assert literal_credentials({"environment": {"RSCF_KAFKA_PASSWORD": "hunter2"}})
    assert literal_credentials([{"name": "RSCF_S3_SECRET_KEY", "value": "abc"}])
    assert literal_credentials({"flinkConfiguration": {"security.ssl.rest.keystore-password": "changeit"}})
    assert literal_credentials('sasl.jaas.config=... required username="admin" password="plain";')
    assert literal_credentials("admin: $2b$10$abcdefghijklmnopqrstuv")
    assert not literal_credentials({"RSCF_KAFKA_PASSWORD_FILE": "/run/secrets/kafka-job"})
    assert not literal_credentials('password=\\"$admin\\";')


# ----------------------------------------------------------------------------- the generator and the init step


def test_generator_reuses_the_local_values_and_keeps_hashes(generated, tmp_path):
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

    out, data = generated
    assert out.stat().st_mode & 0o777 == 0o700 and all(f.stat().st_mode & 0o777 == 0o644 for f in out.iterdir())
    assert (out / "kafka-job").read_text() == ks.password("job", data)
    assert (out / "s3-worker").read_text() == s3_security.secret_key(s3_security.WORKER, data)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    cs.write_all(out, data)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # bcrypt hashes and the key store kept
    key, cert, _ = pkcs12.load_key_and_certificates((out / cs.FLINK_REST_KEYSTORE).read_bytes(),
                                                    (out / cs.FLINK_REST_STORE_PASSWORD).read_bytes())
    assert key is not None and cert.public_bytes(Encoding.PEM) == (out / cs.FLINK_REST_CERT).read_bytes()


def test_init_stages_the_given_passwords_only_into_a_data_dir_of_its_own(generated, tmp_path):
    from deploy.container_init import stage_kafka_passwords

    out, _ = generated
    stage_kafka_passwords(out, tmp_path)
    for p in ks.fixed_principals():
        assert ks.password(p, tmp_path) == (out / cs.kafka_name(p)).read_text()
    ks.password_file("job", tmp_path).write_text("another stack's")
    with pytest.raises(SystemExit):
        stage_kafka_passwords(out, tmp_path)


def test_s3_policies_follow_the_identity_table():
    def resources(identity, extra=()):
        return {(a, r) for s in s3_policy(identity, extra)["Statement"] for a in s["Action"] for r in s["Resource"]}

    worker = resources(s3_security.WORKER)
    assert ("s3:PutObject", "arn:aws:s3:::rscf-artifacts/*") in worker
    assert ("s3:GetObject", "arn:aws:s3:::rscf-artifacts/*") not in worker  # writes artifacts, reads none back
    assert resources(s3_security.GATEWAY) == {("s3:GetObject", "arn:aws:s3:::rscf-artifacts/tenants/*")}
    assert not any("rscf-flink-state" in r for _, r in resources(s3_security.JOB))
    assert ("s3:PutObject", "arn:aws:s3:::rscf-flink-state/*") in resources(s3_security.JOB, ("rscf-flink-state",))


def test_redis_url_takes_a_user_from_the_environment(monkeypatch, tmp_path):
    from rscf.settings import Settings

    (tmp_path / "pw").write_text("s3cr/t\n")
    monkeypatch.setenv("RSCF_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("RSCF_REDIS_USER", "job")
    assert Settings().redis_url == "redis://redis:6379/0"  # a user without a password: as it is
    monkeypatch.setenv("RSCF_REDIS_PASSWORD_FILE", str(tmp_path / "pw"))
    assert Settings().redis_url == "redis://job:s3cr%2Ft@redis:6379/0"
    monkeypatch.setenv("RSCF_REDIS_URL", "redis://other:pw@redis:6379/0")
    assert Settings().redis_url == "redis://other:pw@redis:6379/0"  # a URL with its own user wins


def test_registry_writes_take_a_token_and_only_init_holds_the_signing_key(generated):
    out, data = generated
    registry = services()["registry"]
    assert registry["environment"]["QUARKUS_CONFIG_LOCATIONS"] == f"file:/run/secrets/{cs.REGISTRY_AUTH}"
    assert cs.REGISTRY_AUTH in registry["secrets"]
    props = dict(line.split("=", 1) for line in (out / cs.REGISTRY_AUTH).read_text().splitlines())
    assert props["quarkus.oidc.tenant-enabled"] == "true"
    assert props["apicurio.auth.role-based-authorization"] == "true"
    assert props["quarkus.oidc.public-key"] == registry_security.public_key_b64(data)  # the key init signs with
    assert (out / cs.REGISTRY_SIGNING_KEY).read_bytes() == registry_security.ensure_key(data)
    for name, svc in services().items():
        if cs.REGISTRY_SIGNING_KEY in svc.get("secrets", []) or "RSCF_REGISTRY_KEY_FILE" in (svc.get("environment") or {}):
            assert name == "init", f"{name} could mint registry tokens"
    assert services()["init"]["environment"]["RSCF_REGISTRY_KEY_FILE"] == f"/run/secrets/{cs.REGISTRY_SIGNING_KEY}"
    for workload, spec in workloads().items():
        if f"rscf-{cs.REGISTRY_SIGNING_KEY}" in {s for s, _ in secret_refs(spec)}:
            assert workload == "Job/rscf-init", f"{workload} could mint registry tokens"
    init = workloads()["Job/rscf-init"]
    assert f"rscf-{cs.REGISTRY_SIGNING_KEY}" in {s for s, _ in secret_refs(init)}
    assert env_of(init["containers"][0])["RSCF_REGISTRY_KEY_FILE"] == f"/run/secrets/rscf/{cs.REGISTRY_SIGNING_KEY}"
