"""Prometheus' and the Pushgateway's web configs, certificates and Flink's key stores, rendered into a
temporary data dir (no service started: tests/integration/test_monitoring_auth.py does that)."""

from __future__ import annotations

import shutil
import subprocess

import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.local import flink, monitoring
from rscf import monitoring_security as ms
from rscf.secrets import mode_of
from rscf.settings import SETTINGS


def test_prometheus_web_config_holds_bcrypt_hashes_of_each_users_password(data):
    monitoring.prepare_prometheus_web()
    path = monitoring.web_config_path("prometheus")
    users = yaml.safe_load(path.read_text())["basic_auth_users"]
    assert set(users) == {"admin", "prometheus"}
    for user, hashed in users.items():
        assert hashed.startswith("$2b$")
        assert bcrypt.checkpw(ms.password(user).encode(), hashed.encode())
        assert not bcrypt.checkpw(b"not-the-password", hashed.encode())
        assert ms.password(user) not in path.read_text()  # only the hash is written
        assert mode_of(ms.password_file(user)) == 0o600
    assert mode_of(path) == 0o600 and mode_of(ms.monitoring_dir()) == 0o700
    assert ms.password("admin") != ms.password("prometheus")
    monitoring.prepare_prometheus_web()  # a second start keeps the hashes (bcrypt is slow on purpose)
    assert yaml.safe_load(path.read_text())["basic_auth_users"] == users


def test_a_changed_password_gets_a_new_hash(data):
    monitoring.prepare_prometheus_web()
    ms.password_file("admin").write_text("rotated-by-hand")
    monitoring.prepare_prometheus_web()
    hashed = yaml.safe_load(monitoring.web_config_path("prometheus").read_text())["basic_auth_users"]["admin"]
    assert bcrypt.checkpw(b"rotated-by-hand", hashed.encode())


def test_unknown_users_are_refused(data):
    with pytest.raises(ms.MonitoringAuthError):
        ms.password("root")
    with pytest.raises(ms.MonitoringAuthError):
        ms.client_cert("mallory")
    with pytest.raises(ms.MonitoringAuthError):  # nothing issued yet
        ms.pushgateway_ssl("admin")


def test_pushgateway_requires_client_certificates_of_the_stacks_ca(data):
    monitoring.prepare_pushgateway()
    tls = yaml.safe_load(monitoring.web_config_path("pushgateway").read_text())["tls_server_config"]
    assert tls["client_auth_type"] == "RequireAndVerifyClientCert"
    ca = x509.load_pem_x509_certificate(ms.ca_file().read_bytes())
    assert tls["client_ca_file"] == str(ms.ca_file())
    server = x509.load_pem_x509_certificate(open(tls["cert_file"], "rb").read())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert str(sans.get_values_for_type(x509.IPAddress)[0]) == SETTINGS.host
    for name in ms.PUSH_CLIENTS:
        cert = ms.client_cert(name)
        leaf = x509.load_pem_x509_certificate(cert.cert.read_bytes())
        leaf.verify_directly_issued_by(ca)
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert mode_of(cert.key) == 0o600
    ms.pushgateway_ssl("admin")  # loads: the key matches its certificate
    before = ms.client_cert("flink").cert.read_bytes()
    monitoring.prepare_pushgateway()
    assert ms.client_cert("flink").cert.read_bytes() == before  # current certificates are kept


def test_prometheus_scrapes_itself_with_a_password_and_the_pushgateway_with_a_certificate(data):
    monitoring.ensure_certificates()
    sec = monitoring.scrape_security()
    assert sec["prometheus"]["basic_auth"] == {"username": "prometheus",
                                               "password_file": str(ms.password_file("prometheus"))}
    assert sec["pushgateway"]["scheme"] == "https"
    assert sec["pushgateway"]["tls_config"]["cert_file"] == str(ms.client_cert("prometheus").cert)


@pytest.mark.skipif(shutil.which("keytool") is None, reason="no JDK keytool")
def test_flinks_key_stores_hold_its_certificate_and_trust_the_stacks_ca(data):
    monitoring.ensure_certificates()
    monitoring.ensure_java_stores()
    keystore, truststore = monitoring.java_stores()
    pw = monitoring.JAVA_STORE_PASSWORD
    _, leaf, _ = pkcs12.load_key_and_certificates(keystore.read_bytes(), pw.encode())
    assert leaf.public_bytes(Encoding.PEM) == ms.client_cert("flink").cert.read_bytes()
    listed = subprocess.run(["keytool", "-list", "-keystore", str(truststore), "-storetype", "PKCS12",
                             "-storepass", pw], capture_output=True, text=True, check=True).stdout
    assert "rscf-local-ca" in listed
    assert mode_of(keystore) == 0o600 and mode_of(truststore) == 0o600
    opts = monitoring.flink_java_options()
    assert f"-Djavax.net.ssl.keyStore={keystore}" in opts and f"-Djavax.net.ssl.trustStore={truststore}" in opts
    wheel = yaml.safe_load((flink.flink_home() / "conf" / "config.yaml").read_text())
    conf = flink.cluster_config(flink.flink_dirs(), wheel)
    assert conf["metrics.reporter.promgateway.hostUrl"].startswith("https://")
    assert conf["env.java.opts.taskmanager"] == conf["env.java.opts.jobmanager"]
    assert conf["env.java.opts.taskmanager"].startswith(opts)
    # Flink prints its JVM options in its logs: nothing from the secrets directory may be in them
    secrets = [f.read_text(errors="replace").strip() for f in (monitoring.SETTINGS.paths.data / "secrets").rglob("*")
               if f.is_file() and f.stat().st_size < 200]
    assert secrets and not [v for v in secrets if len(v) >= 12 and v in conf["env.java.opts.taskmanager"]]


@pytest.mark.skipif(shutil.which("keytool") is None, reason="no JDK keytool")
def test_stores_made_with_an_older_random_password_are_made_again(data):
    monitoring.ensure_certificates()
    monitoring.ensure_java_stores()
    keystore, truststore = monitoring.java_stores()
    old = ms.monitoring_dir() / "java-stores.password"
    old.write_text("an-older-random-password")
    truststore.with_suffix(".ca.pem").write_bytes(ms.ca_file().read_bytes())  # an older marker: the CA only
    truststore.write_bytes(b"made with another password")
    monitoring.ensure_java_stores()
    assert not old.exists()
    listed = subprocess.run(["keytool", "-list", "-keystore", str(truststore), "-storetype", "PKCS12",
                             "-storepass", monitoring.JAVA_STORE_PASSWORD], capture_output=True, text=True)
    assert listed.returncode == 0 and "rscf-local-ca" in listed.stdout
