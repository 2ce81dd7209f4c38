"""Prometheus' and the Pushgateway's web configs, certificates and key stores (issue #16; who may do
what: rscf/monitoring_security.py).

`prepare_monitoring` runs before either starts (`rscf up`): it creates what is missing under
``<data>/secrets/monitoring/`` and renders both ``--web.config.file``s (bcrypt hashes of the
passwords, TLS with client certificates) under ``<data>/prometheus/``. A data dir from before
this existed gets them at its next `rscf up`: the configs are rendered at every start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from pathlib import Path

import bcrypt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rscf import monitoring_security as ms
from rscf.secrets import secrets_dir, write_private
from rscf.settings import SETTINGS

BCRYPT_COST = 10  # Prometheus checks the hash on every request (it caches); 10 = ~50 ms once
CERT_DAYS, RENEW_DAYS = 365, 30
JDK_CACERTS_PASSWORD = "changeit"  # the JDK's public default, not a secret


# ----------------------------------------------------------------------------- web configs (pure)


def bcrypt_hash(secret: str, cost: int = BCRYPT_COST) -> str:
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(cost)).decode()


def prometheus_web_config(users: dict[str, str]) -> dict:
    """Basic auth for every Prometheus endpoint: ``users`` maps a name to its bcrypt hash."""
    return {"basic_auth_users": dict(sorted(users.items()))}


def pushgateway_web_config(server_cert: Path, server_key: Path, ca: Path) -> dict:
    """TLS on the Pushgateway, and only clients with a certificate of the stack's CA get an answer."""
    return {"tls_server_config": {"cert_file": str(server_cert), "key_file": str(server_key),
                                  "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(ca),
                                  "min_version": "TLS12"}}


def web_config_path(service: str) -> Path:
    return SETTINGS.paths.data / "prometheus" / f"{service}-web.yml"


# ----------------------------------------------------------------------------- certificates


def issue_certificate(name: str, server: bool, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
           out: ms.ClientCert, client_too: bool = False) -> None:
    """A certificate for ``name`` signed by the CA (server: 127.0.0.1 and localhost; else a client;
    ``client_too``: a server's certificate it also presents when it dials its peers, as mutual TLS needs)."""
    if out.cert.exists() and out.key.exists():
        current = x509.load_pem_x509_certificate(out.cert.read_bytes())
        now = dt.datetime.now(dt.timezone.utc)
        if current.issuer == ca_cert.subject and current.not_valid_after_utc - now > dt.timedelta(days=RENEW_DAYS):
            return
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client_too or not server else []
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rscf-{name}")]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(SETTINGS.host)), x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(out.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    write_private(out.cert, cert.public_bytes(serialization.Encoding.PEM))


def ensure_certificates() -> None:
    from gateway.tls import ensure_ca

    ca_cert, ca_key = ensure_ca()
    secrets_dir(ms.monitoring_dir())
    issue_certificate("pushgateway", True, ca_cert, ca_key, ms.client_cert(ms.PUSHGATEWAY_SERVER))
    for name in ms.PUSH_CLIENTS:
        issue_certificate(name, False, ca_cert, ca_key, ms.client_cert(name))


# ----------------------------------------------------------------------------- Flink's JVM key stores


# The JVM takes a key store's password only as a system property, and Flink prints its JVMs' options at
# every start (its logs, the console copy, the client's log; `ps` too): a random password there protected
# nothing and put a secret in the logs. The client key in the store is protected as every PEM key in
# .data/secrets is, by the file (0600, in a 0700 directory); the stores' password is a fixed, public value,
# as the JDK's own `changeit` is.
JAVA_STORE_PASSWORD = "rscf-protected-by-file-permissions"
_STORE_MARKER = b"\n# stores made with JAVA_STORE_PASSWORD\n"  # a trust store of an older password is remade


def java_stores() -> tuple[Path, Path]:
    """(key store, trust store), PKCS12: the ``flink`` client certificate, and the JDK's CAs plus the
    stack's (so an https S3 endpoint stays trusted in the same JVM)."""
    base = ms.monitoring_dir()
    return base / "flink-keystore.p12", base / "flink-truststore.p12"


