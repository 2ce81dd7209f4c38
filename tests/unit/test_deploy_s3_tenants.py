"""Tenants' S3 identities in docker-compose and Kubernetes (issue #16): ``tenant-<id>`` keys from the local stack's
secrets dir (or ``--tenants``), their MinIO users and policies from rscf/s3_security.py's table, and SeaweedFS'
s3.json rendered by the same table. No Docker engine, cluster or MinIO here: files, policies and the admin API
calls (a recording stand-in) are checked, with negative controls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deploy import container_init as ci
from deploy import container_secrets as cs
from rscf import s3_security
from rscf.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


@pytest.fixture()
def data(tmp_path) -> Path:
    return tmp_path / "data"


def test_tenant_keys_are_the_local_stacks_and_added_on_request(data, tmp_path):
    out = cs.write_all(tmp_path / "out", data)
    assert json.loads((out / cs.S3_TENANTS).read_text()) == {}  # none yet: the file exists, compose mounts it
    s3_security.secret_key("tenant-globex", data)  # what `rscf credentials s3 tenant-globex` makes locally
    cs.write_all(out, data, tenants=("acme",))
    keys = json.loads((out / cs.S3_TENANTS).read_text())
    assert keys == {t: s3_security.secret_key(t, data) for t in ("tenant-acme", "tenant-globex")}
    assert (out / cs.S3_TENANTS).stat().st_mode & 0o777 == 0o644 and out.stat().st_mode & 0o777 == 0o700
    cs.write_all(out, data)  # a later run keeps them: their keys live in the local secrets dir
    assert json.loads((out / cs.S3_TENANTS).read_text()) == keys
    with pytest.raises(s3_security.S3AuthError):
        cs.write_all(out, data, tenants=("../admin",))
    with pytest.raises(SystemExit):
        cs.main(["--out", str(out), "--tenants", "a/b"])


def test_s3_json_is_the_identity_table(data, tmp_path):
    out = cs.write_all(tmp_path / "out", data, tenants=("acme",))
    conf = json.loads((out / cs.S3_CONFIG).read_text())
    ids = {i["name"]: i for i in conf["identities"]}
    assert list(ids) == [*cs.S3_IDENTITIES, "tenant-acme"] and list(ids)[0] == s3_security.ADMIN
    for name, ident in ids.items():
        assert ident["actions"] == list(s3_security.actions_for(name))
        (cred,) = ident["credentials"]
        assert cred["accessKey"] == s3_security.access_key(name)
        file = cs.s3_name(name) if name in cs.S3_IDENTITIES else None
        assert cred["secretKey"] == ((out / file).read_text() if file else s3_security.secret_key(name, data))
    assert ids["tenant-acme"]["actions"] == ["Read:rscf-artifacts/tenants/acme/*", "List:rscf-artifacts/tenants/acme/*"]
    assert conf == s3_security.render_identities({n: (i["credentials"][0]["accessKey"],
                                                      i["credentials"][0]["secretKey"]) for n, i in ids.items()})


def test_init_reads_only_tenant_identities(tmp_path):
    assert ci.tenant_keys(tmp_path) == {}
    good = {"tenant-acme": "k" * 32}
    (tmp_path / cs.S3_TENANTS).write_text(json.dumps(good))
    assert ci.tenant_keys(tmp_path) == good
    for bad in ({"rscf-worker": "k" * 32}, {"admin": "k" * 32}, {"tenant-a/b": "k" * 32}, {"tenant-acme": "short"},
                ["tenant-acme"]):
        (tmp_path / cs.S3_TENANTS).write_text(json.dumps(bad))
        with pytest.raises((SystemExit, s3_security.S3AuthError)):
            ci.tenant_keys(tmp_path)


def _resources(policy: dict) -> set[tuple[str, str, str]]:
    return {(a, r, json.dumps(s.get("Condition"), sort_keys=True)) for s in policy["Statement"]
            for a in s["Action"] for r in s["Resource"]}


def test_tenant_policy_is_its_own_prefix(capsys, data, tmp_path):
    out = cs.write_all(tmp_path / "out", data, tenants=("acme", "globex"))
    assert ci.main(["--secrets", str(out), "--s3-users", "print", "--tenants-only"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    policies = {k: v for p in printed for k, v in p.items()}
    assert set(policies) == {"tenant-acme", "tenant-globex"}  # no component's user in --tenants-only
    art = SETTINGS.buckets.artifacts
    acme = _resources(policies["tenant-acme"])
    cond = json.dumps({"StringLike": {"s3:prefix": ["tenants/acme/*"]}}, sort_keys=True)
    assert acme == {("s3:GetObject", f"arn:aws:s3:::{art}/tenants/acme/*", "null"),
                    ("s3:ListBucket", f"arn:aws:s3:::{art}", cond),
                    ("s3:GetBucketLocation", f"arn:aws:s3:::{art}", cond)}
    assert not any("globex" in r or "PutObject" in a for a, r, _ in acme)


class _Admin:
    """Records MinIO admin calls (MinioAdmin's methods init uses)."""
    calls: list[tuple] = []

    def __init__(self, endpoint, credentials, secure) -> None:
        pass

    def policy_add(self, name, policy):
        self.calls.append(("policy", name, policy))

    def user_add(self, name, key):
        self.calls.append(("user", name, key))

    def attach_policy(self, policies, user):
        self.calls.append(("attach", tuple(policies), user))

    existing: dict = {}

    def user_list(self):
        return json.dumps(self.existing)

    def user_remove(self, name):
        self.calls.append(("remove", name))

    def policy_remove(self, name):
        self.calls.append(("remove-policy", name))


def test_init_makes_the_tenants_minio_users(monkeypatch, data, tmp_path):
    import minio

    out = cs.write_all(tmp_path / "out", data, tenants=("acme",))
    monkeypatch.setattr(minio, "MinioAdmin", _Admin)
    monkeypatch.setattr(s3_security, "credential", lambda name: ("rscf", "root-key"))
    monkeypatch.setattr(ci, "kafka", lambda secrets: pytest.fail("--tenants-only touched Kafka"))
    _Admin.calls = []
    assert ci.main(["--secrets", str(out), "--tenants-only"]) == 0
    key = s3_security.secret_key("tenant-acme", data)
    assert ("user", "tenant-acme", key) in _Admin.calls and ("attach", ("tenant-acme",), "tenant-acme") in _Admin.calls
    assert {c[1] for c in _Admin.calls if c[0] == "user"} == {"tenant-acme"}
    (policy,) = [c[2] for c in _Admin.calls if c[0] == "policy"]
    assert policy == ci.s3_policy("tenant-acme")
    _Admin.calls = []  # the full init: the components' users and the tenants'
    monkeypatch.setattr(ci, "kafka", lambda secrets: None)
    monkeypatch.setattr(ci, "buckets", lambda extra: None)
    monkeypatch.setattr(ci, "schemas", lambda: None)
    assert ci.main(["--secrets", str(out)]) == 0
    assert {c[1] for c in _Admin.calls if c[0] == "user"} == {*ci.COMPONENT_S3, "tenant-acme"}


def test_compose_and_k8s_hand_the_tenants_keys_to_the_set_up_only():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    holders = [n for n, s in compose["services"].items() if cs.S3_TENANTS in s.get("secrets", [])]
    assert holders == ["init"]
    assert compose["secrets"][cs.S3_TENANTS]["file"].endswith(f"/containers/{cs.S3_TENANTS}")
    docs = [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    jobs = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Job", "Deployment")}
    readers = [n for n, spec in jobs.items() for v in spec.get("volumes", [])
               for src in v.get("projected", {}).get("sources", []) if src["secret"]["name"] == "rscf-s3-tenants"]
    assert readers == ["rscf-s3-tenants"]
    job = jobs["rscf-s3-tenants"]
    (c,) = job["containers"]
    assert "--tenants-only" in c["command"] and c["command"][c["command"].index("--secrets") + 1] == "/run/secrets/rscf"
    (src,) = [s for v in job["volumes"] for s in v["projected"]["sources"] if s["secret"]["name"] == "rscf-s3-tenants"]
    assert src["secret"]["items"] == [{"key": "tenants.json", "path": cs.S3_TENANTS}]
    assert cs.k8s_secrets()["rscf-s3-tenants"] == {"tenants.json": cs.S3_TENANTS}
    assert cs.k8s_secrets()["rscf-s3-config"] == {"s3.json": cs.S3_CONFIG}
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "s3-tenants-job.yaml" in kust["resources"]


def test_init_removes_the_users_of_removed_tenants_only(monkeypatch, data, tmp_path):
    import minio

    out = cs.write_all(tmp_path / "out", data, tenants=("acme",))
    monkeypatch.setattr(minio, "MinioAdmin", _Admin)
    monkeypatch.setattr(s3_security, "credential", lambda name: ("rscf", "root-key"))
    _Admin.existing = {u: {"status": "enabled"} for u in ("tenant-acme", "tenant-gone", "rscf-worker", "tenantless")}
    _Admin.calls = []
    try:
        assert ci.main(["--secrets", str(out), "--tenants-only"]) == 0
        removed = [c for c in _Admin.calls if c[0].startswith("remove")]
        assert removed == [("remove", "tenant-gone"), ("remove-policy", "tenant-gone")]
        (out / cs.S3_TENANTS).unlink()  # no tenants file mounted: nothing is known to be removed
        _Admin.calls = []
        assert ci.main(["--secrets", str(out), "--tenants-only"]) == 0
        assert not [c for c in _Admin.calls if c[0].startswith("remove")]
    finally:
        _Admin.existing = {}
