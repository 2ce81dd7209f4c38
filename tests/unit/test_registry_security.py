"""Registry write tokens (rscf/registry_security.py): signed by the stack's own key, the registry's flags
carry that key's public half, and a process without the key sends no credential (it can only read)."""

from __future__ import annotations

import base64

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from rscf import registry_security as rs
from rscf.secrets import mode_of


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.delenv("RSCF_REGISTRY_KEY_FILE", raising=False)
    monkeypatch.delenv("RSCF_REGISTRY_AUTH", raising=False)
    return tmp_path


def _public(data):
    return serialization.load_der_public_key(base64.b64decode(rs.public_key_b64(data)))


def test_the_key_is_made_once_0600_and_tokens_verify_against_the_public_half_in_the_flags(data):
    pem = rs.ensure_key(data)
    assert rs.ensure_key(data) == pem and mode_of(rs.key_file(data)) == 0o600
    flags = rs.registry_flags(data)
    assert f"-Dquarkus.oidc.public-key={rs.public_key_b64(data)}" in flags
    assert "-Dapicurio.auth.anonymous-read-access.enabled=true" in flags
    assert "-Dapicurio.auth.role-based-authorization=true" in flags
    token = rs.mint("probe", rs.ADMIN, 60, data=data)
    claims = jwt.decode(token, _public(data), algorithms=["RS256"], audience=rs.AUDIENCE, issuer=rs.ISSUER)
    assert claims["groups"] == [rs.ADMIN] and claims["sub"] == "probe" and 59 <= claims["exp"] - claims["iat"] <= 60
    rs.ensure_key(data / "other")
    other = rs.mint("probe", rs.ADMIN, 60, data=data / "other")  # another stack's key
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(other, _public(data), algorithms=["RS256"], audience=rs.AUDIENCE)


def test_unknown_roles_bad_ttls_and_a_missing_key_are_refused(data):
    rs.ensure_key(data)
    with pytest.raises(rs.RegistryAuthError, match="role"):
        rs.mint("probe", "root", data=data)
    for ttl in (0, -5, rs.MAX_TTL_S + 1):
        with pytest.raises(rs.RegistryAuthError, match="ttl"):
            rs.mint("probe", rs.DEVELOPER, ttl, data=data)
    with pytest.raises(rs.RegistryAuthError, match="no registry signing key"):
        rs.mint("probe", data=data / "empty")


def test_clients_sign_only_with_a_key_and_only_when_the_registry_checks(data, monkeypatch):
    monkeypatch.setenv("RSCF_REGISTRY_KEY_FILE", str(data / "secrets" / rs.KEY_FILE))
    assert rs.client_auth() == {} and rs.auth_headers() == {}  # no key yet: anonymous (reads only)
    rs.ensure_key(data)
    conf = rs.client_auth("tool", rs.DEVELOPER)
    fields = conf["bearer.auth.custom.provider.function"](conf["bearer.auth.custom.provider.config"])
    claims = jwt.decode(fields["bearer.auth.token"], _public(data), algorithms=["RS256"], audience=rs.AUDIENCE)
    assert claims["sub"] == "tool" and claims["groups"] == [rs.DEVELOPER]
    assert fields["bearer.auth.token"] == conf["bearer.auth.custom.provider.function"](
        conf["bearer.auth.custom.provider.config"])["bearer.auth.token"], "cached, not minted per request"
    assert rs.auth_headers()["Authorization"].startswith("Bearer ")
    assert rs.env() == {"RSCF_REGISTRY_KEY_FILE": str(data / "secrets" / rs.KEY_FILE)}
    monkeypatch.setenv("RSCF_REGISTRY_AUTH", "0")
    assert rs.client_auth() == {} and rs.registry_flags(data) == []