def ensure_java_stores() -> None:
    keystore, truststore = java_stores()
    pw = JAVA_STORE_PASSWORD
    (ms.monitoring_dir() / "java-stores.password").unlink(missing_ok=True)  # the old random one
    cert = ms.client_cert(ms.FLINK)
    ca_pem = ms.ca_file().read_bytes()
    leaf = x509.load_pem_x509_certificate(cert.cert.read_bytes())
    if not keystore.exists() or _stale(keystore, pw, leaf):
        key = serialization.load_pem_private_key(cert.key.read_bytes(), None)
        blob = pkcs12.serialize_key_and_certificates(
            b"rscf-flink", key, leaf, [x509.load_pem_x509_certificate(ca_pem)],
            serialization.BestAvailableEncryption(pw.encode()))
        write_private(keystore, blob)
    marker = truststore.with_suffix(".ca.pem")
    if truststore.exists() and marker.exists() and marker.read_bytes() == ca_pem + _STORE_MARKER:
        return
    keytool = shutil.which("keytool")
    if keytool is None:
        raise RuntimeError("keytool not found (it comes with the JDK that runs Flink)")
    cacerts = Path(keytool).resolve().parent.parent / "lib" / "security" / "cacerts"
    tmp = truststore.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    run = lambda *a: subprocess.run([keytool, *a], check=True, capture_output=True, timeout=60)  # noqa: E731
    if cacerts.exists():
        run("-importkeystore", "-srckeystore", str(cacerts), "-srcstorepass", JDK_CACERTS_PASSWORD,
            "-destkeystore", str(tmp), "-deststoretype", "PKCS12", "-deststorepass", pw, "-noprompt")
    run("-importcert", "-alias", "rscf-local-ca", "-file", str(ms.ca_file()), "-keystore", str(tmp),
        "-storetype", "PKCS12", "-storepass", pw, "-noprompt")
    tmp.chmod(0o600)
    tmp.replace(truststore)
    marker.write_bytes(ca_pem + _STORE_MARKER)


def _stale(keystore: Path, pw: str, leaf: x509.Certificate) -> bool:
    try:
        _, stored, _ = pkcs12.load_key_and_certificates(keystore.read_bytes(), pw.encode())
    except ValueError:
        return True
    return stored != leaf


def flink_java_options() -> str:
    """JVM options of the JobManager and TaskManagers: their HTTPS client (the Pushgateway reporter)
    presents the ``flink`` certificate and trusts the stack's CA (`ensure_java_stores` makes them)."""
    keystore, truststore = java_stores()
    pw = JAVA_STORE_PASSWORD
    return (f"-Djavax.net.ssl.keyStore={keystore} -Djavax.net.ssl.keyStoreType=PKCS12 "
            f"-Djavax.net.ssl.keyStorePassword={pw} -Djavax.net.ssl.trustStore={truststore} "
            f"-Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword={pw}")


# ----------------------------------------------------------------------------- prepare steps


def _write_yaml(path: Path, doc: dict) -> None:
    write_private(path, yaml.safe_dump(doc, sort_keys=False).encode())


def prepare_pushgateway() -> None:
    ensure_certificates()
    server = ms.client_cert(ms.PUSHGATEWAY_SERVER)
    _write_yaml(web_config_path("pushgateway"), pushgateway_web_config(server.cert, server.key, ms.ca_file()))


def prepare_prometheus_web() -> None:
    """Hashes are rendered again only when a password no longer matches (bcrypt is slow on purpose)."""
    path = web_config_path("prometheus")
    try:
        old = (yaml.safe_load(path.read_text()) or {}).get("basic_auth_users", {})
    except FileNotFoundError:
        old = {}
    users = {}
    for user in ms.PROMETHEUS_USERS:
        pw = ms.password(user).encode()
        kept = old.get(user)
        users[user] = kept if kept and bcrypt.checkpw(pw, kept.encode()) else bcrypt_hash(pw.decode())
    _write_yaml(path, prometheus_web_config(users))


def scrape_security() -> dict[str, dict]:
    """What Prometheus' own scrapes present: its password to itself, its certificate to the Pushgateway."""
    cert = ms.client_cert(ms.PROMETHEUS)
    return {
        "prometheus": {"basic_auth": {"username": ms.PROMETHEUS,
                                      "password_file": str(ms.password_file(ms.PROMETHEUS))}},
        "pushgateway": {"scheme": "https",
                        "tls_config": {"ca_file": str(ms.ca_file()), "cert_file": str(cert.cert),
                                       "key_file": str(cert.key)}},
    }
