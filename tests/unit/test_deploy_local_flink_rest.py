"""The Flink REST lock's files: its certificate and Java stores, the proxy's Caddyfile, the switch."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.local import flink_rest, installed
from rscf.settings import SETTINGS


def test_certificate_and_stores_are_made_once_private_and_match(data):
    f = flink_rest.ensure_tls()
    cert = x509.load_pem_x509_certificate(f.cert.read_bytes())
    assert cert.issuer == cert.subject, "self-signed: the stack's CA (which signs every component) is not trusted"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    usage = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usage
    pw = f.store_password.read_text().strip()
    _, stored, _ = pkcs12.load_key_and_certificates(f.keystore.read_bytes(), pw.encode())
    assert stored == cert
    for path in (f.key, f.keystore, f.truststore, f.store_password):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    listing = subprocess.run(["keytool", "-list", "-keystore", str(f.truststore), "-storepass", pw],
                             capture_output=True, text=True, check=True).stdout
    assert "trustedCertEntry" in listing and "1 entry" in listing, listing
    before = f.cert.read_bytes(), f.keystore.read_bytes()
    flink_rest.ensure_tls()
    assert (f.cert.read_bytes(), f.keystore.read_bytes()) == before, "kept while valid"


def test_caddyfile_opens_reads_and_locks_writes(data):
    text = flink_rest.caddyfile(8081, 8082, "operator", "$2b$10$abc", Path("/s/rest.pem"), Path("/s/rest.key"))
    assert "bind 127.0.0.1" in text and "http://127.0.0.1:8081" in text
    assert "@write not method GET HEAD" in text
    assert re.search(r"basic_auth @write \{\n\s*operator \$2b\$10\$abc", text)
    assert re.search(r"@sensitive path /jobmanager/config .*/jobs/\*/config\n", text)
    assert re.search(r"basic_auth @sensitive \{\n\s*operator \$2b\$10\$abc", text)
    assert "reverse_proxy https://127.0.0.1:8082" in text
    assert "tls_client_auth /s/rest.pem /s/rest.key" in text and "tls_trust_pool file /s/rest.pem" in text
    assert "admin off" in text, "no admin endpoint that could rewrite the config"


def test_proxy_config_keeps_its_hash_until_the_password_changes(data):
    import bcrypt

    flink_rest.prepare_proxy()
    f = flink_rest.files()
    first = flink_rest._hash_in(f.caddyfile)
    assert first and bcrypt.checkpw(flink_rest.operator_password().encode(), first.encode())
    assert flink_rest.operator_password() not in f.caddyfile.read_text(), "only the hash is written"
    flink_rest.prepare_proxy()
    assert flink_rest._hash_in(f.caddyfile) == first
    f.operator_password.write_text("a-new-password\n")
    flink_rest.prepare_proxy()
    assert bcrypt.checkpw(b"a-new-password", flink_rest._hash_in(f.caddyfile).encode())
    if Path(installed.caddy_binary()).exists():  # the binary install.sh builds parses what we render
        out = subprocess.run([installed.caddy_binary(), "validate", "--config", str(f.caddyfile), "--adapter",
                              "caddyfile"], capture_output=True, text=True, env=flink_rest.proxy_env(), timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]


def test_switched_off_the_jobmanager_serves_rest_itself(monkeypatch, data):
    monkeypatch.setenv("RSCF_FLINK_REST_AUTH", "0")
    assert flink_rest.ssl_config() == {}
    assert flink_rest.jobmanager_rest_port() == SETTINGS.ports.flink_rest
    assert flink_rest.rest_url() == SETTINGS.flink_url
    monkeypatch.setenv("RSCF_FLINK_REST_AUTH", "1")
    conf = flink_rest.ssl_config()
    assert conf["security.ssl.rest.enabled"] and conf["security.ssl.rest.authentication-enabled"]
    assert flink_rest.jobmanager_rest_port() == SETTINGS.ports.flink_rest_internal


def test_install_script_builds_the_version_settings_name():
    script = (SETTINGS.paths.repo / "deploy" / "local" / "install.sh").read_text()
    assert f"CADDY_VERSION={SETTINGS.versions.caddy} " in script


@pytest.mark.parametrize("path", ["/overview"])
def test_own_client_explains_a_missing_certificate(data, path):
    import httpx

    with pytest.raises(httpx.ConnectError, match="rscf up"):
        flink_rest.get(path)
