"""The S3 identities as data: who may do what, how s3.json and security.toml are rendered, where keys live."""

from __future__ import annotations

import json

import pytest

from rscf import s3_security as s3s
from rscf.secrets import mode_of
from rscf.settings import SETTINGS

B = SETTINGS.buckets


def test_components_are_scoped_to_their_buckets():
    worker = s3s.actions_for(s3s.WORKER)
    assert set(worker) == {f"Write:{B.artifacts}", f"Write:{B.audit}", f"Read:{B.models}", f"List:{B.models}"}
    assert not any(a.startswith(("Read:", "List:")) and B.artifacts in a for a in worker)  # writes, never reads back
    job = s3s.actions_for(s3s.JOB)
    assert set(job) == {f"Read:{B.backfill}", f"Write:{B.backfill}", f"List:{B.backfill}", f"Write:{B.audit}"}
    assert s3s.actions_for(s3s.GATEWAY) == (f"Read:{B.artifacts}/tenants/*",)
    assert s3s.actions_for(s3s.ADMIN) == ("Admin", "Read", "Write", "List", "Tagging")
    for name in (s3s.WORKER, s3s.JOB, s3s.GATEWAY, "tenant-acme"):
        assert all(":" in a for a in s3s.actions_for(name)), name  # no unscoped action but the admin's


def test_a_tenant_reads_and_lists_its_own_prefix_only():
    assert s3s.actions_for("tenant-acme") == (f"Read:{B.artifacts}/tenants/acme/*",
                                              f"List:{B.artifacts}/tenants/acme/*")
    # the prefix ends with "/": tenant "acme" gets nothing of tenant "acme2"
    assert all(a.endswith("/tenants/acme/*") for a in s3s.actions_for("tenant-acme"))


@pytest.mark.parametrize("bad", ["tenant-", "tenant-a/b", "tenant-..", "tenant-" + "x" * 65, "worker", "rscf", ""])
def test_unknown_or_bad_names_are_refused(bad):
    with pytest.raises(s3s.S3AuthError):
        s3s.check_identity(bad)


def test_render_identities_one_per_key_with_its_actions():
    doc = s3s.render_identities({s3s.ADMIN: ("rscf", "s0"), s3s.WORKER: ("rscf-worker", "s1"),
                                 "tenant-acme": ("tenant-acme", "s2")})
    by_name = {i["name"]: i for i in doc["identities"]}
    assert list(by_name) == [s3s.ADMIN, s3s.WORKER, "tenant-acme"]
    assert by_name[s3s.ADMIN]["credentials"] == [{"accessKey": "rscf", "secretKey": "s0"}]
    assert by_name["tenant-acme"]["actions"] == list(s3s.actions_for("tenant-acme"))
    json.dumps(doc)  # what the server reads


def test_security_toml_locks_every_grpc_server_and_client_to_one_certificate(tmp_path):
    import tomllib

    keys = {s: f"key-{i}-0123456789abcdef" for i, s in enumerate(s3s.JWT_SECTIONS)}
    assert "grpc" not in tomllib.loads(s3s.security_toml(keys))  # without the certificate: JWT only
    tls = s3s.GrpcTls(tmp_path / "ca.pem", tmp_path / "weed.pem", tmp_path / "weed.key")
    doc = tomllib.loads(s3s.security_toml(keys, grpc=tls))
    assert doc["grpc"]["ca"] == str(tls.ca)
    for component in s3s.GRPC_COMPONENTS:
        section = doc["grpc"][component]
        assert (section["cert"], section["key"]) == (str(tls.cert), str(tls.key))
        assert section["allowed_commonNames"] == s3s.GRPC_COMMON_NAME
    assert doc["grpc"]["client"] == {"cert": str(tls.cert), "key": str(tls.key)}
    assert doc["jwt"]["signing"]["key"] == keys["jwt.signing"]
    bad = s3s.GrpcTls(tmp_path / 'we"ird' / "ca.pem", tls.cert, tls.key)
    with pytest.raises(s3s.S3AuthError):
        s3s.security_toml(keys, grpc=bad)


def test_security_toml_has_every_jwt_section():
    keys = {s: f"key-{i}-0123456789abcdef" for i, s in enumerate(s3s.JWT_SECTIONS)}
    text = s3s.security_toml(keys)
    import tomllib

    doc = tomllib.loads(text)
    assert doc["jwt"]["signing"]["key"] == keys["jwt.signing"]
    assert doc["jwt"]["signing"]["read"]["key"] == keys["jwt.signing.read"]
    assert doc["jwt"]["filer_signing"]["key"] == keys["jwt.filer_signing"]
    assert doc["jwt"]["filer_signing"]["read"]["key"] == keys["jwt.filer_signing.read"]
    with pytest.raises(s3s.S3AuthError):
        s3s.security_toml({**keys, "jwt.signing": 'short"'})


def test_keys_are_generated_once_private_and_tenants_are_found(tmp_path, monkeypatch):
    monkeypatch.delenv("RSCF_S3_SECRET_KEY", raising=False)
    monkeypatch.delenv("RSCF_S3_SECRET_KEY_FILE", raising=False)
    k1 = s3s.secret_key(s3s.WORKER, tmp_path)
    assert k1 == s3s.secret_key(s3s.WORKER, tmp_path) and len(k1) >= 32
    assert mode_of(tmp_path / "secrets" / "s3" / s3s.WORKER) == 0o600
    assert mode_of(tmp_path / "secrets" / "s3") == 0o700
    assert s3s.known_tenants(tmp_path) == []
    s3s.secret_key("tenant-acme", tmp_path)
    assert s3s.known_tenants(tmp_path) == ["tenant-acme"]
    keys = s3s.server_keys(tmp_path)
    assert list(keys)[:4] == list(s3s.component_identities()) and "tenant-acme" in keys
    assert keys[s3s.WORKER] == ("rscf-worker", k1)
    jwt = s3s.jwt_keys(tmp_path)
    assert set(jwt) == set(s3s.JWT_SECTIONS) and len(set(jwt.values())) == 4
    assert jwt == s3s.jwt_keys(tmp_path)


def test_a_process_handed_a_key_uses_it_for_every_identity(monkeypatch):
    from rscf import settings

    monkeypatch.setenv("RSCF_S3_SECRET_KEY", "given-secret")
    settings._s3_secret_key.cache_clear()
    try:
        assert s3s.credential(s3s.WORKER) == (SETTINGS.s3.access_key, "given-secret")
    finally:
        monkeypatch.delenv("RSCF_S3_SECRET_KEY")
        settings._s3_secret_key.cache_clear()
